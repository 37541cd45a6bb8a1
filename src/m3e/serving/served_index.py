"""A served index (``m3e serve --index NAME=DIR``): open, reopened when its committed state changes.

A :class:`ServedIndex` keeps its :class:`m3e.index.Index` open and reopens it when ``index.json`` changes
(a commit of ``m3e index add / update / delete`` replaces that file), so a search sees what was added
without a restart; until the commit it sees the previous state, as the index promises every reader. The
query is embedded by the index's model: a served embedder when it is the model that built the index (no
second copy in memory), else the model the index records, loaded at start.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.errors import M3EError
from m3e.index import MODES, Index
from m3e.index.meta import META_NAME, check_model, read_index_meta
from m3e.lexical import BM25Params, lexical_terms

if TYPE_CHECKING:
    from collections.abc import Iterable

    from m3e.model import EmbeddingModel

logger = logging.getLogger(__name__)


class ServedIndex:
    """An index under a public name, reopened when its committed state changes."""

    def __init__(self, name: str, path: str | os.PathLike[str], model: EmbeddingModel | None = None):
        self.name = name
        self.path = Path(path)
        self._model = model
        self._lock = threading.Lock()
        self._stamp = self._meta_stamp()
        self.index = Index.open(self.path, model)
        self.reloads = 0

    @classmethod
    def open(
        cls, name: str, path: str | os.PathLike[str], embedders: Iterable[EmbeddingModel]
    ) -> ServedIndex:
        """The index at ``path``, querying with the first of ``embedders`` that built it, else with the model it
        records (loaded now, so the first search is not slow)."""
        recorded = read_index_meta(path)["model"]
        model = next((m for m in embedders if _built(recorded, m, path)), None)
        served = cls(name, path, model)
        if model is None:
            logger.info(
                "index %s: loading its model %s", name, recorded.get("source") or recorded.get("name")
            )
            served._model = served.index.model
        return served

    def _meta_stamp(self) -> tuple[int, int, int]:
        st = (self.path / META_NAME).stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def current(self) -> Index:
        """The index as last committed: reopened when index.json was replaced since the last look."""
        with self._lock:
            try:
                stamp = self._meta_stamp()
            except OSError as exc:
                raise M3EError(f"index {self.name!r} is unreadable: {exc.strerror or exc}") from exc
            if stamp != self._stamp:
                self._reopen(stamp)
            return self.index

    def _reopen(self, stamp: tuple[int, int, int]) -> None:
        updated = read_index_meta(self.path).get("updated")
        if updated != self.index.meta.get("updated"):
            fresh = Index.open(self.path, self._model)
            old, self.index = self.index, fresh
            old.close()
            self.reloads += 1
            logger.info("index %s reloaded (updated %s)", self.name, updated)
        self._stamp = stamp

    def describe(self) -> dict[str, Any]:
        """The index as ``GET /v1/indexes`` lists it."""
        index = self.current()
        meta = index.meta
        state = meta.get("state", {})
        return {
            "id": self.name,
            "object": "index",
            "docs": state.get("docs"),
            "chunks": state.get("chunks"),
            "status": state.get("status"),
            "updated": meta.get("updated"),
            "model": meta.get("model", {}).get("name"),
            "default_mode": index.default_mode,
            "modes": list(MODES) if index.sparse is not None else ["dense"],
            "engine": meta.get("engine", {}).get("name"),
        }

    def close(self) -> None:
        self.index.close()


def _built(recorded: dict[str, Any], model: EmbeddingModel, path: str | os.PathLike[str]) -> bool:
    try:
        check_model(recorded, model, path)
    except M3EError:
        return False
    return True


def query_terms(index: Index, query: str) -> list[str]:
    """The query's words as the index's sparse side segments them (m3e.lexical), repeats dropped; with no
    sparse side, as the default segmenter does."""
    params = index.sparse or BM25Params()
    return list(dict.fromkeys(lexical_terms(query, params.segmenter, stop_words=params.stop_words)))
