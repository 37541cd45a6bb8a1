"""Split long documents into overlapping chunks that remember where they came from.

Chunks are measured in characters (the default: for Chinese one character is about one token, for
English about a quarter of one, so the default size fits a 512-token model either way) or in the
model's tokens (``unit="tokens"``: windows of exactly ``size`` tokens, consecutive windows sharing
``overlap`` tokens, each chunk's [start, end) the characters its tokens came from).

By characters:
A chunk prefers to end just after a sentence or line break found in its last fifth, so
that a sentence is rarely cut in two; the next chunk starts ``overlap`` characters before
the previous end, which keeps a fact that straddles the boundary findable from both sides.

Chunks are produced lazily (:func:`iter_chunks`, :func:`iter_chunks_by_tokens`), so a huge document is
indexed a bounded batch of chunks at a time. By tokens, a document longer than ``TOKENIZE_SEGMENT``
characters is tokenized a segment at a time (each segment ending just after its last space, line or
sentence break), so its token offsets are never all held either.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from m3e.errors import M3EError

UNITS = ("characters", "tokens")

_BREAKS = "\n。！？!?；;.…"
# Characters tokenized at a time in a long document (token chunking); shorter documents are tokenized whole.
TOKENIZE_SEGMENT = 1 << 16


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
    return list(iter_spans(text, size, overlap))


def iter_spans(text: str, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """:func:`spans`, one at a time."""
    check_chunking(size, overlap)
    n = len(text)
    if n <= size:
        yield (0, n)
        return
    start = 0
    while True:
        end = min(start + size, n)
        if end < n:
            floor = start + max(size * 4 // 5, overlap + 1)
            cut = max(text.rfind(ch, floor, end) for ch in _BREAKS)
            if cut >= floor:
                end = cut + 1
        yield (start, end)
        if end >= n:
            return
        # Always advance, even when overlap is close to the chunk length.
        start = max(end - overlap, start + 1)


def chunk_document(doc_id: str, text: str, size: int, overlap: int) -> list[Chunk]:
    return list(iter_chunks(doc_id, text, size, overlap))


def iter_chunks(doc_id: str, text: str, size: int, overlap: int) -> Iterator[Chunk]:
    """:func:`chunk_document`, one chunk at a time."""
    for i, (s, e) in enumerate(iter_spans(text, size, overlap)):
        yield Chunk(doc_id, i, s, e, text[s:e])


def token_spans(offsets: Sequence[tuple[int, int]], length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) character spans of windows of ``size`` tokens (token ``i`` came from characters
    ``offsets[i]`` of a text of ``length`` characters); consecutive windows share ``overlap`` tokens. The first
    span starts at 0 and the last ends at ``length``, so every character belongs to some chunk."""
    return list(iter_token_spans(offsets, length, size, overlap))


def iter_token_spans(offsets: Iterable[tuple[int, int]], length: int, size: int,
                     overlap: int) -> Iterator[tuple[int, int]]:
    """:func:`token_spans` of a stream of offsets, holding only the current window's."""
    check_chunking(size, overlap, "tokens")
    stream = iter(offsets)
    window: list[tuple[int, int]] = []  # offsets of the tokens from the current window's first on
    first = True
    while True:
        for offset in stream:  # one token past the window tells whether the window is the last
            window.append(offset)
            if len(window) > size:
                break
        if len(window) <= size:  # the stream is spent: the last window
            yield (0 if first else window[0][0], length)
            return
        yield (0 if first else window[0][0], window[size - 1][1])
        del window[: size - overlap]
        first = False


def chunk_document_by_tokens(doc_id: str, text: str, size: int, overlap: int, tokenizer: Any) -> list[Chunk]:
    """Chunks of ``size`` tokens of ``tokenizer`` (a Hugging Face fast tokenizer: it gives character offsets)."""
    return list(iter_chunks_by_tokens(doc_id, text, size, overlap, tokenizer))


def iter_chunks_by_tokens(doc_id: str, text: str, size: int, overlap: int, tokenizer: Any,
                          segment: int = TOKENIZE_SEGMENT) -> Iterator[Chunk]:
    """:func:`chunk_document_by_tokens`, one chunk at a time, tokenizing ``segment`` characters at a time."""
    offsets = token_offsets(text, tokenizer, segment)
    for i, (s, e) in enumerate(iter_token_spans(offsets, len(text), size, overlap)):
        yield Chunk(doc_id, i, s, e, text[s:e])


def token_offsets(text: str, tokenizer: Any, segment: int = TOKENIZE_SEGMENT) -> Iterator[tuple[int, int]]:
    """The character offsets of ``text``'s tokens, a segment of up to ``segment`` characters at a time (a
    shorter text in one piece). A segment ends just after its last space, line or sentence break, where a
    word-splitting tokenizer splits anyway; only a segment without any is cut inside a word."""
    n = len(text)
    start = 0
    while start < n or start == 0:
        end = n if n - start <= segment else start + segment
        if end < n:  # end after the segment's last break; cut a word only where the segment has no break
            cut = max(text.rfind(ch, start, end) for ch in _BREAKS + " \t")
            if cut >= start:
                end = cut + 1
        enc = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                        verbose=False)
        for s, e in enc["offset_mapping"]:
            yield (start + int(s), start + int(e))
        if end >= n:
            return
        start = end
