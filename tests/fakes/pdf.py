"""A minimal PDF with real text (Helvetica, one page per paragraph), written by hand so the
tests need no PDF writer: objects, a content stream per page and a correct xref table."""

from __future__ import annotations

import zlib


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]]) -> bytes:
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        content_id = page_ids[i] + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>".encode()
        )
        body = (
            "BT /F1 12 Tf 72 720 Td 14 TL "
            + " ".join(f"({_escape(line)}) Tj T*" for line in lines)
            + " ET"
        )
        stream = body.encode("latin-1")
        objects.append(
            b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream"
        )
    return _assemble(objects)


def make_inflating_pdf(pages: int, text_per_page: int) -> bytes:
    """A zip-bomb-like PDF: `pages` pages that all show one Flate-compressed content stream of
    `text_per_page` characters; a few kilobytes that inflate to pages x text_per_page."""
    content = b"BT /F1 12 Tf 72 720 Td (" + b"A" * text_per_page + b") Tj ET"
    return _pages_sharing(content, pages)


def _pages_sharing(content: bytes, pages: int) -> bytes:
    """`pages` pages that all draw one Flate-compressed content stream (object 4)."""
    packed = zlib.compress(content, 9)
    kids = " ".join(f"{5 + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length "
        + str(len(packed)).encode()
        + b" /Filter /FlateDecode >>\nstream\n"
        + packed
        + b"\nendstream",
    ]
    objects += [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>"
    ] * pages
    return _assemble(objects)


def _assemble(objects: list[bytes]) -> bytes:
    """The file: numbered objects (1 is the catalog), the xref table and the trailer."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body_bytes in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body_bytes + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def make_slow_pdf(pages: int, stream_bytes: int) -> bytes:
    """A PDF whose `pages` pages all draw one Flate-compressed content stream of about
    `stream_bytes` of path operators and no text: small on disk, and a text extractor parses
    the whole stream again for every page (minutes of CPU for 5,000 pages of 10 MB)."""
    operators = b"0 0 m 1 1 l S\n"
    return _pages_sharing(operators * (stream_bytes // len(operators)), pages)
