"""A semantic-search index: a corpus chunked, embedded by one model, stored in a vector store.

Data flow: corpus reader -> documents -> chunks -> batches -> model.encode_documents ->
store.add -> commit (index.json). Every operation is streamed in batches of whole
documents, so memory stays bounded by the batch size and the longest document.

* ``build`` checkpoints after every batch (the index records how many documents of the
  corpus are stored); an interrupted build resumes from there without re-encoding.
* ``add`` / ``update`` / ``delete`` are all-or-nothing: they commit once, at the end, by
  replacing index.json; until then readers see the previous state, and a crash leaves it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from m3e.errors import InputError, M3EError
from m3e.index.chunking import Chunk, check_chunking, chunk_document
from m3e.index.corpus import CorpusReader, Document
from m3e.index.engines import check_engine, open_store
from m3e.index.meta import FORMAT, META_NAME, check_model, model_signature, read_index_meta, write_meta
from m3e.index.progress import IndexProgress
from m3e.index.store import Hit, Row, VectorStore

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 400  # characters; about one 512-token window for Chinese text
DEFAULT_OVERLAP = 50
DEFAULT_BATCH_CHUNKS = 256


class _WriteLock:
    """One writer per index: an exclusive lock on ``<index>/.lock`` for the length of a write."""

    def __init__(self, path: Path) -> None:
        self.path = path / ".lock"
        self.handle: IO[str] | None = None

    def __enter__(self) -> _WriteLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
            return self
        self.handle = self.path.open("a")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.handle.close()
            self.handle = None
            raise M3EError(
                f"{self.path.parent} is being written by another process; try again when it is done"
            ) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the lock
            self.handle = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class WriteReport:
    docs: int = 0  # documents written by this operation
    chunks: int = 0  # chunks encoded and written
    skipped_docs: int = 0  # documents already stored (resume) and not re-encoded
    replaced_docs: int = 0  # documents that replaced an earlier version (upsert)
    deleted_chunks: int = 0


class Index:
    """Open with :meth:`open`, create with :meth:`create` or :func:`build_index`."""

    def __init__(self, path: Path, meta: dict[str, Any], store: VectorStore,
                 model: EmbeddingModel | None = None) -> None:
        self.path = path
        self.meta = meta
        self.store = store
        self._model = model

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        model: EmbeddingModel,
        *,
        model_source: str | None = None,
        engine: str = "lancedb",
        url: str | None = None,
        collection: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        ann: str = "auto",
        overwrite: bool = False,
    ) -> Index:
        path = Path(path)
        check_chunking(chunk_size, overlap)
        check_engine(engine)
        _prepare_directory(path, overwrite)
        config = _engine_config(engine, path, url=url, collection=collection, ann=ann)
        store = open_store(config, path, dim=model.dim, create=True)
        meta = {
            "format": FORMAT,
            "engine": config,
            "model": model_signature(model, model_source),
            "chunking": {"unit": "characters", "size": chunk_size, "overlap": overlap},
            "state": {"status": "building", "engine": store.state(), "docs": 0, "chunks": 0},
            "created": _now(),
            "updated": _now(),
        }
        write_meta(path, meta)
        return cls(path, meta, store, model)

    @classmethod
    def open(cls, path: str | os.PathLike[str], model: EmbeddingModel | None = None) -> Index:
        """Open an index; ``model`` (optional) is checked against the one that built it."""
        path = Path(path)
        meta = read_index_meta(path)
        committed = meta["state"].get("engine")
        store = open_store(meta["engine"], path, dim=meta["model"]["dim"], committed=committed)
        if model is not None:
            check_model(meta["model"], model, path)
        return cls(path, meta, store, model)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> EmbeddingModel:
        """The query/document model: the one given, else the one recorded in the index."""
        if self._model is None:
            self._model = load_index_model(self.meta, self.path)
        return self._model

    @property
    def status(self) -> str:
        return self.meta["state"]["status"]

    # ------------------------------------------------------------------ commits
    def _commit(self, **state: Any) -> None:
        new = dict(self.meta["state"])
        new.update(state)
        new["engine"] = self.store.commit()
        new["chunks"] = self.store.count()
        new["docs"] = self.store.count_docs()
        meta = dict(self.meta, state=new, updated=_now())
        write_meta(self.path, meta)  # the commit point
        self.meta = meta

    def _housekeeping(self) -> None:
        """Compact and prune after a commit, then commit the compacted state.

        Only after the commit: pruning then never touches the committed version (it is the
        latest), and a crash here leaves the previous commit, which is intact, in force.
        """
        if self.store.maintain():
            self._commit()

    # ------------------------------------------------------------------ writes
    def _batches(
        self, docs: Iterable[Document], batch_chunks: int
    ) -> Iterator[list[tuple[Document, list[Chunk]]]]:
        size, overlap = self.meta["chunking"]["size"], self.meta["chunking"]["overlap"]
        batch: list[tuple[Document, list[Chunk]]] = []
        n = 0
        for doc in docs:
            chunks = chunk_document(doc.id, doc.text, size, overlap)
            batch.append((doc, chunks))
            n += len(chunks)
            if n >= batch_chunks:
                yield batch
                batch, n = [], 0
        if batch:
            yield batch

    def _write_batch(self, batch: list[tuple[Document, list[Chunk]]], upsert: bool, source: str,
                     report: WriteReport) -> None:
        ids = [doc.id for doc, _ in batch]
        seen: dict[str, Document] = {}
        for doc, _ in batch:
            if doc.id in seen:
                raise InputError(f"duplicate document id {doc.id!r} (also on line {seen[doc.id].line})",
                                 path=source, line=doc.line)
            seen[doc.id] = doc
        existing = self.store.existing_docs(ids)
        if existing:
            if not upsert:
                first = next(doc for doc, _ in batch if doc.id in existing)
                raise InputError(f"document id {first.id!r} is already in the index (use `m3e index update` "
                                 "or --upsert to replace it)", path=source, line=first.line)
            report.deleted_chunks += self.store.delete_docs(sorted(existing))
            report.replaced_docs += len(existing)
        rows = [Row(c.chunk_id, c.doc_id, c.chunk, c.start, c.end, c.text, doc.metadata)
                for doc, chunks in batch for c in chunks]
        vectors = np.asarray(
            self.model.encode_documents([r.text for r in rows], normalize=True, show_progress=False),
            dtype=np.float32,
        ).reshape(len(rows), -1)
        self.store.add(rows, vectors)
        report.docs += len(batch)
        report.chunks += len(rows)

    def build_from(self, reader: CorpusReader, *, batch_chunks: int = DEFAULT_BATCH_CHUNKS,
                   progress: bool | None = None) -> WriteReport:
        """Stream ``reader`` into a new (or partly built) index, checkpointing after each batch."""
        state = self.meta["state"]
        if state["status"] != "building":
            raise M3EError(f"{self.path} is already built; use `m3e index add` to add documents")
        corpus = reader.fingerprint()
        recorded = state.get("corpus")
        if recorded and recorded != corpus:
            raise M3EError(f"{self.path} is a partial build of {recorded['path']} (size {recorded['size']}), "
                           f"not of {corpus['path']} as it is now; use --overwrite to start again")
        with _WriteLock(self.path):
            return self._build_locked(reader, corpus, recorded, batch_chunks, progress)

    def _build_locked(self, reader: CorpusReader, corpus: dict[str, Any], recorded: dict[str, Any] | None,
                      batch_chunks: int, progress: bool | None) -> WriteReport:
        state = self.meta["state"]
        done = int(state.get("docs_done", 0))
        self.store.begin(state.get("engine") or {})
        if not recorded:
            self._commit(corpus=corpus, docs_done=0)
        report = WriteReport(skipped_docs=done)
        bar = IndexProgress(progress, label="indexed")

        def pending() -> Iterator[Document]:
            for i, doc in enumerate(reader):
                if i >= done:
                    yield doc

        try:
            for batch in self._batches(pending(), batch_chunks):
                self._write_batch(batch, upsert=False, source=str(reader.path), report=report)
                self._commit(docs_done=done + report.docs)
                bar.update(done + report.docs, self.meta["state"]["chunks"], reader.fraction)
        except BaseException:
            # Keep the checkpointed batches for a resume; drop the half-written one.
            self.store.rollback(self.meta["state"].get("engine") or {})
            raise
        finally:
            bar.close()
        self.store.finish_build()
        self._commit(status="ready", corpus=None, docs_done=None)
        return report

    def add(self, docs: Iterable[Document], *, upsert: bool = False, source: str = "<documents>",
            batch_chunks: int = DEFAULT_BATCH_CHUNKS, progress: bool | None = None,
            fraction: Callable[[], float] | None = None) -> WriteReport:
        """``fraction`` reports how far through its source the documents are, for the progress line."""
        """Add documents (``upsert``: replace those whose id is already stored), all or nothing."""
        self._require_ready()
        with _WriteLock(self.path):
            return self._add_locked(docs, upsert, source, batch_chunks, progress, fraction)

    def _add_locked(self, docs: Iterable[Document], upsert: bool, source: str, batch_chunks: int,
                    progress: bool | None, fraction: Callable[[], float] | None) -> WriteReport:
        self.meta = read_index_meta(self.path)  # another process may have committed since this one opened
        committed = self.meta["state"].get("engine") or {}
        self.store.begin(committed)
        report = WriteReport()
        bar = IndexProgress(progress, label="added")
        try:
            for batch in self._batches(docs, batch_chunks):
                self._write_batch(batch, upsert=upsert, source=source, report=report)
                bar.update(report.docs, report.chunks, fraction() if fraction else 0.0)
            self._commit()
        except BaseException:
            self.store.rollback(committed)
            raise
        finally:
            bar.close()
        self._housekeeping()
        return report

    def add_corpus(
        self,
        reader: CorpusReader,
        *,
        upsert: bool = False,
        batch_chunks: int = DEFAULT_BATCH_CHUNKS,
        progress: bool | None = None,
    ) -> WriteReport:
        return self.add(reader, upsert=upsert, source=str(reader.path), batch_chunks=batch_chunks,
                        progress=progress, fraction=lambda: reader.fraction)

    def delete(self, doc_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Delete documents by id, all or nothing; returns (chunks removed, ids not found)."""
        self._require_ready()
        with _WriteLock(self.path):
            return self._delete_locked(doc_ids)

    def _delete_locked(self, doc_ids: Sequence[str]) -> tuple[int, list[str]]:
        self.meta = read_index_meta(self.path)
        committed = self.meta["state"].get("engine") or {}
        self.store.begin(committed)
        try:
            found = self.store.existing_docs(list(doc_ids))
            missing = [d for d in doc_ids if d not in found]
            removed = self.store.delete_docs(sorted(found)) if found else 0
            self._commit()
        except BaseException:
            self.store.rollback(committed)
            raise
        self._housekeeping()
        return removed, missing

    # ------------------------------------------------------------------ reads
    def _require_ready(self) -> None:
        if self.status != "ready":
            stored = self.meta["state"].get("docs_done", 0)
            raise M3EError(f"{self.path}: the build is unfinished ({stored} documents stored); run "
                           "`m3e index build` again with the same corpus to resume it")

    def search(
        self,
        query: str | np.ndarray,
        k: int = 10,
        filters: dict[str, str] | None = None,
        *,
        rerank: Reranker | None = None,
        candidates: int = 50,
    ) -> list[Hit]:
        """The ``k`` chunks nearest to ``query``; with ``rerank``, the nearest ``candidates`` reordered by that
        cross-encoder (each hit keeps its cosine and gets ``rerank_score``)."""
        self._require_ready()
        if k < 1:
            raise M3EError(f"k must be at least 1, not {k}")
        if rerank is not None:
            return self._search_reranked(query, k, filters, rerank, candidates)
        if isinstance(query, str):
            vector = np.asarray(self.model.encode_queries([query], normalize=True, show_progress=False))[0]
        else:
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.meta["model"]["dim"]:
            raise M3EError(f"query vector has dim {vector.shape[0]}, the index {self.meta['model']['dim']}")
        return self.store.search(vector, k, filters)

    def _search_reranked(
        self, query: str | np.ndarray, k: int, filters: dict[str, str] | None, rerank: Reranker, candidates: int
    ) -> list[Hit]:
        if not isinstance(query, str):
            raise M3EError("reranking needs the query's text, not a vector")
        if candidates < 1:
            raise M3EError(f"candidates must be at least 1, not {candidates}")
        hits = self.search(query, max(k, candidates), filters)
        if not hits:
            return []
        scores = [float(s) for s in rerank.predict([(query, h.text) for h in hits])]
        for hit, score in zip(hits, scores, strict=True):
            hit.rerank_score = score
        order = sorted(range(len(hits)), key=lambda i: -scores[i])  # stable: cosine order breaks ties
        return [hits[i] for i in order[:k]]

    def info(self) -> dict[str, Any]:
        return dict(self.meta, path=str(self.path))


