"""The vector-store interface that an index writes to and searches, whatever the engine.

Engines (:mod:`m3e.index.engines` picks one by name): ``lancedb`` (embedded, the default: files in
the index directory, no server), ``qdrant`` (a Qdrant server or cluster by URL; its client's
local mode serves tests) and ``pgvector`` (a PostgreSQL table by URL). Each stores one row per chunk: the vector, the chunk's document id,
position and offsets, its text, the document's metadata as JSON, each filterable metadata
field as a string and, in an index with a sparse side, the chunk's words (m3e.lexical) for BM25:
the dense and the sparse side of a chunk are one row, written and deleted together.

This module depends on nothing else in the package: the engines and the index build on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

# Metadata fields with names like these can be used in --filter; others are kept but not filterable.
FILTERABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass
class Row:
    chunk_id: str
    doc_id: str
    chunk: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    terms: list[str] = field(default_factory=list)  # the chunk's words for the sparse side (m3e.lexical)


@dataclass
class Hit:
    # The retrieval score: the cosine of query and chunk (dense search), BM25 (sparse) or the fused score (hybrid).
    score: float
    chunk_id: str
    doc_id: str
    chunk: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any]
    rerank_score: float | None = None  # the reranker's score, when the search was reranked (it orders the hits)
    dense_score: float | None = None  # the cosine, when the dense side found the chunk
    sparse_score: float | None = None  # BM25, when the sparse side found it
    colbert_score: float | None = None  # BGE-M3's ColBERT score, when the candidates were re-scored with it

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (scores rounded to 6 places; scores not computed are left out)."""
        out: dict[str, Any] = {"score": round(self.score, 6), "id": self.doc_id, "chunk": self.chunk,
                               "start": self.start, "end": self.end, "text": self.text, "metadata": self.metadata}
        for name in ("rerank_score", "dense_score", "sparse_score", "colbert_score"):
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 6)
        return out


def filter_value(value: Any) -> str:
    """The string form under which a metadata value is matched by ``--filter field=value``."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def filter_fields(metadata: dict[str, Any]) -> dict[str, str]:
    return {k: filter_value(v) for k, v in metadata.items() if FILTERABLE.match(k) and v is not None}


class VectorStore(Protocol):
    """What an index needs from an engine.

    Writes between :meth:`begin` and :meth:`commit` form one operation: engines with
    snapshots (LanceDB) make it all-or-nothing, the others apply idempotent batches.
    """

    dim: int
    # The index metadata's engine entry; a search setting (nprobes) may be changed in place for one session.
    config: dict[str, Any]
    sparse: bool  # whether rows keep their words and :meth:`search_sparse` works

    def state(self) -> dict[str, Any]:
        """Engine state to record in the index metadata at a commit (e.g. the table version)."""
        ...

    def begin(self, committed: dict[str, Any]) -> None:
        """Start writing on top of the last committed state (undoing any unfinished writes)."""
        ...

    def add(self, rows: Sequence[Row], vectors: np.ndarray) -> None: ...

    def delete_docs(self, doc_ids: Sequence[str]) -> int:
        """Delete every chunk of these documents; returns the number of chunks removed."""
        ...

    def existing_docs(self, doc_ids: Sequence[str]) -> set[str]: ...

    def commit(self) -> dict[str, Any]:
        """Finish the writes; returns the state that the index metadata records."""
        ...

    def rollback(self, committed: dict[str, Any]) -> None: ...

    def search(self, vector: np.ndarray, k: int, filters: dict[str, str] | None = None) -> list[Hit]: ...

    def search_sparse(self, terms: Sequence[str], k: int, filters: dict[str, str] | None = None) -> list[Hit]:
        """The ``k`` chunks with the highest BM25 for these (distinct) words; chunks sharing none are not hits."""
        ...

    def count(self) -> int: ...

    def count_docs(self) -> int: ...

    def finish_build(self) -> None:
        """After a full build: compact files and build an ANN index where the engine needs one."""
        ...

    def maintain(self) -> bool:
        """Housekeeping right after a commit (compaction, pruning); True if the state changed."""
        ...

    def close(self) -> None: ...
