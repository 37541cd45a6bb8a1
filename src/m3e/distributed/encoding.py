"""Encoding on a Ray cluster with Ray Data: an actor pool of m3e models.

Two entry points:

* :func:`encode_dataset` for people already in Ray: any Ray Dataset with a text column in, the same
  Dataset with an ``embedding`` column out (lazy, like every Ray Data transform). Each actor loads the model
  once (its backend, its threads) and encodes its batches in length-sorted, token-budgeted sub-batches.
* :func:`encode_shards` behind ``m3e encode --ray`` and ``m3e index build --ray``: a glob of input files in,
  one parquet part per file out (:mod:`m3e.distributed.shards`), resumable by shard and exactly once however
  workers die. Ray Data schedules the shards over the actor pool and restarts a dead actor (its shard runs
  again: the part is written whole or not at all).

Why shards and not Ray Data's own writers: they name files by write task, so neither a re-run nor a retried
task can tell which input rows a file holds; a part per input file can (see docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3e.atomic import atomic_output
from m3e.distributed.shards import (
    SOURCE_KEY,
    check_run,
    fingerprint,
    finished,
    list_shards,
    part_name,
    remove_stale_temporaries,
)
from m3e.errors import M3EError
from m3e.extras import require

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from m3e.index.corpus import Document
    from m3e.model import EmbeddingModel

logger = logging.getLogger(__name__)

SIDES = ("query", "document")


@dataclass(frozen=True)
class EncodeSpec:
    """How each actor loads its model, reads a shard and encodes it."""

    model: str | None = None  # name or path; None: the default model (every node must have it)
    backend: str = "torch"
    threads: int = 1  # torch threads per actor (and the CPUs Ray reserves for it)
    side: str | None = None  # "query" / "document": the model's prompt for that side
    prompt: str | None = None  # or a literal prefix
    normalize: bool = True
    batch_size: int | None = None  # texts per forward pass (the model's default when None)
    max_batch_tokens: int | None = None  # padded tokens per forward pass
    max_length: int | None = None
    pooling: str | None = None  # the checkpoint's when None
    query_prompt: str | None = None  # the model's prompts when None
    document_prompt: str | None = None
    long_text: str = "truncate"
    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: tuple[str, ...] | None = None
    fmt: str | None = None  # input format; None: from each file's suffix
    encoding: str = "utf-8"  # of text inputs
    keep_text: bool = False  # write the text beside its vector
    # Index chunks instead of whole records (m3e index build --ray): the index's chunking and sparse side.
    chunking: dict[str, Any] | None = None
    sparse: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        """What decides the vectors and rows a part holds (not threads or batch sizes)."""
        out = asdict(self)
        for key in ("threads", "batch_size", "max_batch_tokens"):
            out.pop(key)
        out["metadata_fields"] = list(self.metadata_fields) if self.metadata_fields is not None else None
        return out


def load_spec_model(spec: EncodeSpec) -> EmbeddingModel:
    """The model as an actor runs it: ``spec.threads`` threads for torch and for the backends (ONNX Runtime,
    OpenVINO), which read M3E_NUM_THREADS when they load; an actor's process is its own, so setting it is safe."""
    import torch

    from m3e.loading import load_model

    os.environ["M3E_NUM_THREADS"] = str(max(1, spec.threads))
    torch.set_num_threads(max(1, spec.threads))
    return load_model(spec.model, backend=spec.backend, max_length=spec.max_length, pooling=spec.pooling,
                      query_prompt=spec.query_prompt, document_prompt=spec.document_prompt)


def encode_texts(model: EmbeddingModel, texts: Sequence[str], spec: EncodeSpec) -> np.ndarray:
    """The vectors `m3e encode` gives these texts with the same options."""
    kwargs: dict[str, Any] = {"batch_size": spec.batch_size, "normalize": spec.normalize, "show_progress": False,
                              "long_text": spec.long_text, "max_batch_tokens": spec.max_batch_tokens}
    if not texts:
        return np.zeros((0, model.dim), dtype=np.float32)
    if spec.side == "query":
        out = model.encode_queries(list(texts), **kwargs)
    elif spec.side == "document":
        out = model.encode_documents(list(texts), **kwargs)
    else:
        out = model.encode(list(texts), prompt=spec.prompt, **kwargs)
    return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), int(vectors.shape[1]))