def load_index_model(meta: dict[str, Any], path: Path) -> EmbeddingModel:
    """Load the model recorded in the index, with its prompts and backend."""
    from m3e.loading import load_model

    rec = meta["model"]
    source = rec.get("source")
    if not source:
        raise M3EError(f"{path} does not record where its model came from; pass --model")
    try:
        model = load_model(source, backend=rec.get("backend", "torch"), query_prompt=rec["prompts"]["query"],
                           document_prompt=rec["prompts"]["document"], max_length=rec.get("max_length"))
    except M3EError as exc:
        raise M3EError(f"cannot load the model that built {path} ({source}): {exc}; pass --model") from exc
    check_model(rec, model, path)
    return model


def _prepare_directory(path: Path, overwrite: bool) -> None:
    """Make ``path`` an empty place for a new index, or refuse; ``overwrite`` removes an index there."""
    if (path / META_NAME).exists() and not overwrite:
        raise M3EError(f"{path} already holds an index; use `m3e index add` or --overwrite")
    if path.exists() and any(path.iterdir()) and not (path / META_NAME).exists() and not overwrite:
        raise M3EError(f"{path} exists and is not an empty directory")
    if overwrite and path.exists():
        (path / META_NAME).unlink(missing_ok=True)
        if (path / "lance").exists():
            shutil.rmtree(path / "lance")
    path.mkdir(parents=True, exist_ok=True)


