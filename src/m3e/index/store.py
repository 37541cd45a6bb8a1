"""The vector-store interface that an index writes to and searches, whatever the engine.

Engines (:mod:`m3e.index.engines` picks one by name): ``lancedb`` (embedded, the default: files in
the index directory, no server) and ``qdrant`` (a Qdrant server or cluster by URL; its client's
local mode serves tests). Both store one row per chunk: the vector, the chunk's document id,
position and offsets, its text, the document's metadata as JSON, and each filterable metadata
field as a string.

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


@dataclass
class Hit:
    score: float  # cosine similarity of the query and the chunk
    chunk_id: str
    doc_id: str
    chunk: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any]
    rerank_score: float | None = None  # the reranker's score, when the search was reranked (it orders the hits)


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

    def count(self) -> int: ...

    def count_docs(self) -> int: ...

    def finish_build(self) -> None:
        """After a full build: compact files and build an ANN index where the engine needs one."""
        ...

    def maintain(self) -> bool:
        """Housekeeping right after a commit (compaction, pruning); True if the state changed."""
        ...

    def close(self) -> None: ...