class ShardEncoder:
    """A Ray Data actor: each call gets shard paths, writes each shard's part, returns one report row per shard."""

    def __init__(self, spec: EncodeSpec, out_dir: str) -> None:
        self.spec = spec
        self.out_dir = Path(out_dir)
        self.model = load_spec_model(spec)
        import ray.util

        self.node = ray.util.get_node_ip_address() or socket.gethostname()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports: dict[str, list[Any]] = {"shard": [], "part": [], "rows": [], "seconds": [], "pid": [],
                                         "node": [], "error": [], "started": [], "finished": []}
        for shard in batch["shard"]:
            reports["started"].append(time.time())  # wall clock: comparable across the processes of one machine
            t0 = time.perf_counter()
            try:
                part, rows = self.encode_shard(Path(str(shard)))
                error = ""
            except M3EError as exc:  # bad input: its one line (file and line) goes back to the driver as text
                part, rows, error = "", 0, str(exc)
            reports["error"].append(error)
            reports["shard"].append(str(shard))
            reports["part"].append(part)
            reports["rows"].append(rows)
            reports["seconds"].append(time.perf_counter() - t0)
            reports["finished"].append(time.time())
            reports["pid"].append(os.getpid())
            reports["node"].append(self.node)
        return {k: np.asarray(v) for k, v in reports.items()}

    def encode_shard(self, shard: Path) -> tuple[str, int]:
        import pyarrow.parquet as pq

        source = fingerprint(shard)  # before reading: a file changed while it is read is encoded again next run
        docs = list(self._documents(shard))
        table = self._chunk_table(docs) if self.spec.chunking else self._record_table(docs)
        meta = {SOURCE_KEY: json.dumps(source).encode("utf-8")}
        table = table.replace_schema_metadata(meta)
        target = self.out_dir / part_name(shard)
        with atomic_output(target) as tmp:
            pq.write_table(table, tmp)
        return target.name, int(table.num_rows)

    def _documents(self, shard: Path) -> Iterator[Document]:
        from m3e.index.corpus import CorpusReader

        spec = self.spec
        fields = list(spec.metadata_fields) if spec.metadata_fields is not None else None
        yield from CorpusReader(shard, id_field=spec.id_field, text_field=spec.text_field, metadata_fields=fields,
                                fmt=spec.fmt, encoding=spec.encoding)

    def _record_table(self, docs: list[Document]) -> pa.Table:
        import pyarrow as pa

        vectors = encode_texts(self.model, [d.text for d in docs], self.spec)
        if not docs:
            vectors = np.zeros((0, self.model.dim), dtype=np.float32)
        columns: dict[str, Any] = {
            "id": pa.array([d.id for d in docs], pa.string()),
            "line": pa.array([d.line for d in docs], pa.int64()),
            "metadata": pa.array([json.dumps(d.metadata, ensure_ascii=False, sort_keys=True, default=str)
                                  for d in docs], pa.string()),
        }
        if self.spec.keep_text:
            columns["text"] = pa.array([d.text for d in docs], pa.string())
        columns["embedding"] = vector_column(vectors)
        return pa.table(columns)

    def _chunk_table(self, docs: list[Document]) -> pa.Table:
        import pyarrow as pa

        from m3e.index.chunking import chunk_document, chunk_document_by_tokens
        from m3e.lexical import lexical_terms

        chunking, sparse = self.spec.chunking or {}, self.spec.sparse
        size, overlap = int(chunking["size"]), int(chunking["overlap"])
        rows: dict[str, list[Any]] = {k: [] for k in ("chunk_id", "doc_id", "chunk", "start", "end", "text",
                                                      "metadata", "terms", "line")}
        for doc in docs:
            if chunking.get("unit") == "tokens":
                chunks = chunk_document_by_tokens(doc.id, doc.text, size, overlap, self.model.tokenizer)
            else:
                chunks = chunk_document(doc.id, doc.text, size, overlap)
            metadata = json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True, default=str)
            for c in chunks:
                rows["chunk_id"].append(c.chunk_id)
                rows["doc_id"].append(c.doc_id)
                rows["chunk"].append(c.chunk)
                rows["start"].append(c.start)
                rows["end"].append(c.end)
                rows["text"].append(c.text)
                rows["metadata"].append(metadata)
                rows["line"].append(doc.line)
                rows["terms"].append(lexical_terms(c.text, sparse["segmenter"], stop_words=sparse["stop_words"])
                                     if sparse else [])
        vectors = np.zeros((0, self.model.dim), dtype=np.float32)
        if rows["text"]:  # as Index encodes its chunks: documents, unit length
            vectors = np.asarray(self.model.encode_documents(rows["text"], normalize=True, show_progress=False,
                                                             batch_size=self.spec.batch_size,
                                                             max_batch_tokens=self.spec.max_batch_tokens),
                                 dtype=np.float32).reshape(len(rows["text"]), -1)
        types = {"chunk_id": pa.string(), "doc_id": pa.string(), "chunk": pa.int32(), "start": pa.int64(),
                 "end": pa.int64(), "text": pa.string(), "metadata": pa.string(), "terms": pa.list_(pa.string()),
                 "line": pa.int64()}
        table = pa.table({k: pa.array(v, types[k]) for k, v in rows.items()})
        return table.append_column("embedding", vector_column(vectors))


class TextEncoder:
    """A Ray Data actor for :func:`encode_dataset`: a batch (pyarrow) in, the batch with its vectors out."""

    def __init__(self, spec: EncodeSpec, model: EmbeddingModel | None, text_column: str, output_column: str):
        self.spec = spec
        if model is not None:
            import torch

            torch.set_num_threads(max(1, spec.threads))
            self.model = model
        else:
            self.model = load_spec_model(spec)
        self.text_column = text_column
        self.output_column = output_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise M3EError(f"column {self.text_column!r} holds a {type(texts[bad]).__name__}, expected text")
        return batch.append_column(self.output_column, vector_column(encode_texts(self.model, texts, self.spec)))


