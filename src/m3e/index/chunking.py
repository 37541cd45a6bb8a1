"""Split long documents into overlapping chunks that remember where they came from.

Chunks are measured in characters (the default: for Chinese one character is about one token, for
English about a quarter of one, so the default size fits a 512-token model either way) or in the
model's tokens (``unit="tokens"``: windows of exactly ``size`` tokens, consecutive windows sharing
``overlap`` tokens, each chunk's [start, end) the characters its tokens came from).

By characters:
A chunk prefers to end just after a sentence or line break found in its last fifth, so
that a sentence is rarely cut in two; the next chunk starts ``overlap`` characters before
the previous end, which keeps a fact that straddles the boundary findable from both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from m3e.errors import M3EError

UNITS = ("characters", "tokens")

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


def check_chunking(size: int, overlap: int, unit: str = "characters") -> None:
    if unit not in UNITS:
        raise M3EError(f"chunk unit must be one of {', '.join(UNITS)}, not {unit!r}")
    if size < 1:
        raise M3EError(f"chunk size must be at least 1 {unit[:-1]}, not {size}")
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


def token_spans(offsets: Sequence[tuple[int, int]], length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) character spans of windows of ``size`` tokens (token ``i`` came from characters
    ``offsets[i]`` of a text of ``length`` characters); consecutive windows share ``overlap`` tokens. The first
    span starts at 0 and the last ends at ``length``, so every character belongs to some chunk."""
    check_chunking(size, overlap, "tokens")
    n = len(offsets)
    if n <= size:
        return [(0, length)]
    out: list[tuple[int, int]] = []
    first = 0
    while True:
        last = min(first + size, n)
        start = 0 if first == 0 else offsets[first][0]
        end = length if last == n else offsets[last - 1][1]
        out.append((start, end))
        if last == n:
            return out
        first = last - overlap


def chunk_document_by_tokens(doc_id: str, text: str, size: int, overlap: int, tokenizer: Any) -> list[Chunk]:
    """Chunks of ``size`` tokens of ``tokenizer`` (a Hugging Face fast tokenizer: it gives character offsets)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    offsets = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    return [Chunk(doc_id, i, s, e, text[s:e]) for i, (s, e) in enumerate(token_spans(offsets, len(text), size,
                                                                                       overlap))]
