"""The embedded default engine: a LanceDB table in the index directory.

Why LanceDB: no server; every write is a new table version committed atomically by
the Lance format, so an index operation made of several writes can be pinned to the last
committed version and rolled back after a crash; deletes, updates and SQL filters on
metadata columns are built in; exact search is fast enough up to ~100k chunks and an IVF
index takes over beyond that.

Readers open the version recorded in the index metadata (``state.version``), never the
table's latest, so writes in progress (or left by a crash) are invisible until the index
metadata moves to the new version.

The sparse side (``config["sparse"]``) is a ``terms`` column in the same table: each chunk's words
(m3e.lexical), space-separated, under Lance's own full-text index (BM25 with k1 1.2, b 0.75: the
formula of m3e.lexical; whitespace tokens, no stemming or stop words of its own). The index is
created with the empty table and is part of every table version, so a restore or a pinned read
covers both sides at once; rows added since its last update are searched unindexed until
``maintain`` (Lance's optimize) folds them in.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from m3e.errors import M3EError
from m3e.extras import require
from m3e.index.store import Hit, Row, filter_fields

if TYPE_CHECKING:
    from lancedb.db import DBConnection
    from lancedb.query import LanceVectorQueryBuilder
    from lancedb.table import Table

logger = logging.getLogger(__name__)

TABLE = "chunks"
FIELD_PREFIX = "f_"
# Below this many chunks exact search is fast enough (tens of ms) and needs no index.
ANN_MIN_ROWS = 50_000
# The ANN indexes `--ann` can ask for; "auto" picks by size (ann_kind). bench/scale.py measures each one's
# recall@10 and latency against exact search (docs/scaling.md).
ANN_KINDS = ("auto", "none", "ivf", "hnsw-sq", "ivf-pq")
# From this many chunks IVF-PQ (vectors compressed 32x, rescored in float32) takes over from IVF-HNSW-SQ.
PQ_MIN_ROWS = 5_000_000
_INDEX_TYPES = {"IvfFlat": "ivf", "IvfHnswSq": "hnsw-sq", "IvfPq": "ivf-pq"}  # lancedb's index_type names
_COLUMNS = ["chunk_id", "doc_id", "chunk", "start", "end", "text", "metadata", "_distance"]
_SPARSE_COLUMNS = [*_COLUMNS[:-1], "_score"]
TERMS = "terms"


def _quiet_lance() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="lancedb")


class LanceStore:
    def __init__(self, index_dir: str | Path, config: dict[str, Any], *, dim: int, create: bool = False,
                 committed: dict[str, Any] | None = None):
        _quiet_lance()
        lancedb = require("lancedb", purpose="the embedded index", extra="index")
        self.dim = int(dim)
        self.config = config
        self.sparse = bool(config.get("sparse"))
        self._ann: str | None = None  # the vector index this table has ("none" when it has none); None: not looked up
        self.path = Path(index_dir) / config.get("path", "lance")
        self.db: DBConnection = lancedb.connect(str(self.path))
        self.table: Table
        if create:
            import pyarrow as pa

            if TABLE in self._tables():
                self.db.drop_table(TABLE)
            self.table = self.db.create_table(TABLE, schema=self._schema(pa, []))
            if self.sparse:
                self._create_text_index()
        else:
            if TABLE not in self._tables():
                raise M3EError(f"{self.path}: no index table (was the index built?)")
            self.table = self.db.open_table(TABLE)
            if committed and committed.get("version") is not None:
                # Read the committed snapshot, not whatever an unfinished write left behind.
                self.table.checkout(int(committed["version"]))

    def _tables(self) -> list[str]:
        names = self.db.list_tables() if hasattr(self.db, "list_tables") else self.db.table_names()
        return list(getattr(names, "tables", names))

    def _schema(self, pa: Any, fields: Sequence[str]) -> Any:
        return pa.schema(
            [
                pa.field("chunk_id", pa.string()),
                pa.field("doc_id", pa.string()),
                pa.field("chunk", pa.int32()),
                pa.field("start", pa.int64()),
                pa.field("end", pa.int64()),
                pa.field("text", pa.string()),
                pa.field("metadata", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), self.dim)),
            ]
            + ([pa.field(TERMS, pa.string())] if self.sparse else [])
            + [pa.field(FIELD_PREFIX + f, pa.string()) for f in fields]
        )

    def _create_text_index(self) -> None:
        from lancedb.index import FTS

        # The words come segmented and normalised by m3e.lexical: Lance only splits them at spaces.
        config = FTS(base_tokenizer="whitespace", lower_case=False, stem=False, remove_stop_words=False,
                     ascii_folding=False, with_position=False, max_token_length=None)
        self.table.create_index(TERMS, config=config)

    def _fields(self) -> list[str]:
        return [n[len(FIELD_PREFIX):] for n in self.table.schema.names if n.startswith(FIELD_PREFIX)]

    # ------------------------------------------------------------------ transactions
    def state(self) -> dict[str, Any]:
        return {"version": int(self.table.version)}

    def begin(self, committed: dict[str, Any]) -> None:
        self._ann = None
        self.table.checkout_latest()
        version = committed.get("version")
        if version is not None and int(self.table.version) != int(version):
            logger.warning("index table has unfinished writes after version %s; rolling them back", version)
            self.table.restore(int(version))

    def commit(self) -> dict[str, Any]:
        return self.state()

    def rollback(self, committed: dict[str, Any]) -> None:
        version = committed.get("version")
        self.table.checkout_latest()
        if version is not None and int(self.table.version) != int(version):
            self.table.restore(int(version))

    # ------------------------------------------------------------------ writes
    def add(self, rows: Sequence[Row], vectors: np.ndarray) -> None:
        import pyarrow as pa

        if not rows:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dim):
            raise M3EError(f"expected vectors of shape {(len(rows), self.dim)}, got {vectors.shape}")
        per_row = [filter_fields(r.metadata) for r in rows]
        known = self._fields()
        new = sorted({k for f in per_row for k in f} - set(known))
        if new:
            # Schema evolution: earlier rows get NULL for a field first seen now.
            self.table.add_columns([pa.field(FIELD_PREFIX + f, pa.string()) for f in new])
            known = self._fields()
        data: dict[str, Any] = {
            "chunk_id": [r.chunk_id for r in rows],
            "doc_id": [r.doc_id for r in rows],
            "chunk": [r.chunk for r in rows],
            "start": [r.start for r in rows],
            "end": [r.end for r in rows],
            "text": [r.text for r in rows],
            "metadata": [_metadata_json(r.metadata) for r in rows],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dim),
        }
        if self.sparse:
            data[TERMS] = [" ".join(r.terms) for r in rows]
        for f in known:
            data[FIELD_PREFIX + f] = [p.get(f) for p in per_row]
        self.table.add(pa.table(data, schema=self._schema(pa, known)))

    def delete_docs(self, doc_ids: Sequence[str]) -> int:
        removed = 0
        for part in _parts(list(doc_ids), 500):
            where = f"doc_id IN ({', '.join(sql_string(d) for d in part)})"
            n = self.table.count_rows(where)
            if n:
                self.table.delete(where)
                removed += n
        return removed

    def existing_docs(self, doc_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for part in _parts(list(dict.fromkeys(doc_ids)), 500):
            where = f"doc_id IN ({', '.join(sql_string(d) for d in part)})"
            got = self.table.search().where(where).select(["doc_id"]).limit(None).to_arrow()
            found.update(got.column("doc_id").to_pylist())
        return found

    def maintain(self) -> bool:
        # Called right after a commit. Merges small fragments, adds new rows to the ANN index
        # and drops versions older than an hour: the committed version was written seconds
        # ago, so it survives, and an hour leaves readers of earlier versions time to finish.
        # (Never before a commit: pruning could then remove the version still committed.)
        before = int(self.table.version)
        self.table.optimize(cleanup_older_than=timedelta(hours=1))
        return int(self.table.version) != before

    def finish_build(self) -> None:
        n = self.count()
        self.maintain()
        kind = ann_kind(self.config.get("ann", "auto"), n, int(self.config.get("ann_min_rows", ANN_MIN_ROWS)))
        if kind == "none":
            return
        from lancedb.index import HnswSq, IvfFlat, IvfPq

        partitions = int(self.config.get("partitions") or max(1, round(math.sqrt(n))))
        config: Any
        if kind == "ivf":
            config = IvfFlat(distance_type="cosine", num_partitions=partitions)
        elif kind == "hnsw-sq":
            # One HNSW graph per partition; partitions of about a million vectors keep the graphs searchable.
            config = HnswSq(distance_type="cosine", num_partitions=max(1, round(n / 1_000_000)))
        else:
            sub_vectors = self.dim // 8 if self.dim % 8 == 0 else self.dim // 4 if self.dim % 4 == 0 else 1
            config = IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors)
        self.table.create_index("vector", config=config, replace=True)
        self._ann = kind

    # ------------------------------------------------------------------ reads
    def search(self, vector: np.ndarray, k: int, filters: dict[str, str] | None = None) -> list[Hit]:
        # A vector in, a vector query out; Table.search is annotated with the base of every query kind.
        found = self.table.search(np.asarray(vector, dtype=np.float32))
        vector_query = cast("LanceVectorQueryBuilder", found)
        query = vector_query.distance_type("cosine")
        if self._ann is None:
            types = [i.index_type for i in self.table.list_indices() if i.index_type != "FTS"]
            self._ann = _INDEX_TYPES.get(types[0], "ivf") if types else "none"
        if self._ann in ("ivf", "ivf-pq"):
            query = query.nprobes(int(self.config.get("nprobes", 32)))
        if self._ann == "ivf-pq":  # PQ's distances are approximate: the best k x refine_factor are rescored exactly
            query = query.refine_factor(int(self.config.get("refine_factor", 10)))
        elif self._ann == "hnsw-sq":
            query = query.ef(max(int(self.config.get("ef", 100)), k))
        if filters:
            query = query.where(self._where(filters), prefilter=True)
        table = query.select(_COLUMNS).limit(k).to_arrow()
        hits = []
        for rec in table.to_pylist():
            cosine = 1.0 - float(rec["_distance"])
            hits.append(_hit(rec, cosine, dense_score=cosine))
        return hits

    def search_sparse(self, terms: Sequence[str], k: int, filters: dict[str, str] | None = None) -> list[Hit]:
        if not self.sparse:
            raise M3EError("this index has no sparse side (it was built with --sparse none)")
        words = list(dict.fromkeys(t for t in terms if t))  # a repeated query word counts once
        if not words:
            return []
        query = self.table.search(" ".join(words), query_type="fts", fts_columns=TERMS)
        if filters:
            query = query.where(self._where(filters), prefilter=True)
        table = query.select(_SPARSE_COLUMNS).limit(k).to_arrow()
        return [_hit(rec, float(rec["_score"]), sparse_score=float(rec["_score"])) for rec in table.to_pylist()]

    def _where(self, filters: dict[str, str]) -> str:
        known = set(self._fields())
        unknown = [f for f in filters if f not in known]
        if unknown:
            raise M3EError(f"cannot filter on {unknown[0]!r}: no such metadata field "
                           f"(filterable: {', '.join(sorted(known)) or 'none'})")
        return " AND ".join(f"{FIELD_PREFIX}{f} = {sql_string(v)}" for f, v in filters.items())

    def count(self) -> int:
        return int(self.table.count_rows())

    def count_docs(self) -> int:
        return int(self.table.count_rows("chunk = 0"))

    def close(self) -> None:
        del self.table  # lancedb tables hold no handle to release; a closed store cannot be used again


def ann_kind(ann: str, n: int, min_rows: int = ANN_MIN_ROWS) -> str:
    """The vector index a table of ``n`` chunks gets for ``--ann``: exact search (none) below ``min_rows``,
    IVF-HNSW-SQ up to PQ_MIN_ROWS (recall near exact search, a byte per dimension in memory), IVF-PQ beyond."""
    if ann not in ANN_KINDS:
        raise M3EError(f"unknown ANN index {ann!r}; choose one of {', '.join(ANN_KINDS)}")
    if ann != "auto":
        return ann
    if n < min_rows:
        return "none"
    return "hnsw-sq" if n < PQ_MIN_ROWS else "ivf-pq"


def _hit(rec: dict[str, Any], score: float, **scores: float) -> Hit:
    return Hit(score=score, chunk_id=rec["chunk_id"], doc_id=rec["doc_id"], chunk=int(rec["chunk"]),
               start=int(rec["start"]), end=int(rec["end"]), text=rec["text"],
               metadata=json.loads(rec["metadata"] or "{}"), **scores)


def _metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str)


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _parts(items: list[str], size: int) -> list[list[str]]:
    return [items[i: i + size] for i in range(0, len(items), size)]
