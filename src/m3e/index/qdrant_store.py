"""The distributed engine: a Qdrant collection, on a server or cluster by URL.

For corpora that outgrow one machine, the same index operations run against Qdrant
(sharded and replicated collections, HNSW, payload filters). The client's local mode
(``location`` a directory path) runs the same client calls without a server; tests use it.

Qdrant has no multi-request transactions: each batch is an atomic, idempotent upsert keyed
by the chunk id, so re-running an interrupted ``m3e index add`` converges to the complete
state; an interrupted add can leave some of its documents visible until then.

The sparse side (``config["sparse"]``) is a named sparse vector ``bm25`` on the same point as the dense
vector, so one upsert writes both and one delete removes both. Its values are BM25's term-frequency
part of each word (m3e.lexical: k1 1.2, b 0.75), and Qdrant's IDF modifier supplies the inverse
document frequency at query time (the same formula, over the live collection); a query sends weight
1 per distinct word, so a point's score is its BM25. The average chunk length in that formula is
fixed when the first chunks are written (``config["avgdl"]``), since Qdrant keeps no such statistic.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3e.errors import M3EError
from m3e.extras import require
from m3e.index.store import Hit, Row, filter_fields
from m3e.lexical import K1, B

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client.models import Filter

_NAMESPACE = uuid.UUID("5b0e4f7e-8a58-4d8e-9a43-2f6f4c1c9e3a")
_SERVER_SCHEMES = ("http://", "https://")
SPARSE_VECTOR = "bm25"


def term_id(term: str) -> int:
    """Qdrant's sparse indices are 32-bit integers: a stable hash of the word."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


def bm25_tf_weights(terms: Sequence[str], avgdl: float, k1: float = K1, b: float = B) -> dict[int, float]:
    """Each distinct word's term-frequency part of BM25 in a chunk of these words."""
    norm = k1 * (1.0 - b + b * len(terms) / max(avgdl, 1e-9))
    return {term_id(w): tf * (k1 + 1.0) / (tf + norm) for w, tf in Counter(terms).items()}


def point_id(chunk_id: str) -> str:
    """Qdrant ids are integers or UUIDs; a name-based UUID keeps upserts idempotent."""
    return str(uuid.uuid5(_NAMESPACE, chunk_id))


def _location(index_dir: str | Path, config: dict[str, Any]) -> str:
    """A server URL, ":memory:", or the absolute directory of the client's local mode."""
    location = config.get("url")
    if not location:
        raise M3EError("the qdrant engine needs a URL (e.g. http://localhost:6333) or a local directory")
    if not location.startswith((*_SERVER_SCHEMES, ":memory:")) and not Path(location).is_absolute():
        location = str((Path(index_dir) / location).resolve())
    return str(location)


def _client(location: str, api_key: str | None = None) -> QdrantClient:
    from qdrant_client import QdrantClient

    if location.startswith(_SERVER_SCHEMES):
        return QdrantClient(url=location, api_key=api_key)
    if location == ":memory:":
        return QdrantClient(location=":memory:")
    return QdrantClient(path=location)  # local mode: same client API, no server


