"""The index's sparse and hybrid retrieval as mteb search models, so `m3e eval` scores dense, sparse and hybrid
side by side in one report.

- :class:`SparseSearch`: BM25 over :mod:`m3e.lexical` words (the index's sparse side: the same segmenter, stop
  words, k1 and b), exact over the whole corpus.
- :class:`HybridSearch`: an embedder's cosine (exact, as mteb's dense retrieval) and that BM25, each side's top
  ``depth`` fused by :func:`m3e.fusion.fuse` (the index's hybrid search calls the same function).

Both follow mteb's search protocol (``index`` a corpus, ``search`` queries), as the BM25 baseline does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from m3e.errors import M3EError
from m3e.evaluation.mteb_adapter import corpus_texts
from m3e.fusion import FUSION_DEPTH, Fusion, fuse
from m3e.lexical import BM25, BM25Params, lexical_terms

if TYPE_CHECKING:
    from mteb.models.model_meta import ModelMeta

    from m3e.model import EmbeddingModel



def _top(scores: NDArray[np.float64], ids: list[str], depth: int, candidates: list[int] | None) -> dict[str, float]:
    pool = np.asarray(candidates if candidates is not None else range(len(ids)), dtype=np.int64)
    order = pool[np.argsort(-scores[pool], kind="stable")][:depth]
    return {ids[i]: float(scores[i]) for i in order}


def _candidates(top_ranked: Any, qid: str, id_pos: dict[str, int]) -> list[int] | None:
    if top_ranked is not None and qid in top_ranked:
        return [id_pos[d] for d in top_ranked[qid] if d in id_pos]
    return None


class SparseSearch:
    """BM25 over the index's words, as an mteb search model (retrieval tasks only)."""

    name = "sparse"

    def __init__(self, params: BM25Params | None = None) -> None:
        self.params = params or BM25Params()
        lexical_terms("", self.params.segmenter)  # loads the segmenter, or says which extra it needs
        self._ids: list[str] = []
        self._bm25: BM25 | None = None

    @property
    def mteb_model_meta(self) -> ModelMeta:
        from m3e.evaluation.baselines import baseline_meta

        return baseline_meta(f"m3e-search/{self.name}", None, model_type="sparse")

    def terms(self, text: str) -> list[str]:
        return lexical_terms(text, self.params.segmenter, stop_words=self.params.stop_words)

    def index(self, corpus: Any, **kwargs: Any) -> None:
        self._ids, texts = corpus_texts(corpus)
        self._bm25 = BM25(self.params).fit([self.terms(t) for t in texts])

    def sparse_scores(self, query: str) -> NDArray[np.float64]:
        if self._bm25 is None:
            raise M3EError(f"{self.name}: search before index")
        return self._bm25.scores(self.terms(query))

    def search(
        self, queries: Any, *, top_k: int, top_ranked: Any = None, **kwargs: Any
    ) -> dict[str, dict[str, float]]:
        id_pos = {d: i for i, d in enumerate(self._ids)}
        return {
            str(qid): _top(self.sparse_scores(str(text)), self._ids, top_k, _candidates(top_ranked, str(qid), id_pos))
            for qid, text in zip(queries["id"], queries["text"], strict=True)
        }


class HybridSearch(SparseSearch):
    """Dense (an m3e model) and sparse (BM25) fused, as an mteb search model (retrieval tasks only)."""

    def __init__(self, embedder: EmbeddingModel, fusion: Fusion | None = None, *, depth: int = FUSION_DEPTH,
                 params: BM25Params | None = None, batch_size: int = 32) -> None:
        super().__init__(params)
        if depth < 1:
            raise M3EError(f"depth must be at least 1, not {depth}")
        self.embedder = embedder
        self.fusion = fusion or Fusion()
        self.depth = depth
        self.batch_size = batch_size
        self._vectors: NDArray[np.float32] | None = None

    @property
    def mteb_model_meta(self) -> ModelMeta:
        from m3e.evaluation.mteb_adapter import for_mteb

        meta = for_mteb(self.embedder).mteb_model_meta
        return meta.model_copy(update={"name": f"{meta.name}-hybrid"})

    def index(self, corpus: Any, **kwargs: Any) -> None:
        super().index(corpus)
        _, texts = corpus_texts(corpus)
        self._vectors = np.asarray(self.embedder.encode_documents(texts, batch_size=self.batch_size,
                                                                  show_progress=False), dtype=np.float32)

    def search(
        self, queries: Any, *, top_k: int, top_ranked: Any = None, **kwargs: Any
    ) -> dict[str, dict[str, float]]:
        if self._vectors is None:
            raise M3EError("hybrid: search before index")
        qids = [str(q) for q in queries["id"]]
        qtexts = [str(t) for t in queries["text"]]
        qvecs = np.asarray(self.embedder.encode_queries(qtexts, batch_size=self.batch_size, show_progress=False))
        cosines = (qvecs @ self._vectors.T).astype(np.float64)
        id_pos = {d: i for i, d in enumerate(self._ids)}
        results: dict[str, dict[str, float]] = {}
        for row, (qid, text) in enumerate(zip(qids, qtexts, strict=True)):
            pool = _candidates(top_ranked, qid, id_pos)
            dense = _top(cosines[row], self._ids, self.depth, pool)
            sparse = {d: s for d, s in _top(self.sparse_scores(text), self._ids, self.depth, pool).items() if s > 0}
            fused = fuse(dense, sparse, self.fusion)
            results[qid] = dict(list(fused.items())[: max(top_k, 1)])
        return results
