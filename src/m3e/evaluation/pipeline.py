"""Retrieve, then rerank: an embedder's top candidates reordered by a cross-encoder, as an mteb search model.

mteb evaluates retrieval with any object that can ``index`` a corpus and ``search`` it (as the BM25 baseline
does); this one embeds the corpus with the embedder's document side, takes each query's ``candidates`` nearest
documents by cosine (exact search, as mteb's own dense retrieval does), and scores those pairs with the
reranker. The reranked candidates come first, in the reranker's order (or, with a ``rerank_weight`` below 1,
in the order of the reranker's and the embedder's scores fused: ``m3e.fusion.fuse_rerank``); the rest of the
requested ``top_k`` follow in the embedder's order, so a metric cut below ``candidates`` sees only the second
stage's decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from m3e.errors import M3EError
from m3e.evaluation.mteb_adapter import corpus_texts
from m3e.fusion import fuse_rerank

if TYPE_CHECKING:
    from mteb.models import ModelMeta

    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker

# Reranked candidates are placed above every cosine (which is at most 1).
_RERANKED_OFFSET = 1_000.0


class RetrieveThenRerank:
    def __init__(
        self,
        embedder: EmbeddingModel,
        reranker: Reranker,
        *,
        candidates: int = 50,
        batch_size: int = 32,
        rerank_weight: float | None = None,
    ):
        if candidates < 1:
            raise M3EError(f"candidates must be at least 1, not {candidates}")
        # the reranker's share of the candidates' fused score: given, else what the reranker recommends, else 1
        chosen = rerank_weight if rerank_weight is not None else reranker.rerank_weight
        self.rerank_weight = 1.0 if chosen is None else float(chosen)
        if not 0.0 <= self.rerank_weight <= 1.0:
            raise M3EError(f"the rerank weight must be between 0 and 1, not {self.rerank_weight}")
        if reranker.num_labels != 1:
            raise M3EError(f"reranker {reranker.name!r} has {reranker.num_labels} labels; reranking needs one")
        self.embedder = embedder
        self.reranker = reranker
        self.candidates = candidates
        self.batch_size = batch_size
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._vectors: np.ndarray | None = None

    @property
    def mteb_model_meta(self) -> ModelMeta:
        from m3e.evaluation.mteb_adapter import for_mteb

        meta = for_mteb(self.embedder).mteb_model_meta
        return meta.model_copy(update={"name": f"{meta.name}+rerank"})

    def index(self, corpus: Any, **kwargs: Any) -> None:
        self._ids, self._texts = corpus_texts(corpus)
        self._vectors = np.asarray(self.embedder.encode_documents(self._texts, batch_size=self.batch_size))

    def search(
        self, queries: Any, *, top_k: int, top_ranked: Any = None, **kwargs: Any
    ) -> dict[str, dict[str, float]]:
        if self._vectors is None:
            raise M3EError("retrieve-then-rerank: search before index")
        qids = [str(q) for q in queries["id"]]
        qtexts = [str(t) for t in queries["text"]]
        qvecs = np.asarray(self.embedder.encode_queries(qtexts, batch_size=self.batch_size))
        cosines = qvecs @ self._vectors.T
        results: dict[str, dict[str, float]] = {}
        for row, (qid, qtext) in enumerate(zip(qids, qtexts, strict=True)):
            order = np.argsort(-cosines[row], kind="stable")[: max(top_k, self.candidates)]
            head = order[: self.candidates]
            scores = np.asarray(
                self.reranker.predict(  # logits: the same order as any activation, and a scale min-max can read
                    [(qtext, self._texts[i]) for i in head], batch_size=self.batch_size, activation="identity"
                )
            )
            second_stage = fuse_rerank(
                {self._ids[i]: float(cosines[row, i]) for i in head},
                {self._ids[i]: float(s) for i, s in zip(head, scores, strict=True)},
                self.rerank_weight,
            )
            ranked = {key: _RERANKED_OFFSET + value for key, value in second_stage.items()}
            for i in order[self.candidates : top_k]:
                ranked[self._ids[i]] = float(cosines[row, i])
            results[qid] = ranked
        return results
