"""A search index: a corpus chunked, embedded by one model and segmented into words, stored in a vector store.

Data flow: corpus reader -> documents -> chunks -> batches -> model.encode_documents (the dense side)
and m3e.lexical words (the sparse side, BM25) -> store.add (one row holds both) -> commit (index.json). Every
operation is streamed in batches of whole documents of up to ``batch_chunks`` chunks; a document with more
chunks than that is chunked lazily and written in batches of ``batch_chunks`` of its own chunks, so memory
stays bounded by the batch size (and the longest document's text), not by a document's chunk count.

* ``build`` checkpoints after every batch that ends a document (the index records how many documents of the
  corpus are stored); an interrupted build resumes from there without re-encoding. The batches of one long
  document are one unit: they are committed together after its last one, and a build stopped within them
  keeps none of them and resumes at that document.
* ``add`` / ``update`` / ``delete`` are all-or-nothing: they commit once, at the end, by
  replacing index.json; until then readers see the previous state, and a crash leaves it.

Search (:meth:`Index.search`) runs in one of three modes: ``dense`` (cosine), ``sparse`` (BM25) or
``hybrid`` (each side's top candidates fused by m3e.fusion; the default when the index has both
sides), then optionally re-scores the candidates (BGE-M3's ColBERT score, or a cross-encoder), and
returns chunks or, with ``group=True``, documents. Its arguments and results (``Hit.to_dict``,
``DocumentHit.to_dict``) are plain values, so an HTTP endpoint can pass a request's fields straight in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, overload

import numpy as np

from m3e.errors import InputError, M3EError, as_os_error, describe_os_error
from m3e.fusion import FUSION_DEPTH, Fusion, fuse, fuse_rerank
from m3e.index.chunking import Chunk, check_chunking, iter_chunks, iter_chunks_by_tokens
from m3e.index.corpus import CorpusReader, Document
from m3e.index.engines import check_engine, open_store
from m3e.index.meta import FORMAT, META_NAME, check_model, model_signature, read_index_meta, write_meta
from m3e.index.progress import IndexProgress
from m3e.index.results import DocumentHit, group_hits
from m3e.index.store import Hit, Row, VectorStore
from m3e.lexical import K1, B, BM25Params, lexical_terms

if TYPE_CHECKING:
    from m3e.bge_m3 import BGEM3Model
    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 400  # characters; about one 512-token window for Chinese text
DEFAULT_OVERLAP = 50
DEFAULT_TOKEN_CHUNK_SIZE = 256  # tokens
DEFAULT_TOKEN_OVERLAP = 32
DEFAULT_BATCH_CHUNKS = 256
MODES = ("dense", "sparse", "hybrid")
SPARSE_KINDS = ("bm25",)
# Chunks read per requested document when results are grouped (a document may match in several chunks).
CHUNKS_PER_DOCUMENT = 3


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


def engine_os_error(exc: BaseException, path: Path) -> BaseException:
    """An engine's I/O failure as the OSError it is (the CLI turns an OSError into one line with exit status
    1); any other exception as it is."""
    if not isinstance(exc, RuntimeError):
        return exc
    return as_os_error(exc, str(path)) or exc


@contextlib.contextmanager
def damaged_data(path: Path) -> Iterator[None]:
    """An engine that cannot read the index's files (truncated, overwritten, half copied) as one line naming
    the index, not a Rust traceback: the committed index.json points at data that is not there as written."""
    try:
        yield
    except RuntimeError as exc:
        if "lance error" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0].split(", /")[0]
        raise M3EError(f"{path}: the index data cannot be read ({first}); rebuild the index or restore a copy") from exc


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class WriteReport:
    docs: int = 0  # documents written by this operation
    chunks: int = 0  # chunks encoded and written
    skipped_docs: int = 0  # documents already stored (resume) and not re-encoded
    replaced_docs: int = 0  # documents that replaced an earlier version (upsert)
    deleted_chunks: int = 0


@dataclass
class _Piece:
    """A document's chunks within one batch: all of them, or a part of a long document's."""

    doc: Document
    chunks: list[Chunk]
    first: bool  # the document's first chunks: its id is checked (and, on upsert, its old version removed) here
    last: bool = False  # the document's last chunks: it is complete once this piece is written


class Index:
    """Open with :meth:`open`, create with :meth:`create` or :func:`build_index`."""

    def __init__(self, path: Path, meta: dict[str, Any], store: VectorStore,
                 model: EmbeddingModel | BGEM3Model | None = None) -> None:
        self.path = path
        self.meta = meta
        self.store = store
        self._model, self._m3 = _split_model(model)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        model: EmbeddingModel | BGEM3Model,
        *,
        model_source: str | None = None,
        engine: str = "lancedb",
        url: str | None = None,
        collection: str | None = None,
        chunk_size: int | None = None,
        overlap: int | None = None,
        chunk_unit: str = "characters",
        sparse: str | None = "bm25",
        ann: str = "auto",
        overwrite: bool = False,
    ) -> Index:
        """A new, empty index. ``sparse``: "bm25" keeps each chunk's words for BM25 beside its vector (the sparse
        side of hybrid search), None stores vectors only. ``chunk_unit``: "characters" (size 400, overlap 50 by
        default) or "tokens" of the model's tokenizer (256 and 32)."""
        path = Path(path)
        size, overlap = _chunking(chunk_unit, chunk_size, overlap)
        if sparse is not None and sparse not in SPARSE_KINDS:
            raise M3EError(f"unknown sparse side {sparse!r}; choose {', '.join(SPARSE_KINDS)} or none")
        check_engine(engine)
        _prepare_directory(path, overwrite)
        dense_model, _ = _split_model(model)
        assert dense_model is not None
        config = _engine_config(engine, path, url=url, collection=collection, ann=ann, sparse=sparse is not None)
        store = open_store(config, path, dim=dense_model.dim, create=True)
        meta = {
            "format": FORMAT,
            "engine": config,
            "model": model_signature(dense_model, model_source),
            "chunking": {"unit": chunk_unit, "size": size, "overlap": overlap},
            "state": {"status": "building", "engine": store.state(), "docs": 0, "chunks": 0},
            "created": _now(),
            "updated": _now(),
        }
        if sparse is not None:
            params = BM25Params()
            meta["sparse"] = {"kind": sparse, "segmenter": params.segmenter, "stop_words": params.stop_words,
                              "k1": K1, "b": B}
        write_meta(path, meta)
        return cls(path, meta, store, model)

    @classmethod
    def open(cls, path: str | os.PathLike[str], model: EmbeddingModel | BGEM3Model | None = None) -> Index:
        """Open an index; ``model`` (optional) is checked against the one that built it."""
        path = Path(path)
        meta = read_index_meta(path)
        committed = meta["state"].get("engine")
        with damaged_data(path):
            store = open_store(meta["engine"], path, dim=meta["model"]["dim"], committed=committed)
        dense_model, _ = _split_model(model)
        if dense_model is not None:
            check_model(meta["model"], dense_model, path)
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
            if records_bge_m3(self.meta):
                self._model = self.m3_model.embedder  # one load serves the dense side and ColBERT
            else:
                self._model = load_index_model(self.meta, self.path)
        return self._model

    @property
    def m3_model(self) -> BGEM3Model:
        """BGE-M3 with its ColBERT head, for re-scoring: the one given, else the recorded source if it is a
        BGE-M3 checkpoint."""
        if self._m3 is None:
            self._m3 = load_index_bge_m3(self.meta, self.path)
            if self._model is None:
                self._model = self._m3.embedder
        return self._m3

    @property
    def sparse(self) -> BM25Params | None:
        """The sparse side's settings, or None for an index of vectors only."""
        rec = self.meta.get("sparse")
        if not rec:
            return None
        return BM25Params(k1=rec["k1"], b=rec["b"], segmenter=rec["segmenter"], stop_words=rec["stop_words"])

    @property
    def default_mode(self) -> str:
        return "hybrid" if self.sparse is not None else "dense"

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

    def _rollback(self, committed: dict[str, Any]) -> None:
        """Drop uncommitted writes; a rollback that fails too (the disk is still full) is logged, not raised,
        so the error the caller sees is the first one. index.json still names the committed version, which
        readers use and the next write rolls back to."""
        try:
            self.store.rollback(committed)
        except Exception:
            logger.warning("%s: the rollback after a failed write failed too; the next write retries it", self.path,
                           exc_info=True)

    def _housekeeping(self) -> None:
        """Compact and prune after a commit, then commit the compacted state.

        Only after the commit: pruning then never touches the committed version (it is the
        latest), and a crash here leaves the previous commit, which is intact, in force.
        """
        if self.store.maintain():
            self._commit()

    # ------------------------------------------------------------------ writes
    def _batches(self, docs: Iterable[Document], batch_chunks: int) -> Iterator[list[_Piece]]:
        """Batches of whole documents, flushed once they hold ``batch_chunks`` chunks; a document with more
        chunks than that is cut into pieces of ``batch_chunks`` chunks, each a batch of its own (after the
        whole documents before it), its last piece closing the document in a batch as usual."""
        batch: list[_Piece] = []
        n = 0
        for doc in docs:
            piece = _Piece(doc, [], first=True)
            for chunk in self._chunks(doc):
                if len(piece.chunks) >= batch_chunks:  # the document alone fills a batch, and has more
                    if batch:
                        yield batch
                        batch, n = [], 0
                    yield [piece]
                    piece = _Piece(doc, [], first=False)
                piece.chunks.append(chunk)
            piece.last = True
            batch.append(piece)
            n += len(piece.chunks)
            if n >= batch_chunks:
                yield batch
                batch, n = [], 0
        if batch:
            yield batch

    def _chunks(self, doc: Document) -> Iterator[Chunk]:
        chunking = self.meta["chunking"]
        size, overlap = chunking["size"], chunking["overlap"]
        if chunking.get("unit") == "tokens":
            return iter_chunks_by_tokens(doc.id, doc.text, size, overlap, self.model.tokenizer)
        return iter_chunks(doc.id, doc.text, size, overlap)

    def _write_batch(self, batch: list[_Piece], upsert: bool, source: str, report: WriteReport,
                     building: bool = False) -> None:
        starting = [piece.doc for piece in batch if piece.first]  # a document's id is checked at its first piece
        seen: dict[str, Document] = {}
        for doc in starting:
            if doc.id in seen:
                raise InputError(f"duplicate document id {doc.id!r} (also on line {seen[doc.id].line})",
                                 path=source, line=doc.line)
            seen[doc.id] = doc
        existing = self.store.existing_docs([doc.id for doc in starting]) if starting else set()
        if existing:
            if not upsert:
                first = next(doc for doc in starting if doc.id in existing)
                if building:  # stored by this build: an earlier record of the same corpus has this id
                    raise InputError(f"duplicate document id {first.id!r} (an earlier record has it)", path=source,
                                     line=first.line)
                raise InputError(f"document id {first.id!r} is already in the index (use `m3e index update` "
                                 "or --upsert to replace it)", path=source, line=first.line)
            report.deleted_chunks += self.store.delete_docs(sorted(existing))
            report.replaced_docs += len(existing)
        sparse = self.sparse
        rows = [Row(c.chunk_id, c.doc_id, c.chunk, c.start, c.end, c.text, piece.doc.metadata,
                    terms=_terms(c.text, sparse) if sparse else [])
                for piece in batch for c in piece.chunks]
        vectors = np.asarray(
            self.model.encode_documents([r.text for r in rows], normalize=True, show_progress=False),
            dtype=np.float32,
        ).reshape(len(rows), -1)
        self.store.add(rows, vectors)
        report.docs += sum(piece.last for piece in batch)
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

        committed_chunks = 0  # chunks this run has committed; the rest of report.chunks waits for a document's end
        try:
            for batch in self._batches(pending(), batch_chunks):
                self._write_batch(batch, upsert=False, source=str(reader.path), report=report, building=True)
                if batch[-1].last:  # a document's batches are committed together, with its last one
                    self._commit(docs_done=done + report.docs)
                    committed_chunks = report.chunks
                bar.update(done + report.docs,
                           self.meta["state"]["chunks"] + report.chunks - committed_chunks, reader.fraction)
        except BaseException as exc:
            # Keep the checkpointed batches for a resume; drop the half-written one.
            self._rollback(self.meta["state"].get("engine") or {})
            fault = engine_os_error(exc, self.path)
            if fault is exc:
                raise
            raise fault from exc
        finally:
            bar.close()
        self.store.finish_build()
        self._commit(status="ready", corpus=None, docs_done=None)
        return report

    def build_from_encoded(self, batches: Iterable[tuple[Sequence[Row], np.ndarray]], *,
                           progress: bool | None = None) -> WriteReport:
        """Fill a new index with chunks encoded elsewhere (m3e.distributed: the parts a Ray cluster wrote, as
        rows and their vectors), committing after each batch, then finish it as :meth:`build_from` does."""
        state = self.meta["state"]
        if state["status"] != "building" or state.get("docs_done") or state.get("chunks"):
            raise M3EError(f"{self.path}: encoded chunks are loaded into a new, empty index")
        with _WriteLock(self.path):
            self.store.begin(state.get("engine") or {})
            report = WriteReport()
            bar = IndexProgress(progress, label="loaded")
            try:
                for rows, vectors in batches:
                    self.store.add(rows, vectors)
                    report.docs += sum(1 for r in rows if r.chunk == 0)
                    report.chunks += len(rows)
                    self._commit(docs_done=report.docs)
                    bar.update(report.docs, self.meta["state"]["chunks"], 0.0)
            except BaseException:
                self._rollback(self.meta["state"].get("engine") or {})
                raise
            finally:
                bar.close()
            self.store.finish_build()
            self._commit(status="ready", corpus=None, docs_done=None)
        return report

    def add(self, docs: Iterable[Document], *, upsert: bool = False, source: str = "<documents>",
            batch_chunks: int = DEFAULT_BATCH_CHUNKS, progress: bool | None = None,
            fraction: Callable[[], float] | None = None) -> WriteReport:
        """Add documents (``upsert``: replace those whose id is already stored), all or nothing; ``fraction``
        reports how far through its source the documents are, for the progress line."""
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
        except BaseException as exc:
            self._rollback(committed)
            fault = engine_os_error(exc, self.path)
            if fault is exc:
                raise
            raise fault from exc
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

    def delete(self, doc_ids: Sequence[str], *, missing_ok: bool = True) -> tuple[int, list[str]]:
        """Delete documents by id, all or nothing; returns (chunks removed, ids not found). With
        ``missing_ok=False`` an id that is not in the index is an error and nothing is deleted."""
        self._require_ready()
        with _WriteLock(self.path):
            return self._delete_locked(doc_ids, missing_ok)

    def _delete_locked(self, doc_ids: Sequence[str], missing_ok: bool) -> tuple[int, list[str]]:
        self.meta = read_index_meta(self.path)
        committed = self.meta["state"].get("engine") or {}
        self.store.begin(committed)
        try:
            found = self.store.existing_docs(list(doc_ids))
            missing = [d for d in doc_ids if d not in found]
            if missing and not missing_ok:
                shown = ", ".join(repr(d) for d in missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise M3EError(f"{len(missing)} of the ids are not in {self.path}: {shown}; nothing deleted "
                               "(--missing-ok deletes the others)")
            removed = self.store.delete_docs(sorted(found)) if found else 0
            self._commit()
        except BaseException as exc:
            self._rollback(committed)
            fault = engine_os_error(exc, self.path)
            if fault is exc:
                raise
            raise fault from exc
        self._housekeeping()
        return removed, missing

    # ------------------------------------------------------------------ reads
    def _require_ready(self) -> None:
        if self.status != "ready":
            stored = self.meta["state"].get("docs_done", 0)
            raise M3EError(f"{self.path}: the build is unfinished ({stored} documents stored); run "
                           "`m3e index build` again with the same corpus to resume it")

    @overload
    def search(self, query: str | np.ndarray, k: int = ..., filters: dict[str, str] | None = ..., *,
               mode: str | None = ..., fusion: Fusion | None = ..., group: Literal[False] = ...,
               rerank: Reranker | None = ..., candidates: int = ..., colbert: bool = ...,
               rerank_weight: float | None = ...) -> list[Hit]: ...

    @overload
    def search(self, query: str | np.ndarray, k: int = ..., filters: dict[str, str] | None = ..., *,
               mode: str | None = ..., fusion: Fusion | None = ..., group: Literal[True],
               rerank: Reranker | None = ..., candidates: int = ..., colbert: bool = ...,
               rerank_weight: float | None = ...) -> list[DocumentHit]: ...

    def search(
        self,
        query: str | np.ndarray,
        k: int = 10,
        filters: dict[str, str] | None = None,
        *,
        mode: str | None = None,
        fusion: Fusion | None = None,
        group: bool = False,
        rerank: Reranker | None = None,
        candidates: int = 50,
        colbert: bool = False,
        rerank_weight: float | None = None,
    ) -> list[Hit] | list[DocumentHit]:
        """The ``k`` best chunks for ``query`` (``group``: the ``k`` best documents, each with its best chunk and
        its other matching chunks).

        ``mode``: "dense" (cosine; ``query`` may be a vector), "sparse" (BM25) or "hybrid" (both, fused by
        ``fusion``, default m3e.fusion's); None: hybrid when the index has a sparse side, else dense.
        ``filters``: metadata field -> value, all must match (on both sides). ``colbert``: re-score the best
        ``candidates`` with BGE-M3's dense + lexical + ColBERT score (an index built by BGE-M3); ``rerank``:
        reorder them with a cross-encoder (``rerank_weight``: its share when its score is fused with the retrieval
        score; default: what the reranker's directory recommends, else 1, its order alone). Re-scored hits keep
        their retrieval score and get ``rerank_score``, which orders them.
        """
        self._require_ready()
        if k < 1:
            raise M3EError(f"k must be at least 1, not {k}")
        resolved = self._resolve_mode(mode, query)
        rescoring = colbert or rerank is not None
        if rescoring and candidates < 1:
            raise M3EError(f"candidates must be at least 1, not {candidates}")
        want = k * CHUNKS_PER_DOCUMENT if group else k
        with damaged_data(self.path):
            hits = self._retrieve(query, max(want, candidates) if rescoring else want, filters, resolved, fusion)
        if colbert:
            hits = self._colbert_rescored(_text_query(query, "ColBERT re-scoring"), hits)
        if rerank is not None:
            hits = self._reranked(_text_query(query, "reranking"), hits, rerank, rerank_weight)
        return group_hits(hits, k) if group else hits[:k]

    def _resolve_mode(self, mode: str | None, query: str | np.ndarray) -> str:
        if mode is None:
            return self.default_mode if isinstance(query, str) else "dense"
        if mode not in MODES:
            raise M3EError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != "dense" and self.sparse is None:
            raise M3EError(f"{self.path} has no sparse side (built with --sparse none): search it with --mode dense")
        return mode

    def _retrieve(self, query: str | np.ndarray, n: int, filters: dict[str, str] | None, mode: str,
                  fusion: Fusion | None) -> list[Hit]:
        if mode == "dense":
            return self._dense_hits(query, n, filters)
        text = _text_query(query, f"{mode} search")
        if mode == "sparse":
            return self._sparse_hits(text, n, filters)
        depth = max(n, FUSION_DEPTH)
        return hybrid_hits(lambda: self._dense_hits(text, depth, filters),
                           lambda: self._sparse_hits(text, depth, filters), fusion)[:n]

    def _dense_hits(self, query: str | np.ndarray, n: int, filters: dict[str, str] | None) -> list[Hit]:
        if isinstance(query, str):
            vector = np.asarray(self.model.encode_queries([query], normalize=True, show_progress=False))[0]
        else:
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.meta["model"]["dim"]:
            raise M3EError(f"query vector has dim {vector.shape[0]}, the index {self.meta['model']['dim']}")
        return self.store.search(vector, n, filters)

    def _sparse_hits(self, text: str, n: int, filters: dict[str, str] | None) -> list[Hit]:
        params = self.sparse
        assert params is not None
        return self.store.search_sparse(_terms(text, params), n, filters)

    def _colbert_rescored(self, query: str, hits: list[Hit]) -> list[Hit]:
        from m3e.bge_m3 import M3_WEIGHTS, OUTPUTS

        if not hits:
            return []
        m3 = self.m3_model
        q = m3.encode_queries([query], output=OUTPUTS)
        p = m3.encode_documents([h.text for h in hits], output=OUTPUTS)
        assert q.dense is not None and q.lexical_weights is not None and q.colbert is not None
        assert p.dense is not None and p.lexical_weights is not None and p.colbert is not None
        w_dense, w_sparse, w_colbert = M3_WEIGHTS
        for i, hit in enumerate(hits):
            hit.colbert_score = m3.colbert_score(q.colbert[0], p.colbert[i])
            combined = (w_dense * float(q.dense[0] @ p.dense[i])
                        + w_sparse * m3.lexical_score(q.lexical_weights[0], p.lexical_weights[i])
                        + w_colbert * hit.colbert_score)
            hit.rerank_score = combined / (w_dense + w_sparse + w_colbert)
        return _by_rerank_score(hits)

    def _reranked(self, query: str, hits: list[Hit], rerank: Reranker, rerank_weight: float | None) -> list[Hit]:
        if not hits:
            return []
        weight = rerank_weight if rerank_weight is not None else rerank.rerank_weight
        activation = "identity" if weight is not None and weight < 1 else None  # fused: the logits' scale
        scores = [float(s) for s in rerank.predict([(query, h.text) for h in hits], activation=activation)]
        return reranked_hits(hits, scores, weight)

    def info(self) -> dict[str, Any]:
        return dict(self.meta, path=str(self.path))


_SPARSE_WORKERS: ThreadPoolExecutor | None = None


def hybrid_hits(dense: Callable[[], list[Hit]], sparse: Callable[[], list[Hit]],
                fusion: Fusion | None = None) -> list[Hit]:
    """Both sides' hits, fused. The sparse side runs in a worker thread while this one embeds the query and
    searches the vectors (the engines and torch release the GIL): faster than one side after the other on 100k
    chunks and 2 cores (bench/search.py, docs/benchmarks.md)."""
    global _SPARSE_WORKERS
    if _SPARSE_WORKERS is None:
        _SPARSE_WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="m3e-sparse")
    later = _SPARSE_WORKERS.submit(sparse)
    first = dense()
    return fused_hits(first, later.result(), fusion)


