"""Split text into overlapping chunks on paragraph, then sentence, then word boundaries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    end: int
    text: str


def split(text: str, size: int, overlap: int) -> list[Chunk]:
    """Chunks of at most `size` characters, neighbours sharing up to `overlap` characters;
    `start`/`end` are character offsets into `text`."""
    from semantic_text_splitter import TextSplitter

    splitter = TextSplitter(size, overlap=overlap, trim=True)
    return [
        Chunk(index, start, start + len(piece), piece)
        for index, (start, piece) in enumerate(splitter.chunk_indices(text))
    ]
