"""Which uploads are accepted, and their text: plain text, Markdown, HTML and PDF."""

from __future__ import annotations

import io
from pathlib import PurePath
from typing import Final, Literal

from switchyard.errors import SwitchyardError

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


def extract_text(data: bytes, kind: Kind) -> str:
    """The document's text; UnreadableDocumentError when there is none to be had."""
    if kind == "pdf":
        text = _pdf_text(data)
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
    return text


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.startswith(b"%PDF"):
        raise UnreadableDocumentError("the file is not a PDF")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableDocumentError("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableDocumentError(f"the PDF cannot be read: {type(exc).__name__}") from None
    return "\n\n".join(pages)