def _engine_config(
    engine: str, path: Path, *, url: str | None, collection: str | None, ann: str
) -> dict[str, Any]:
    """The ``engine`` entry of a new index's metadata."""
    if engine == "lancedb":
        return {"name": engine, "path": "lance", "ann": ann}
    if not url:
        raise M3EError("--engine qdrant needs --url (http://host:6333, or a directory for local mode)")
    return {"name": engine, "url": url, "collection": collection or path.name or "m3e"}


def build_index(
    corpus: str | os.PathLike[str] | CorpusReader,
    out: str | os.PathLike[str],
    model: EmbeddingModel,
    *,
    model_source: str | None = None,
    overwrite: bool = False,
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    progress: bool | None = None,
    **create_kw: Any,
) -> tuple[Index, WriteReport]:
    """Build ``out`` from ``corpus``, or resume its unfinished build."""
    reader = corpus if isinstance(corpus, CorpusReader) else CorpusReader(corpus)
    out = Path(out)
    if (out / META_NAME).exists() and not overwrite:
        meta = read_index_meta(out)
        if meta["state"]["status"] != "building":
            raise M3EError(f"{out} already holds a built index; use `m3e index add` or --overwrite")
        index = Index.open(out, model=model)
        logger.info("resuming the build of %s after %s documents", out, meta["state"].get("docs_done", 0))
    else:
        index = Index.create(out, model, model_source=model_source, overwrite=overwrite, **create_kw)
    return index, index.build_from(reader, batch_chunks=batch_chunks, progress=progress)