def fused_hits(dense: list[Hit], sparse: list[Hit], fusion: Fusion | None = None) -> list[Hit]:
    """One list of the two sides' hits, in the order of their fused scores; each hit keeps the score each
    side gave it (``dense_score``, ``sparse_score``) and gets the fused one as ``score``."""
    by_id: dict[str, Hit] = {}
    for hit in dense:
        by_id[hit.chunk_id] = hit
    for hit in sparse:
        if hit.chunk_id in by_id:
            by_id[hit.chunk_id].sparse_score = hit.sparse_score
        else:
            by_id[hit.chunk_id] = hit
    scores = fuse({h.chunk_id: h.score for h in dense}, {h.chunk_id: h.score for h in sparse}, fusion)
    out = []
    for chunk_id, score in scores.items():
        hit = by_id[chunk_id]
        hit.score = score
        out.append(hit)
    return out


def reranked_hits(hits: list[Hit], scores: Sequence[float], rerank_weight: float | None = None) -> list[Hit]:
    """The hits ordered by their second-stage score: the reranker's ``scores``, or with a ``rerank_weight``
    below 1 those (its raw logits: an activation would squash what min-max reads) fused with the retrieval
    scores (``m3e.fusion.fuse_rerank``); it becomes ``rerank_score``.
    The index's search and the server's reranked search both order hits here."""
    weight = 1.0 if rerank_weight is None else rerank_weight
    fused = fuse_rerank(
        {str(i): float(h.score) for i, h in enumerate(hits)}, {str(i): float(s) for i, s in enumerate(scores)}, weight
    )
    for key, value in fused.items():
        hits[int(key)].rerank_score = value
    return _by_rerank_score(hits)


