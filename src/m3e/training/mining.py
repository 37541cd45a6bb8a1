"""Hard-negative mining: for each query, passages the model ranks high that are not its positives.

Queries (with the model's query prompt) search a faiss inner-product index over normalised passage vectors (the
positives of all records plus an optional extra corpus). Negatives are sampled from a rank window (default: skip
the top 2 hits, which are often unlabelled positives, and sample from ranks 2..199), excluding the record's own
positives and the query itself. The output is BGE's {"query", "pos", "neg"} JSON lines, which
:mod:`m3e.training.records` reads as triplets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3e.atomic import write_atomic
from m3e.errors import M3EError
from m3e.extras import require
from m3e.training.records import Record


@dataclass
class MiningStats:
    queries: int
    corpus: int
    mined: int  # queries with at least one mined negative
    random_fill: int  # queries that fell back to random corpus passages
    negatives: int


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
    faiss = require("faiss", purpose="mining hard negatives", extra="train", package="faiss-cpu")
    if not records:
        raise M3EError("no records to mine negatives for")
    passages = list(dict.fromkeys([p for r in records for p in r.pos] + [t for t in corpus if t.strip()]))
    if len(passages) < 2:
        raise M3EError("the corpus has fewer than 2 passages")
    queries = [r.text for r in records]
    qv = model.encode_queries(queries, batch_size=batch_size, show_progress=show_progress)
    pv = model.encode_documents(passages, batch_size=batch_size, show_progress=show_progress)
    index = faiss.IndexFlatIP(pv.shape[1])
    index.add(np.ascontiguousarray(pv, dtype=np.float32))
    lo, hi = window
    k = min(hi, len(passages))
    _scores, hits = index.search(np.ascontiguousarray(qv, dtype=np.float32), k)
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    mined = filled = total = 0
    for i, rec in enumerate(records):
        exclude = set(rec.pos) | {rec.text}
        candidates = [passages[j] for j in hits[i][lo:k] if j >= 0 and passages[j] not in exclude]
        if len(candidates) > num_negatives:
            pick = sorted(rng.choice(len(candidates), size=num_negatives, replace=False))
            negs = [candidates[j] for j in pick]
        else:
            negs = candidates
        if negs:
            mined += 1
        if len(negs) < num_negatives and random_fill:  # too few hits in the window (tiny corpus)
            pool = [p for p in passages if p not in exclude and p not in negs]
            if pool:
                extra = rng.choice(len(pool), size=min(num_negatives - len(negs), len(pool)), replace=False)
                negs += [pool[j] for j in extra]
                filled += 1
        total += len(negs)
        out.append({"query": rec.text, "pos": list(rec.pos), "neg": negs})
    return out, MiningStats(len(records), len(passages), mined, filled, total)


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path).expanduser()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_atomic(p, text)
    return p