class QdrantStore:
    def __init__(self, index_dir: str | Path, config: dict[str, Any], *, dim: int, create: bool = False):
        require("qdrant_client", purpose="the qdrant engine", extra="index", package="qdrant-client")
        self.dim = int(dim)
        self.config = config
        self.sparse = bool(config.get("sparse"))
        location = _location(index_dir, config)
        self.collection: str = config.get("collection") or "m3e"
        self.client = _client(location, os.environ.get(config.get("api_key_env", "QDRANT_API_KEY")))
        exists = self.client.collection_exists(self.collection)
        if create:
            if exists:
                self.client.delete_collection(self.collection)
            self._create_collection(payload_index=location.startswith(_SERVER_SCHEMES))
        elif not exists:
            raise M3EError(f"Qdrant collection {self.collection!r} does not exist at {config.get('url')}")

    def _create_collection(self, payload_index: bool) -> None:
        from qdrant_client import models

        sparse = {SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)} if self.sparse else None
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
            sparse_vectors_config=sparse,
        )
        if payload_index:  # local mode has no payload indexes
            self.client.create_payload_index(self.collection, "doc_id", models.PayloadSchemaType.KEYWORD)

    # Qdrant has no snapshots to pin; a commit records the count for `m3e index info`.
    def state(self) -> dict[str, Any]:
        return {}

    def begin(self, committed: dict[str, Any]) -> None:
        return None

    def commit(self) -> dict[str, Any]:
        return {}

    def rollback(self, committed: dict[str, Any]) -> None:
        return None

    def add(self, rows: Sequence[Row], vectors: np.ndarray) -> None:
        if not rows:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dim):
            raise M3EError(f"expected vectors of shape {(len(rows), self.dim)}, got {vectors.shape}")
        payloads = [
            {"chunk_id": r.chunk_id, "doc_id": r.doc_id, "chunk": r.chunk, "start": r.start, "end": r.end,
             "text": r.text, "metadata": r.metadata, "f": filter_fields(r.metadata)}
            for r in rows
        ]
        from qdrant_client import models

        if not self.sparse:
            self.client.upsert(
                self.collection,
                points=models.Batch(ids=[point_id(r.chunk_id) for r in rows], vectors=vectors.tolist(),
                                    payloads=payloads),
                wait=True,
            )
            return
        if not self.config.get("avgdl"):
            self.config["avgdl"] = max(sum(len(r.terms) for r in rows) / len(rows), 1.0)
        points = []
        for row, vector, payload in zip(rows, vectors.tolist(), payloads, strict=True):
            weights = bm25_tf_weights(row.terms, float(self.config["avgdl"]))
            sparse = models.SparseVector(indices=list(weights), values=list(weights.values()))
            points.append(models.PointStruct(id=point_id(row.chunk_id), payload=payload,
                                             vector={"": vector, SPARSE_VECTOR: sparse}))
        self.client.upsert(self.collection, points=points, wait=True)

    def _doc_filter(self, doc_ids: Sequence[str]) -> Filter:
        from qdrant_client import models

        match = models.MatchAny(any=list(doc_ids))
        return models.Filter(must=[models.FieldCondition(key="doc_id", match=match)])

    def delete_docs(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        flt = self._doc_filter(doc_ids)
        n = self.client.count(self.collection, count_filter=flt, exact=True).count
        if n:
            from qdrant_client import models

            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)
        return int(n)

    def existing_docs(self, doc_ids: Sequence[str]) -> set[str]:
        if not doc_ids:
            return set()
        found: set[str] = set()
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, scroll_filter=self._doc_filter(doc_ids),
                                                limit=1000, offset=offset, with_payload=["doc_id"],
                                                with_vectors=False)
            found.update(p.payload["doc_id"] for p in points if p.payload)  # set: with_payload asked for it
            if offset is None:
                return found

    def finish_build(self) -> None:
        return None  # Qdrant maintains its HNSW index itself

    def maintain(self) -> bool:
        return False

    def _filter(self, filters: dict[str, str] | None) -> Filter | None:
        from qdrant_client import models

        if not filters:
            return None
        return models.Filter(must=[models.FieldCondition(key=f"f.{f}", match=models.MatchValue(value=v))
                                   for f, v in filters.items()])

    def search(self, vector: np.ndarray, k: int, filters: dict[str, str] | None = None) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).tolist()
        result = self.client.query_points(self.collection, query=query, query_filter=self._filter(filters), limit=k,
                                          with_payload=True)
        return [_hit(p.payload or {}, float(p.score), dense_score=float(p.score)) for p in result.points]

    def search_sparse(self, terms: Sequence[str], k: int, filters: dict[str, str] | None = None) -> list[Hit]:
        if not self.sparse:
            raise M3EError("this index has no sparse side (it was built with --sparse none)")
        from qdrant_client import models

        ids = list(dict.fromkeys(term_id(t) for t in terms if t))  # a repeated query word counts once
        if not ids:
            return []
        query = models.SparseVector(indices=ids, values=[1.0] * len(ids))
        result = self.client.query_points(self.collection, query=query, using=SPARSE_VECTOR,
                                          query_filter=self._filter(filters), limit=k, with_payload=True)
        return [_hit(p.payload or {}, float(p.score), sparse_score=float(p.score)) for p in result.points
                if p.score > 0]

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def count_docs(self) -> int:
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key="chunk", match=models.MatchValue(value=0))])
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def close(self) -> None:
        self.client.close()


def _hit(payload: dict[str, Any], score: float, **scores: float) -> Hit:
    return Hit(score=score, chunk_id=payload["chunk_id"], doc_id=payload["doc_id"], chunk=int(payload["chunk"]),
               start=int(payload["start"]), end=int(payload["end"]), text=payload["text"],
               metadata=payload.get("metadata") or {}, **scores)