def _by_rerank_score(hits: list[Hit]) -> list[Hit]:
    # Stable: the retrieval order breaks ties.
    return sorted(hits, key=lambda h: -(h.rerank_score if h.rerank_score is not None else float("-inf")))


def _text_query(query: str | np.ndarray, purpose: str) -> str:
    if not isinstance(query, str):
        raise M3EError(f"{purpose} needs the query's text, not a vector")
    return query


def _terms(text: str, params: BM25Params) -> list[str]:
    return lexical_terms(text, params.segmenter, stop_words=params.stop_words)


def _split_model(model: EmbeddingModel | BGEM3Model | None) -> tuple[EmbeddingModel | None, BGEM3Model | None]:
    """(dense model, BGE-M3 model) of what a caller gave: a BGE-M3 model brings its dense side."""
    if model is None:
        return None, None
    from m3e.bge_m3 import BGEM3Model

    if isinstance(model, BGEM3Model):
        return model.embedder, model
    return model, None


def _chunking(unit: str, size: int | None, overlap: int | None) -> tuple[int, int]:
    tokens = unit == "tokens"
    size = size if size is not None else (DEFAULT_TOKEN_CHUNK_SIZE if tokens else DEFAULT_CHUNK_SIZE)
    overlap = overlap if overlap is not None else (DEFAULT_TOKEN_OVERLAP if tokens else DEFAULT_OVERLAP)
    check_chunking(size, overlap, unit)
    return size, overlap


