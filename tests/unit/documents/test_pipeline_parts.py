"""Extraction, chunking, citations, entity parsing and the local embedding model."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid

import pytest

from switchyard.documents.chunking import split
from switchyard.documents.extract import (
    MAX_PDF_PAGES,
    UnreadableDocumentError,
    UnsupportedMediaTypeError,
    extract_text,
    kind_of,
)
from switchyard.documents.retrieval import citations, prompt
from switchyard.documents.schemas import SearchHit
from switchyard.documents.tasks import parse_entities
from switchyard.services.embeddings import LocalEmbedder, cosine, create_embedder
from switchyard.settings import Settings
from tests.fakes.pdf import make_inflating_pdf, make_pdf


@pytest.mark.parametrize(
    ("filename", "content_type", "kind"),
    [
        ("a.txt", "text/plain", "text"),
        ("notes.md", "text/markdown; charset=utf-8", "markdown"),
        ("notes.md", "application/octet-stream", "markdown"),
        ("page.HTML", None, "html"),
        ("r.pdf", "application/pdf", "pdf"),
        ("whatever", "application/pdf", "pdf"),
    ],
)
def test_accepted_kinds(filename: str, content_type: str | None, kind: str) -> None:
    assert kind_of(filename, content_type) == kind


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("a.exe", "application/x-msdownload"),
        ("a.png", "image/png"),
        ("a.txt", "image/png"),
        ("a", None),
    ],
)
def test_other_kinds_are_415(filename: str, content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as refused:
        kind_of(filename, content_type)
    assert refused.value.status == 415
    assert "text/markdown" in refused.value.detail


def test_text_from_every_kind() -> None:
    assert extract_text("﻿héllo\r\nworld  \n".encode(), "text") == "héllo\nworld"
    html = (
        b"<html><head><style>p{}</style><script>x()</script></head>"
        b"<body><h1>Title</h1><p>Body text</p></body></html>"
    )
    assert extract_text(html, "html").split() == ["Title", "Body", "text"]
    pdf = make_pdf([["First page line."], ["Second (page)."]])
    assert extract_text(pdf, "pdf").split() == ["First", "page", "line.", "Second", "(page)."]


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        (b"", "text", "no text"),
        (b"   \n\n ", "markdown", "no text"),
        (b"\xff\xfe\x00bad", "text", "not UTF-8"),
        (b"not a pdf", "pdf", "not a PDF"),
        (b"%PDF-1.4\n garbage", "pdf", "cannot be read"),
        (make_pdf([[]]), "pdf", "no text"),
    ],
)
def test_unreadable_documents_say_why(data: bytes, kind: str, message: str) -> None:
    with pytest.raises(UnreadableDocumentError, match=message):
        extract_text(data, kind)  # type: ignore[arg-type]


def test_chunks_respect_size_overlap_and_offsets() -> None:
    short = "A short paragraph that fits whole."
    paragraphs = [short] + [f"Paragraph {i}. " + "A sentence of words. " * 40 for i in range(6)]
    text = "\n\n".join(paragraphs)
    chunks = split(text, 400, 80)
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(len(c.text) <= 400 for c in chunks)
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert chunks[0].text == short  # a paragraph that fits is one chunk
    overlapping = [b.start < a.end for a, b in itertools.pairwise(chunks)]
    assert sum(overlapping) >= 6  # long paragraphs are cut with overlap
    assert all(c.text.endswith(".") for c in chunks)  # at sentence ends


def hit(n: int) -> SearchHit:
    return SearchHit(
        document_id=uuid.UUID(int=n),
        title=f"doc {n}",
        chunk_index=n,
        start=0,
        end=1,
        snippet=f"s{n}",
        score=0.5,
    )


def test_citations_follow_the_markers_the_answer_uses() -> None:
    hits = [hit(1), hit(2), hit(3)]
    cited = citations("Paris [2]. Also [3][2] and [9].", hits)
    assert [(c.document_id.int, c.chunk_index) for c in cited] == [(2, 2), (3, 3)]
    assert len(citations("No markers at all.", hits)) == 3
    messages = prompt("Where?", hits)
    assert messages[0].role == "system"
    assert "[n]" in messages[0].content
    assert "[1] (doc 1, chunk 1)\ns1" in messages[1].content
    assert messages[1].content.endswith("Question: Where?")


def test_entities_are_parsed_from_the_model_answer() -> None:
    answer = (
        'Sure: [{"name": " ACME ", "kind": "Organisation"}, {"name": ""}, {"kind": "x"}, '
        '{"name": "Ada"}]'
    )
    assert parse_entities(answer) == [("ACME", "organisation"), ("Ada", "other")]
    assert parse_entities("no json here") == []
    assert parse_entities("[not json]") == []


def test_the_local_model_embeds_meaning() -> None:
    embedder = LocalEmbedder()
    food, bread, baby = embedder.encode(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ]
    )
    assert len(food) == 384
    assert cosine(food, food) == pytest.approx(1.0, abs=1e-5)
    # The published all-MiniLM-L6-v2 similarities for these sentences.
    assert cosine(food, bread) == pytest.approx(0.7553, abs=2e-3)
    assert cosine(food, baby) == pytest.approx(-0.1050, abs=2e-3)
    # The vectors themselves, as the NumPy forward pass this runtime replaced gave them
    # (bench/embeddings.py keeps it as the reference): the same space, so vectors stored
    # before the change still match queries made after it.
    assert food[:6] == pytest.approx(
        [0.03324, 0.00441, -0.00628, 0.04838, -0.1387, -0.03362], abs=1e-4
    )
    assert bread[:6] == pytest.approx(
        [0.05252, 0.05524, -0.01119, -0.00575, -0.12721, -0.02225], abs=1e-4
    )
    assert baby[:6] == pytest.approx(
        [-0.03631, -0.03565, -0.02722, 0.03832, 0.07078, -0.01658], abs=1e-4
    )


def test_the_local_model_loads_silently_with_home_read_only() -> None:
    """As in the image (read-only root): onnxruntime prints nothing that is not a log line
    of ours, and sends no telemetry."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from switchyard.services.embeddings import MiniLM\nMiniLM.packaged().encode(['x'])",
        ],
        env={**os.environ, "HOME": "/proc"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert (loaded.stdout, loaded.stderr) == ("", "")


def test_padding_does_not_change_a_vector() -> None:
    """A text encoded alone and in a batch with a longer one (so padded) gives one vector."""
    embedder = LocalEmbedder()
    [alone] = embedder.encode(["Short text."])
    padded, _ = embedder.encode(["Short text.", "A much longer text " * 20])
    assert cosine(alone, padded) == pytest.approx(1.0, abs=1e-5)


def test_provider_choice() -> None:
    assert create_embedder(Settings(), None).name == "local-minilm-l6-v2"
    assert create_embedder(Settings(embedding_provider="zhipu"), None).name == "zhipu-unconfigured"


def test_an_inflating_pdf_is_read_only_up_to_the_text_limit() -> None:
    bomb = make_inflating_pdf(pages=2_000, text_per_page=1_000_000)  # 2 GB of text
    assert len(bomb) < 1_000_000  # under 1 MB on disk
    with pytest.raises(UnreadableDocumentError, match="more than 3000000 characters"):
        extract_text(bomb, "pdf", max_chars=3_000_000)
    # Within the limit, the same construction is read whole.
    small = make_inflating_pdf(pages=3, text_per_page=1_000)
    assert extract_text(small, "pdf", max_chars=3_000_000).count("A") == 3_000


def test_a_pdf_with_too_many_pages_is_refused_before_reading_them() -> None:
    many = make_inflating_pdf(pages=MAX_PDF_PAGES + 1, text_per_page=1)
    with pytest.raises(UnreadableDocumentError, match=f"the limit is {MAX_PDF_PAGES}"):
        extract_text(many, "pdf")
