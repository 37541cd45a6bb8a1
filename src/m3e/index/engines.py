"""The engines an index can store its vectors in, and the one place that picks an engine by name.

Each engine implements :class:`m3e.index.store.VectorStore`; the index metadata's ``engine`` entry
(``{"name": "lancedb", ...}``) says which one an index uses. Engines are imported only when opened,
so an index on one engine does not need the other's client installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3e.errors import M3EError
from m3e.index.store import VectorStore

ENGINES = ("lancedb", "qdrant", "pgvector")


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise M3EError(f"unknown index engine {name!r}; choose one of {', '.join(ENGINES)}")


def open_store(config: dict[str, Any], index_dir: str | Path, *, dim: int, create: bool = False,
               committed: dict[str, Any] | None = None) -> VectorStore:
    """The store that ``config`` (the index metadata's ``engine`` entry) describes."""
    name = config.get("name")
    if name == "lancedb":
        from m3e.index.lance_store import LanceStore

        return LanceStore(index_dir, config, dim=dim, create=create, committed=committed)
    if name == "qdrant":
        from m3e.index.qdrant_store import QdrantStore

        return QdrantStore(index_dir, config, dim=dim, create=create)
    if name == "pgvector":
        from m3e.index.pgvector_store import PgVectorStore

        return PgVectorStore(index_dir, config, dim=dim, create=create, committed=committed)
    raise M3EError(f"unknown index engine {name!r}; known: {', '.join(ENGINES)}")