def records_bge_m3(meta: dict[str, Any]) -> bool:
    """Whether the index's recorded model source is a local BGE-M3 checkpoint."""
    from m3e.bge_m3 import is_bge_m3_dir

    source = meta["model"].get("source")
    return bool(source) and Path(source).is_dir() and is_bge_m3_dir(source)


def load_index_bge_m3(meta: dict[str, Any], path: Path) -> BGEM3Model:
    """The BGE-M3 model recorded in the index, for ColBERT re-scoring."""
    from m3e.bge_m3 import is_bge_m3_dir
    from m3e.loading import load_bge_m3, resolve_model_dir

    rec = meta["model"]
    source = rec.get("source")
    if not source:
        raise M3EError(f"{path} does not record where its model came from")
    try:
        model_dir, _ = resolve_model_dir(source)
    except M3EError as exc:
        raise M3EError(f"ColBERT re-scoring needs the BGE-M3 model that built {path}: {exc}") from exc
    if not is_bge_m3_dir(model_dir):
        raise M3EError(f"ColBERT re-scoring needs an index built by a BGE-M3 model; {path} was built by "
                       f"{rec.get('name')!r}")
    m3 = load_bge_m3(str(model_dir), query_prompt=rec["prompts"]["query"],
                     document_prompt=rec["prompts"]["document"], max_length=rec.get("max_length"))
    check_model(rec, m3.embedder, path)
    return m3


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
    engine: str, path: Path, *, url: str | None, collection: str | None, ann: str, sparse: bool
) -> dict[str, Any]:
    """The ``engine`` entry of a new index's metadata."""
    if engine == "lancedb":
        return {"name": engine, "path": "lance", "ann": ann, "sparse": sparse}
    if engine == "pgvector":
        from m3e.index.pgvector_store import check_url, table_name

        if not url:
            raise M3EError("--engine pgvector needs --url (postgresql://user@host:5432/database)")
        check_url(url)
        return {"name": engine, "url": url, "table": table_name(collection or path.name or "m3e"), "sparse": sparse}
    if not url:
        raise M3EError("--engine qdrant needs --url (http://host:6333, or a directory for local mode)")
    return {"name": engine, "url": url, "collection": collection or path.name or "m3e", "sparse": sparse}


