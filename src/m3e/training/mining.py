"""Hard-negative mining: for each query, passages the model ranks high that are not its positives.

Queries (with the model's query prompt) search a faiss inner-product index over normalised passage vectors (the
positives of all records plus an optional extra corpus). Negatives are sampled from a rank window (default: skip
the top 2 hits, which are often unlabelled positives, and sample from ranks 2..199), excluding the record's own
positives and the query itself. The output is BGE's {"query", "pos", "neg"} JSON lines, which
:mod:`m3e.training.records` reads as triplets.

Mining is streamed: the records and the corpus are read again on each of a few passes instead of being held.
Memory holds what the search needs (the passage vectors in the faiss index and a 16-byte digest per distinct
passage, which stands for the passage), the chosen negatives' passage numbers and, at the end, the texts of
those passages (each cut at ``max_chars``); queries are encoded and searched a block at a time, and each output
row is written as soon as it is complete. The passes:

1. count the queries and number the distinct passages (positives, then the corpus) by digest;
2. encode the passages, a block at a time, into the index;
3. encode and search the queries, a block at a time, and draw each query's negatives (passage numbers);
4. read the passages again and keep the texts of the drawn ones;
5. read the records again and write each row.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from m3e.atomic import write_atomic
from m3e.errors import M3EError
from m3e.extras import require
from m3e.progress import progress_bar
from m3e.textio import MAX_RECORD_CHARS
from m3e.training.records import Record

# Texts encoded (and queries searched) per block: bounds the texts and vectors held besides the index.
BLOCK = 4096
# Above this many passages a random top-up draws by rejection instead of listing every allowed passage.
_LISTED_POOL = 1 << 16

Records = Callable[[], Iterable[Record]]  # each call reads the records again, in the same order
Texts = Callable[[], Iterable[str]]  # each call reads the corpus again, in the same order


@dataclass
class MiningStats:
    queries: int
    corpus: int
    mined: int  # queries with at least one mined negative
    random_fill: int  # queries that fell back to random corpus passages
    negatives: int
    cut: int = 0  # negatives longer than max_chars, written up to there


def parse_window(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        window = (int(lo), int(hi))
    except ValueError:
        raise M3EError(f"rank window must look like 2-200, not {text!r}") from None
    if not sep or window[0] < 0 or window[1] <= window[0]:
        raise M3EError(f"rank window must be LO-HI with 0 <= LO < HI, not {text!r}")
    return window


def mine_hard_negatives(
    model: Any,
    records: Sequence[Record],
    *,
    corpus: Sequence[str] = (),
    window: tuple[int, int] = (2, 200),
    num_negatives: int = 7,
    seed: int = 42,
    batch_size: int = 64,
    random_fill: bool = True,
    show_progress: bool | None = None,
) -> tuple[list[dict[str, Any]], MiningStats]:
    """Mine records held in memory; the rows are returned (:func:`mine_streamed` writes them instead)."""
    rows: list[dict[str, Any]] = []
    stats = mine_streamed(model, lambda: records, lambda: corpus, rows.append, window=window,
                          num_negatives=num_negatives, seed=seed, batch_size=batch_size, random_fill=random_fill,
                          show_progress=show_progress, max_chars=None)
    return rows, stats


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _passages(records: Records, corpus: Texts) -> Iterator[str]:
    """Every passage in order, repeats included: the records' positives, then the corpus' non-blank texts."""
    for record in records():
        yield from record.pos
    for text in corpus():
        if text.strip():
            yield text


def _blocks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    block: list[Any] = []
    for item in items:
        block.append(item)
        if len(block) >= size:
            yield block
            block = []
    if block:
        yield block


def mine_streamed(
    model: Any,
    records: Records,
    corpus: Texts,
    write: Callable[[dict[str, Any]], object],
    *,
    window: tuple[int, int] = (2, 200),
    num_negatives: int = 7,
    seed: int = 42,
    batch_size: int = 64,
    random_fill: bool = True,
    show_progress: bool | None = None,
    max_chars: int | None = MAX_RECORD_CHARS,
    block: int = BLOCK,
) -> MiningStats:
    """Mine negatives for ``records`` (read again on each pass, see the module's description) and hand each
    output row to ``write``, in the records' order. ``max_chars``: characters kept of a passage held for
    encoding or for the output (None: all)."""
    faiss = require("faiss", purpose="mining hard negatives", extra="train", package="faiss-cpu")
    # 1. count the queries, number the distinct passages
    numbers: dict[bytes, int] = {}
    queries = 0
    for record in records():
        queries += 1
        for text in record.pos:
            numbers.setdefault(_digest(text), len(numbers))
    for text in corpus():
        if text.strip():
            numbers.setdefault(_digest(text), len(numbers))
    if not queries:
        raise M3EError("no records to mine negatives for")
    n = len(numbers)
    if n < 2:
        raise M3EError("the corpus has fewer than 2 passages")
    bar = progress_bar(n + queries, show_progress, unit="text", desc="encode")
    try:
        # 2. the passages' vectors into the index, each distinct passage once, in number order
        index: Any = None
        fresh = (text[:max_chars] for number, text in _numbered(_passages(records, corpus), numbers)
                 if number is not None)
        for texts in _blocks(fresh, block):
            vectors = np.ascontiguousarray(model.encode_documents(texts, batch_size=batch_size, show_progress=False),
                                           dtype=np.float32)
            if index is None:
                index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            bar.update(len(texts))
        # 3. search the queries and draw the negatives
        chosen, counts, stats = _draw(model, records, numbers, index, window=window, num_negatives=num_negatives,
                                      seed=seed, batch_size=batch_size, random_fill=random_fill, block=block,
                                      bar=bar)
    finally:
        bar.close()
    # 4. the drawn passages' texts
    wanted = set(chosen)
    texts_of: dict[int, str] = {}
    for number, text in _numbered(_passages(records, corpus), numbers):
        if number is not None and number in wanted:
            if max_chars is not None and len(text) > max_chars:
                text = text[:max_chars]
                stats.cut += 1
            texts_of[number] = text
    # 5. the rows, in the records' order
    at = 0
    written = 0
    for i, record in enumerate(records()):
        if i >= queries:
            break
        negatives = [texts_of[j] for j in chosen[at: at + counts[i]]]
        at += counts[i]
        write({"query": record.text, "pos": list(record.pos), "neg": negatives})
        written += 1
    if written != queries:
        raise M3EError(f"the training data changed while negatives were mined ({queries} records, then {written})")
    return stats


def _numbered(passages: Iterable[str], numbers: dict[bytes, int]) -> Iterator[tuple[int | None, str]]:
    """(number, text) of each passage at its first occurrence, (None, text) at a repeat: numbers are given in
    order of first occurrence, so the first time a passage is met its number is the next one."""
    following = 0
    for text in passages:
        number = numbers.get(_digest(text))
        if number is None:
            raise M3EError("the training data changed while negatives were mined (a passage not seen before)")
        if number == following:
            following += 1
            yield number, text
        else:
            yield None, text


def _draw(model: Any, records: Records, numbers: dict[bytes, int], index: Any, *, window: tuple[int, int],
          num_negatives: int, seed: int, batch_size: int, random_fill: bool, block: int,
          bar: Any) -> tuple[array[int], array[int], MiningStats]:
    """Each query's negatives as passage numbers (one flat array, and the count per query)."""
    n = len(numbers)
    lo, hi = window
    k = min(hi, n)
    rng = np.random.default_rng(seed)
    chosen: array[int] = array("l")
    counts: array[int] = array("l")
    queries = mined = filled = total = 0
    for part in _blocks(records(), block):
        vectors = model.encode_queries([r.text for r in part], batch_size=batch_size, show_progress=False)
        _scores, hits = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        bar.update(len(part))
        for record, row in zip(part, hits, strict=True):
            exclude = {numbers[_digest(p)] for p in record.pos}
            own = numbers.get(_digest(record.text))
            if own is not None:
                exclude.add(own)
            candidates = [int(j) for j in row[lo:k] if j >= 0 and int(j) not in exclude]
            if len(candidates) > num_negatives:
                pick = sorted(rng.choice(len(candidates), size=num_negatives, replace=False))
                negatives = [candidates[j] for j in pick]
            else:
                negatives = candidates
            if negatives:
                mined += 1
            if len(negatives) < num_negatives and random_fill:  # too few hits in the window (tiny corpus)
                extra = _random_fill(rng, n, exclude | set(negatives), num_negatives - len(negatives))
                if extra:
                    negatives += extra
                    filled += 1
            total += len(negatives)
            chosen.extend(negatives)
            counts.append(len(negatives))
            queries += 1
    return chosen, counts, MiningStats(queries, n, mined, filled, total)


def _random_fill(rng: np.random.Generator, n: int, taken: set[int], need: int) -> list[int]:
    """Up to ``need`` random passage numbers below ``n``, none of them ``taken``. A small corpus lists what is
    allowed and draws from it; a large one draws numbers and rejects the taken ones (no list of n numbers per
    query)."""
    allowed = n - len(taken)
    if allowed <= 0:
        return []
    if n <= _LISTED_POOL or allowed <= 2 * need:
        mask = np.ones(n, dtype=bool)
        mask[list(taken)] = False
        pool = np.flatnonzero(mask)
        return [int(pool[j]) for j in rng.choice(len(pool), size=min(need, len(pool)), replace=False)]
    out: list[int] = []
    seen = set(taken)
    while len(out) < need:
        for j in rng.integers(0, n, size=2 * need):
            number = int(j)
            if number not in seen:
                seen.add(number)
                out.append(number)
                if len(out) == need:
                    break
    return out


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path).expanduser()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_atomic(p, text)
    return p


def jsonl_writer(stream: IO[str]) -> Callable[[dict[str, Any]], object]:
    """A ``write`` for :func:`mine_streamed`: one JSON line per row (UTF-8 as written, not escaped)."""
    def write(row: dict[str, Any]) -> None:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")

    return write
