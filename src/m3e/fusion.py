"""Hybrid retrieval's one formula: two ranked lists (dense cosine, sparse BM25) fused into one.

The index's hybrid search and the evaluation's hybrid model both call :func:`fuse`, so what `m3e eval` measures
is what `m3e search` returns. Two methods:

- ``rrf`` (reciprocal rank fusion): ``sum over the lists of 1 / (rrf_k + rank)``; only ranks count, so the two
  score scales never have to be compared.
- ``weighted``: each list's scores min-max normalised to [0, 1] over its candidates, then
  ``dense_weight * dense + (1 - dense_weight) * sparse``; a candidate missing from a list gets 0 there.

The defaults are the ones the dev split chose (docs/benchmarks.md, "Hybrid retrieval").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from m3e.errors import M3EError

FUSIONS = ("rrf", "weighted")
DEFAULT_FUSION = "weighted"
RRF_K = 60
DEFAULT_DENSE_WEIGHT = 0.6


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
        return f"weighted (dense {self.dense_weight:g}, sparse {1 - self.dense_weight:g}, min-max normalised)"


def fuse(dense: Mapping[str, float], sparse: Mapping[str, float], fusion: Fusion | None = None) -> dict[str, float]:
    """Fused scores of every id in either list, best first (ties keep the dense list's order, then the
    sparse list's)."""
    fusion = fusion or Fusion()
    if fusion.method == "rrf":
        fused = _rrf(dense, fusion.rrf_k)
        for key, value in _rrf(sparse, fusion.rrf_k).items():
            fused[key] = fused.get(key, 0.0) + value
    else:
        fused = {k: fusion.dense_weight * v for k, v in _min_max(dense).items()}
        for key, value in _min_max(sparse).items():
            fused[key] = fused.get(key, 0.0) + (1.0 - fusion.dense_weight) * value
    order = sorted(fused, key=lambda key: -fused[key])  # stable: insertion order breaks ties
    return {key: fused[key] for key in order}


def fuse_rerank(retrieval: Mapping[str, float], rerank: Mapping[str, float], rerank_weight: float) -> dict[str, float]:
    """Second-stage scores of reranked candidates: ``rerank_weight * minmax(reranker) + (1 - rerank_weight) *
    minmax(retrieval)`` over the candidates (the weighted fusion above, the reranker in the sparse side's place);
    best first. A reranker trained briefly carries what the embedder missed without unlearning what it had, so
    its chosen weight can be below 1; 1 is the reranker's order alone."""
    if not 0.0 <= rerank_weight <= 1.0:
        raise M3EError(f"the rerank weight must be between 0 and 1, not {rerank_weight}")
    if rerank_weight == 1.0:
        return {key: float(rerank[key]) for key in sorted(rerank, key=lambda key: -rerank[key])}
    return fuse(retrieval, rerank, Fusion("weighted", dense_weight=1.0 - rerank_weight))


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