def build_index(
    corpus: str | os.PathLike[str] | CorpusReader,
    out: str | os.PathLike[str],
    model: EmbeddingModel | BGEM3Model,
    *,
    model_source: str | None = None,
    overwrite: bool = False,
    resume: bool | None = None,
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    progress: bool | None = None,
    **create_kw: Any,
) -> tuple[Index, WriteReport]:
    """Build ``out`` from ``corpus``, or resume its unfinished build (``resume`` None: whenever there is one;
    False: an unfinished build is an error; True: resume one if there is one).

    A new build that fails with an error removes what it created (the directory, or the index files in a
    directory that held none), so the next attempt starts clean; one stopped by Ctrl-C, or killed, keeps
    its stored batches for a resume. A resumed build that fails keeps what was stored before.
    """
    reader = corpus if isinstance(corpus, CorpusReader) else CorpusReader(corpus)
    out = Path(out)
    if (out / META_NAME).exists() and not overwrite:
        meta = read_index_meta(out)
        if meta["state"]["status"] != "building":
            raise M3EError(f"{out} already holds a built index; use `m3e index add` or --overwrite")
        if resume is False:
            raise M3EError(f"{out} holds an unfinished build ({meta['state'].get('docs_done', 0)} documents "
                           "stored): --resume continues it, --overwrite starts again")
        resumed = Index.open(out, model=model)
        logger.info("resuming the build of %s after %s documents", out, meta["state"].get("docs_done", 0))
        return resumed, resumed.build_from(reader, batch_chunks=batch_chunks, progress=progress)
    created_dir = not out.exists()
    ours = created_dir or overwrite or not any(out.iterdir())  # what is in ``out`` after a failure is ours
    index: Index | None = None
    try:
        index = Index.create(out, model, model_source=model_source, overwrite=overwrite, **create_kw)
        return index, index.build_from(reader, batch_chunks=batch_chunks, progress=progress)
    except Exception as exc:
        fault = engine_os_error(exc, out)
        if index is not None:
            index.close()
        touched = out.exists() if created_dir else ((out / META_NAME).exists() or (out / "lance").exists())
        if not (ours and touched):  # refused before anything was written (a bad option), or not ours to remove
            if fault is exc:
                raise
            raise fault from exc
        _remove_new_index(out, created_dir)
        note = f"{out} was removed" if created_dir else f"the index files in {out} were removed"
        raise BuildFailed(fault, f"the failed build was not kept: {note}") from exc


class BuildFailed(M3EError):
    """A new index build failed and what it created was removed; ``cause`` is the original error (its exit
    status is kept: 2 for bad input, 1 for a fault)."""

    def __init__(self, cause: BaseException, removed: str) -> None:
        reason = describe_os_error(cause) if isinstance(cause, OSError) else str(cause)
        super().__init__(f"{reason}; {removed}")
        self.cause = cause
        self.exit_status = cause.exit_status if isinstance(cause, M3EError) else 1


def _remove_new_index(path: Path, created_dir: bool) -> None:
    if created_dir:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in (META_NAME, "lance", ".lock"):
        target = path / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
