"""Choose which pieces of a unigram vocabulary to keep (vocabulary trimming).

Trimming keeps a subset of pieces, in their original order, so that a text whose best
segmentation under the full vocabulary uses only kept pieces keeps that segmentation: a
subset lattice still contains the old best path and no better one. Every kept piece's
characters are kept as single-character pieces too, so that unknown characters stay
exactly the characters that no piece contains.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from m3e.errors import InputError, M3EError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_BATCH = 2048


def read_corpus(path: str | Path) -> Iterator[str]:
    """Texts of a corpus: a .txt file (one text a line) or .jsonl (every string field)."""
    path = Path(path)
    if not path.is_file():
        raise M3EError(f"corpus file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in {".txt", ".jsonl"}:
        raise M3EError(f"corpus must be a .txt or .jsonl file, got {path}")
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if suffix == ".txt":
                    yield line
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"invalid JSON: {exc.msg}", path=str(path), line=lineno) from None
                yield from _strings(record)
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text: {exc.reason}", path=str(path)) from None


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def count_pieces(
    tokenizer: Tokenizer, texts: Iterable[str], n_pieces: int
) -> tuple[npt.NDArray[np.int64], set[str], int]:
    """Piece frequencies, the set of (normalised) characters seen and the number of texts."""
    counts = np.zeros(n_pieces, dtype=np.int64)
    chars: set[str] = set()
    n_texts = 0
    normalizer = tokenizer.normalizer
    for batch in _batches(texts):
        n_texts += len(batch)
        ids = [i for enc in tokenizer.encode_batch(batch, add_special_tokens=False) for i in enc.ids]
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=n_pieces)[:n_pieces]
        for text in batch:
            chars.update(normalizer.normalize_str(text))
    return counts, chars, n_texts


def select_pieces(
    pieces: Sequence[str],
    scores: np.ndarray,
    *,
    required: Iterable[int],
    counts: np.ndarray | None = None,
    seen_chars: set[str] | None = None,
    size: int | None = None,
) -> np.ndarray:
    """Sorted ids of the pieces to keep.

    ``required`` ids are always kept (special tokens, the prompts' pieces). With ``counts``
    (a corpus), the single-character pieces of ``seen_chars`` come first, then the pieces the
    corpus uses, most frequent first; without a corpus the ranking is by score. ``size`` caps the total (closure included) and then fills up by rank.
    """
    index = {p: i for i, p in enumerate(pieces)}
    n = len(pieces)
    keep = np.zeros(n, dtype=bool)
    kept = 0

    def add(i: int) -> int:
        # a piece plus the single-character pieces of its characters; returns how many new
        new = [i, *(index[c] for c in pieces[i] if c in index)] if len(pieces[i]) > 1 else [i]
        fresh = [j for j in dict.fromkeys(new) if not keep[j]]
        if size is not None and kept + len(fresh) > size:
            return -1
        keep[fresh] = True
        return len(fresh)

    for i in required:
        added = add(int(i))
        if added < 0:
            raise M3EError(f"--vocab-size {size} is smaller than the tokens that must be kept")
        kept += added

    order: list[np.ndarray] = []
    if counts is not None:
        # the corpus's characters first: under a size cap a missing multi-character piece only changes how a
        # word is split, a missing character makes it <unk>
        if seen_chars:
            order.append(np.array(sorted(index[c] for c in seen_chars if c in index), dtype=np.int64))
        used = np.flatnonzero(counts > 0)
        # most frequent first; ties by higher score
        order.append(used[np.lexsort((-scores[used], -counts[used]))])
    if size is not None:
        order.append(np.argsort(-scores, kind="stable"))

    for ids in order:
        for i in ids.tolist():
            if keep[i]:
                continue
            added = add(i)
            if added > 0:
                kept += added
            if size is not None and kept >= size:
                return np.flatnonzero(keep)
    return np.flatnonzero(keep)