def encode_dataset(
    ds: ray.data.Dataset,
    model: str | EmbeddingModel | None = None,
    *,
    text_column: str = "text",
    output_column: str = "embedding",
    actors: int = 1,
    threads: int = 1,
    batch_rows: int = 1024,
    spec: EncodeSpec | None = None,
    **options: Any,
) -> ray.data.Dataset:
    """``ds`` with an ``output_column`` of vectors (float32, fixed-size lists): an actor pool of ``actors`` m3e
    models, ``threads`` torch threads each, ``batch_rows`` rows per Ray batch. ``model`` is a name or path
    each actor loads (every node must reach it) or a loaded model shipped to the actors. ``options`` are
    :class:`EncodeSpec` fields (backend, side, prompt, normalize, batch_size, max_batch_tokens, ...)."""
    if spec is None:
        spec = EncodeSpec(model=model if isinstance(model, str) else None, threads=threads, **options)
    loaded = None if model is None or isinstance(model, str) else model
    return ds.map_batches(
        TextEncoder,
        fn_constructor_kwargs={"spec": spec, "model": loaded, "text_column": text_column,
                               "output_column": output_column},
        batch_size=batch_rows, batch_format="pyarrow", compute=_pool(actors), num_cpus=spec.threads,
    )


def _pool(actors: int) -> Any:
    import ray.data

    return ray.data.ActorPoolStrategy(size=max(1, actors))


@dataclass
class EncodeReport:
    shards: int = 0  # input files
    skipped: int = 0  # already encoded by an earlier run
    encoded: int = 0  # encoded by this run
    rows: int = 0  # rows written by this run
    seconds: float = 0.0
    parts: list[str] = field(default_factory=list)  # the parts this run wrote

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: $RAY_ADDRESS, a cluster started on this machine, or a new
    local one); nothing when this process is already connected."""
    ray = require("ray", purpose="encoding on a Ray cluster", extra="ray")
    if ray.is_initialized():
        return
    try:
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True)
    except (ConnectionError, ValueError) as exc:
        raise M3EError(f"cannot join the Ray cluster at {address or 'the default address'}: {exc}") from exc
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per shard instead
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know


def _find_m3e_error(exc: BaseException) -> M3EError | None:
    """The m3e error (bad input: file and line) inside Ray's wrappers, if that is what failed."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, M3EError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


ProgressFn = Callable[[dict[str, Any], EncodeReport, int], None]


def print_progress(row: dict[str, Any], report: EncodeReport, pending: int) -> None:
    rate = report.rows_per_s
    left = pending - report.encoded
    print(f"shard {report.encoded}/{pending} {Path(row['shard']).name}: {row['rows']} rows in "
          f"{row['seconds']:.1f} s on {row['node']}; {report.rows} rows, {rate:,.0f} rows/s"
          + (f", {left} shards to go" if left else ""), file=sys.stderr, flush=True)


def encode_shards(
    inputs: str | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    spec: EncodeSpec,
    *,
    address: str | None = None,
    actors: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = print_progress,
) -> EncodeReport:
    """Encode every input file not encoded yet into ``out`` (one parquet part each) on the Ray cluster at
    ``address``; ``actors`` models (default: the cluster's CPUs / ``spec.threads``)."""
    shards = list_shards(inputs) if isinstance(inputs, str) else [Path(p).resolve() for p in inputs]
    out_dir = Path(out)
    check_run(out_dir, spec.settings(), overwrite)
    pending = [s for s in shards if not finished(out_dir, s)]
    report = EncodeReport(shards=len(shards), skipped=len(shards) - len(pending))
    if not pending:
        return report
    connect(address)
    import ray
    import ray.data

    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // max(1, spec.threads)))
    actors = max(1, min(actors, len(pending)))
    # Every actor loads its model before shards are dealt: they spread over the nodes, and a slow start on one
    # node does not leave the whole run to another.
    ray.data.DataContext.get_current().wait_for_min_actors_s = 600
    items = ray.data.from_items([{"shard": str(s)} for s in pending], override_num_blocks=len(pending))
    done = items.map_batches(ShardEncoder, fn_constructor_kwargs={"spec": spec, "out_dir": str(out_dir)},
                             batch_size=1, batch_format="numpy", compute=_pool(actors), num_cpus=spec.threads)
    t0 = time.perf_counter()
    try:
        for row in done.iter_rows():
            if row["error"]:
                raise M3EError(str(row["error"]))
            report.encoded += 1
            report.rows += int(row["rows"])
            report.parts.append(str(row["part"]))
            report.seconds = time.perf_counter() - t0
            if progress is not None:
                progress(row, report, len(pending))
    except Exception as exc:
        cause = _find_m3e_error(exc)
        if cause is not None:
            raise cause from None
        raise
    report.seconds = time.perf_counter() - t0
    remove_stale_temporaries(out_dir)
    return report
