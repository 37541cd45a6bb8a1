"""Split long documents into overlapping chunks that remember where they came from.

Chunks are measured in characters: for Chinese one character is about one token, for
English about a quarter of one, so the default size fits a 512-token model either way.
A chunk prefers to end just after a sentence or line break found in its last fifth, so
that a sentence is rarely cut in two; the next chunk starts ``overlap`` characters before
the previous end, which keeps a fact that straddles the boundary findable from both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

from m3e.errors import M3EError

_BREAKS = "\n。！？!?；;.…"


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    chunk: int  # position of the chunk inside its document, from 0
    start: int  # character offsets in the document text: text[start:end]
    end: int
    text: str

    @property
    def chunk_id(self) -> str:
        return f"{self.doc_id}#{self.chunk}"


def check_chunking(size: int, overlap: int) -> None:
    if size < 1:
        raise M3EError(f"chunk size must be at least 1 character, not {size}")
    if overlap < 0 or overlap >= size:
        raise M3EError(f"chunk overlap must be in [0, chunk size), not {overlap} (size {size})")


def spans(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) character spans covering ``text``; consecutive spans overlap by up to ``overlap``."""
    check_chunking(size, overlap)
    n = len(text)
    if n <= size:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + size, n)
        if end < n:
            floor = start + max(size * 4 // 5, overlap + 1)
            cut = max(text.rfind(ch, floor, end) for ch in _BREAKS)
            if cut >= floor:
                end = cut + 1
        out.append((start, end))
        if end >= n:
            return out
        # Always advance, even when overlap is close to the chunk length.
        start = max(end - overlap, start + 1)


def chunk_document(doc_id: str, text: str, size: int, overlap: int) -> list[Chunk]:
    return [Chunk(doc_id, i, s, e, text[s:e]) for i, (s, e) in enumerate(spans(text, size, overlap))]
