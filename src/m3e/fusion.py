"""Hybrid retrieval's one formula: two ranked lists (dense cosine, sparse BM25) fused into one.

The index's hybrid search and the evaluation's hybrid model both call :func:`fuse`, so what `m3e eval` measures
is what `m3e search` returns. Two methods:

- ``rrf`` (reciprocal rank fusion): ``sum over the lists of 1 / (rrf_k + rank)``; only ranks count, so the two
  score scales never have to be compared.
- ``weighted``: ``dense_weight * dense + (1 - dense_weight) * sparse``, each side brought to [0, 1] over its
  candidates: the cosines min-max (a cosine has no natural zero: unrelated texts sit well above it), BM25
  divided by its best score (BM25 has one: 0 is no shared word), so a candidate that matched half as strongly as
  the best gets half, where min-max would stretch small differences at the top of the list over the whole
  range. A candidate missing from a list gets 0 there.

The defaults are the ones the dev splits chose (docs/benchmarks.md, "Hybrid retrieval"): each side's top
``FUSION_DEPTH``, weighted, dense 0.8.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from m3e.errors import M3EError

FUSIONS = ("rrf", "weighted")
DEFAULT_FUSION = "weighted"
RRF_K = 60
DEFAULT_DENSE_WEIGHT = 0.8
FUSION_DEPTH = 100  # candidates taken from each side before fusing


@dataclass(frozen=True)
class Fusion:
    method: str = DEFAULT_FUSION
    dense_weight: float = DEFAULT_DENSE_WEIGHT  # weighted: the dense side's share
    rrf_k: int = RRF_K  # rrf: the rank offset

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise M3EError(f"unknown fusion {self.method!r}; choose one of {', '.join(FUSIONS)}")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise M3EError(f"the dense weight must be between 0 and 1, not {self.dense_weight}")
        if self.rrf_k < 0:
            raise M3EError(f"the RRF constant must be at least 0, not {self.rrf_k}")

    def describe(self) -> str:
        if self.method == "rrf":
            return f"RRF (k={self.rrf_k})"
        return (f"weighted (dense {self.dense_weight:g} min-max, sparse {1 - self.dense_weight:g} x score / best "
                "score)")


def fuse(dense: Mapping[str, float], sparse: Mapping[str, float], fusion: Fusion | None = None) -> dict[str, float]:
    """Fused scores of every id in either list, best first (ties keep the dense list's order, then the
    sparse list's)."""
    fusion = fusion or Fusion()
    if fusion.method == "rrf":
        fused = _rrf(dense, fusion.rrf_k)
        for key, value in _rrf(sparse, fusion.rrf_k).items():
            fused[key] = fused.get(key, 0.0) + value
    else:
        fused = _weighted(_min_max(dense), _by_best(sparse), fusion.dense_weight)
    order = sorted(fused, key=lambda key: -fused[key])  # stable: insertion order breaks ties
    return {key: fused[key] for key in order}


def _weighted(first: Mapping[str, float], second: Mapping[str, float], first_weight: float) -> dict[str, float]:
    fused = {key: first_weight * value for key, value in first.items()}
    for key, value in second.items():
        fused[key] = fused.get(key, 0.0) + (1.0 - first_weight) * value
    return fused


def fuse_rerank(retrieval: Mapping[str, float], rerank: Mapping[str, float], rerank_weight: float) -> dict[str, float]:
    """Second-stage scores of reranked candidates: ``rerank_weight * minmax(reranker) + (1 - rerank_weight) *
    minmax(retrieval)`` over the candidates (the weighted fusion above, the reranker in the sparse side's place);
    best first. A reranker trained briefly carries what the embedder missed without unlearning what it had, so
    its chosen weight can be below 1; 1 is the reranker's order alone. Both sides min-max: logits and cosines
    have no natural zero."""
    if not 0.0 <= rerank_weight <= 1.0:
        raise M3EError(f"the rerank weight must be between 0 and 1, not {rerank_weight}")
    if rerank_weight == 1.0:
        return {key: float(rerank[key]) for key in sorted(rerank, key=lambda key: -rerank[key])}
    fused = _weighted(_min_max(retrieval), _min_max(rerank), 1.0 - rerank_weight)
    order = sorted(fused, key=lambda key: -fused[key])
    return {key: fused[key] for key in order}


def _rrf(scores: Mapping[str, float], k: int) -> dict[str, float]:
    ranked = sorted(scores, key=lambda key: -scores[key])
    return {key: 1.0 / (k + rank) for rank, key in enumerate(ranked, start=1)}


def _min_max(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high <= low:
        return dict.fromkeys(scores, 1.0)  # one candidate, or all equal: each is as good as the best
    return {key: (value - low) / (high - low) for key, value in scores.items()}


def _by_best(scores: Mapping[str, float]) -> dict[str, float]:
    """Non-negative scores (BM25) divided by the best one; all zero stays zero."""
    best = max(scores.values(), default=0.0)
    if best <= 0:
        return dict.fromkeys(scores, 0.0)
    return {key: value / best for key, value in scores.items()}
