"""Which uploads are accepted, and their text: plain text, Markdown, HTML and PDF."""

from __future__ import annotations

import io
from pathlib import PurePath
from typing import Final, Literal

from switchyard.errors import SwitchyardError

MAX_PDF_PAGES: Final = 5_000

Kind = Literal["text", "markdown", "html", "pdf"]
BY_EXTENSION: Final[dict[str, Kind]] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
BY_CONTENT_TYPE: Final[dict[str, Kind]] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/pdf": "pdf",
}
CONTENT_TYPES: Final[dict[Kind, str]] = {
    "text": "text/plain",
    "markdown": "text/markdown",
    "html": "text/html",
    "pdf": "application/pdf",
}


class UnsupportedMediaTypeError(SwitchyardError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported Media Type"


class UnreadableDocumentError(SwitchyardError):
    """The file cannot give text: retrying will not help."""

    status = 422
    code = "unreadable_document"
    title = "Unreadable document"


def kind_of(filename: str, content_type: str | None) -> Kind:
    """The kind from the declared type, else from the extension; 415 for anything else."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in BY_CONTENT_TYPE:
        return BY_CONTENT_TYPE[declared]
    extension = PurePath(filename).suffix.lower()
    if extension in BY_EXTENSION and declared in ("", "application/octet-stream"):
        return BY_EXTENSION[extension]
    accepted = ", ".join(sorted(BY_CONTENT_TYPE))
    raise UnsupportedMediaTypeError(
        f"{declared or extension or 'this file'} is not accepted; send one of: {accepted} "
        "(or a .txt, .md, .html or .pdf file)"
    )


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnreadableDocumentError("the file is not UTF-8 text") from None


def extract_text(data: bytes, kind: Kind, max_chars: int | None = None) -> str:
    """The document's text; UnreadableDocumentError when there is none to be had, or more than
    `max_chars` of it (a PDF stops being read there: a small file may inflate enormously)."""
    if kind == "pdf":
        text = _pdf_text(data, max_chars)
    elif kind == "html":
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(_decode(data), "html.parser")
        for hidden in soup(["script", "style", "noscript", "template"]):
            hidden.decompose()
        text = soup.get_text("\n")
    else:
        text = _decode(data)
    text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    text = text.replace("\x00", "").strip()
    if not text:
        raise UnreadableDocumentError("the document has no text")
    if max_chars is not None and len(text) > max_chars:
        raise _too_long(max_chars)
    return text


def _too_long(max_chars: int) -> UnreadableDocumentError:
    return UnreadableDocumentError(
        f"the document has more than {max_chars} characters of text "
        "(DOCUMENT_MAX_CHUNKS x CHUNK_SIZE_CHARS)"
    )


def _pdf_text(data: bytes, max_chars: int | None) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.startswith(b"%PDF"):
        raise UnreadableDocumentError("the file is not a PDF")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableDocumentError("the PDF is encrypted")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise UnreadableDocumentError(
                f"the PDF has {len(reader.pages)} pages; the limit is {MAX_PDF_PAGES}"
            )
        pages: list[str] = []
        read = 0
        for page in reader.pages:  # each stream inflates to at most pypdf's own limit (75 MB)
            pages.append(page.extract_text() or "")
            read += len(pages[-1])
            if max_chars is not None and read > max_chars:
                raise _too_long(max_chars)
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableDocumentError(f"the PDF cannot be read: {type(exc).__name__}") from None
    return "\n\n".join(pages)
