"""How well a reranker orders held-out groups: where the positive lands among its query's negatives.

One relevant candidate per group, so MRR@10 is 1/rank (0 beyond 10), nDCG@10 is 1/log2(rank + 1) (0 beyond 10)
and hit@1 is the share of groups whose positive comes first. A negative that ties the positive ranks above it:
a model that scores everything alike gets no credit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from m3e.reranker import Reranker
from m3e.training.rerank.groups import Group

METRICS = ("mrr@10", "ndcg@10", "hit@1")
CUTOFF = 10


def positive_rank(scores: NDArray[np.float32]) -> int:
    """The positive's rank (1 = first) among a group's scores, the positive's score first."""
    return 1 + int(np.sum(scores[1:] >= scores[0]))


def ranking_metrics(ranks: Sequence[int]) -> dict[str, float]:
    if not ranks:
        return dict.fromkeys(METRICS, 0.0)
    n = len(ranks)
    return {
        "mrr@10": sum(1.0 / r for r in ranks if r <= CUTOFF) / n,
        "ndcg@10": sum(1.0 / math.log2(r + 1) for r in ranks if r <= CUTOFF) / n,
        "hit@1": sum(r == 1 for r in ranks) / n,
    }


def score_groups(reranker: Reranker, groups: Sequence[Group], batch_size: int = 64) -> dict[str, float]:
    """The metrics of ``reranker`` on ``groups`` (scored as at inference: raw logits, windows over long
    documents)."""
    pairs = [pair for g in groups for pair in g.pairs()]
    was_training = reranker.training
    reranker.eval()
    try:
        flat = np.asarray(reranker.predict(pairs, batch_size=batch_size, activation="identity"), dtype=np.float32)
    finally:
        reranker.train(was_training)
    ranks, start = [], 0
    for g in groups:
        ranks.append(positive_rank(flat[start : start + len(g.docs)]))
        start += len(g.docs)
    return ranking_metrics(ranks)
