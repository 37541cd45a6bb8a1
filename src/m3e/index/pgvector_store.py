"""The database engine: a PostgreSQL table with the pgvector extension, by URL (``--engine pgvector``).

Why PostgreSQL: many users already run it (backups, replicas, access control, monitoring), and pgvector
gives it HNSW vector search beside SQL. m3e creates the table and its indexes, writes in batches
(COPY into a staging table, then one INSERT), filters metadata in SQL and keeps the sparse side in the same
row.

Snapshots, as the embedded engine has them: every row carries the write generation that added it (``gen``)
and, once deleted, the one that deleted it (``dropped``). The index metadata records the last committed
generation, and every read sees exactly the rows of that generation: added at or before it, not dropped at
or before it. So an add whose database transaction committed but whose index.json did not (a crash between
the two) stays invisible, and the next writer's :meth:`begin` removes its rows and restores what it dropped.
Within that window Postgres's own transactions already make each write all-or-nothing: a writer killed
mid-add (kill -9) leaves nothing behind. Rows dropped by a committed generation are purged by
:meth:`maintain`, right after the commit.

The sparse side is Postgres full-text search's own types: each chunk's words (m3e.lexical, already
segmented, so Chinese works) as a ``tsvector`` with positions, under a GIN index. Postgres's ``ts_rank`` is
not BM25, so the score is BM25 computed in SQL (k1 1.2, b 0.75, Lucene's idf: the formula of m3e.lexical)
from each word's positions (its term frequency), the chunk's word count and the live collection's
statistics, kept per generation in a second table. A chunk keeps at most 256 positions per word
(Postgres's limit), far above what a chunk of a few hundred characters holds.

Dense search orders by pgvector's cosine distance under the HNSW index (``hnsw.ef_search`` from the
index's ``ef_search``, default 100). A filtered search is exact instead: it orders the rows that pass
the filter by distance, so it returns ``k`` hits whenever ``k`` rows match (pgvector 0.6 filters HNSW
results after the fact and could return fewer).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from m3e.errors import M3EError
from m3e.extras import require
from m3e.index.store import Hit, Row, filter_fields
from m3e.lexical import K1, B

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

logger = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")
MAX_POSITION = 16383  # the largest position a tsvector keeps
DEFAULT_EF_SEARCH = 100
_COLUMNS = "chunk_id, doc_id, chunk, start_char, end_char, text, metadata"
_OWNER = "m3e index at "  # the table's comment: which index directory it belongs to


def table_name(name: str) -> str:
    """A safe table name derived from ``name`` (an index directory's name, or what --collection gave)."""
    cleaned = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "m3e"
    if not cleaned[0].isalpha():
        cleaned = "m3e_" + cleaned
    return cleaned[:50]


def check_url(url: str) -> None:
    """A postgresql:// URL without a password: the URL is recorded in index.json, the password is not."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise M3EError(f"--engine pgvector needs a postgresql:// URL, not {url!r}")
    if parts.password:
        raise M3EError("the pgvector URL is recorded in index.json: give the password in $PGPASSWORD or "
                       "~/.pgpass, not in the URL")


def tsvector_literal(terms: Sequence[str]) -> str:
    """The words of a chunk as tsvector input: each distinct word quoted, with its positions (1-based)."""
    positions: dict[str, list[int]] = {}
    for i, term in enumerate(terms, start=1):
        positions.setdefault(term, []).append(min(i, MAX_POSITION))
    return " ".join(f"{_quoted(t)}:{','.join(map(str, p[:256]))}" for t, p in positions.items())


def tsquery_literal(term: str) -> str:
    return _quoted(term)


def _quoted(term: str) -> str:
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class PgVectorStore:
    def __init__(self, index_dir: str | Path, config: dict[str, Any], *, dim: int, create: bool = False,
                 committed: dict[str, Any] | None = None):
        psycopg_module = require("psycopg", purpose="the pgvector engine", extra="pgvector")
        from psycopg import sql

        self.dim = int(dim)
        self.config = config
        self.sparse = bool(config.get("sparse"))
        url = config.get("url")
        if not url:
            raise M3EError("the pgvector engine needs --url postgresql://user@host:5432/database")
        check_url(url)
        name = config.get("table") or "m3e"
        if not _IDENTIFIER.match(name):
            raise M3EError(f"{name!r} is not a table name m3e uses (lowercase letters, digits and _)")
        self.name = name
        self.table = sql.Identifier(name)
        self.gens = sql.Identifier(f"{name}_gens")
        try:
            self.conn: psycopg.Connection[Any] = psycopg_module.connect(url)
        except psycopg_module.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise M3EError(f"cannot connect to PostgreSQL at {url}: {first}") from exc
        self._writing = False
        self._pending: dict[str, Any] = {"chunks": 0, "docs": 0, "terms": 0, "fields": set()}
        if create:
            self._create(str(Path(index_dir).resolve()))
            self._committed = 0
        else:
            if not self._exists():
                raise M3EError(f"PostgreSQL table {name!r} does not exist at {url} (was the index built?)")
            self._committed = int((committed or {}).get("generation", self._latest_generation()))
        self._gen = self._committed + 1
        self._end_read()

    # ------------------------------------------------------------------ schema
    def _q(self, template: str) -> sql.Composed:
        from psycopg import sql

        names = {part: sql.Identifier(f"{self.name}_{part}") for part in ("hnsw", "tsv", "doc", "fields")}
        return sql.SQL(template).format(t=self.table, gens=self.gens, **names)

    def _exists(self) -> bool:
        row = self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.name,)).fetchone()
        return bool(row and row[0])

    def _owner(self) -> str | None:
        """The index directory a table was created for (its comment), or None for a table m3e did not create."""
        row = self.conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (self.name,)).fetchone()
        comment = row[0] if row else None
        return comment.removeprefix(_OWNER) if comment and comment.startswith(_OWNER) else None

    def _create(self, index_dir: str) -> None:
        c = self.conn
        if self._exists():
            # A table is replaced only by a new build of the index it belongs to: two index directories with the
            # same name would otherwise share (and the second would wipe) one table.
            owner = self._owner()
            if owner != index_dir:
                held = f"the index at {owner}" if owner else "data m3e did not create"
                raise M3EError(f"PostgreSQL table {self.name!r} already holds {held}; name another table with "
                               "--collection")
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute(self._q("DROP TABLE IF EXISTS {t}, {gens}"))
        c.execute(self._q(
            "CREATE TABLE {t} (id bigserial PRIMARY KEY, chunk_id text NOT NULL, doc_id text NOT NULL, "
            "chunk integer NOT NULL, start_char bigint NOT NULL, end_char bigint NOT NULL, text text NOT NULL, "
            "metadata jsonb NOT NULL, fields jsonb NOT NULL, n_terms integer NOT NULL, tsv tsvector, "
            f"embedding vector({self.dim}) NOT NULL, gen bigint NOT NULL, dropped bigint)"
        ))
        c.execute(self._q("CREATE INDEX {doc} ON {t} (doc_id)"))
        c.execute(self._q("CREATE INDEX {fields} ON {t} USING gin (fields jsonb_path_ops)"))
        if self.sparse:
            c.execute(self._q("CREATE INDEX {tsv} ON {t} USING gin (tsv)"))
        # One row per committed generation: the live collection's counts (BM25 needs N and the average length).
        c.execute(self._q("CREATE TABLE {gens} (gen bigint PRIMARY KEY, chunks bigint NOT NULL, docs bigint NOT NULL, "
                          "terms bigint NOT NULL, fields text[] NOT NULL)"))
        c.execute(self._q("INSERT INTO {gens} VALUES (0, 0, 0, 0, '{{}}')"))
        from psycopg import sql

        c.execute(sql.SQL("COMMENT ON TABLE {t} IS {owner}").format(t=self.table, owner=sql.Literal(_OWNER + index_dir)))
        c.commit()

    def _latest_generation(self) -> int:
        row = self.conn.execute(self._q("SELECT max(gen) FROM {gens}")).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _stats(self, gen: int) -> tuple[int, int, int, list[str]]:
        row = self.conn.execute(self._q("SELECT chunks, docs, terms, fields FROM {gens} WHERE gen <= %s "
                                        "ORDER BY gen DESC LIMIT 1"), (gen,)).fetchone()
        if row is None:
            return 0, 0, 0, []
        return int(row[0]), int(row[1]), int(row[2]), list(row[3])

    def _end_read(self) -> None:
        # A read outside a write ends its transaction, so an idle server holds no snapshot open.
        if not self._writing:
            self.conn.rollback()

    # ------------------------------------------------------------------ transactions
    def state(self) -> dict[str, Any]:
        return {"generation": self._committed}

    def begin(self, committed: dict[str, Any]) -> None:
        self.conn.rollback()
        base = int(committed.get("generation", 0))
        # Undo what a writer left after the last commit of the index (its rows, its deletions, its counts).
        removed = self.conn.execute(self._q("DELETE FROM {t} WHERE gen > %s"), (base,)).rowcount
        restored = self.conn.execute(self._q("UPDATE {t} SET dropped = NULL WHERE dropped > %s"), (base,)).rowcount
        self.conn.execute(self._q("DELETE FROM {gens} WHERE gen > %s"), (base,))
        if removed or restored:
            logger.warning("index table had unfinished writes after generation %s; rolled them back", base)
        self._committed = base
        self._gen = base + 1
        chunks, docs, terms, fields = self._stats(base)
        self._pending = {"chunks": chunks, "docs": docs, "terms": terms, "fields": set(fields)}
        self._writing = True

    def commit(self) -> dict[str, Any]:
        if self._writing:
            p = self._pending
            self.conn.execute(self._q("INSERT INTO {gens} VALUES (%s, %s, %s, %s, %s)"),
                              (self._gen, p["chunks"], p["docs"], p["terms"], sorted(p["fields"])))
            self.conn.commit()
            self._committed = self._gen
            self._gen += 1  # later writes of the same operation belong to the next generation
            self._writing = False
        return self.state()

    def rollback(self, committed: dict[str, Any]) -> None:
        self.conn.rollback()
        self._writing = False
        self._committed = int(committed.get("generation", self._committed))
        self._gen = self._committed + 1

    # ------------------------------------------------------------------ writes
    def _start_writing(self) -> None:
        # After a commit, the operation's next write opens the next generation's transaction.
        if not self._writing:
            self.conn.rollback()
            chunks, docs, terms, fields = self._stats(self._committed)
            self._pending = {"chunks": chunks, "docs": docs, "terms": terms, "fields": set(fields)}
            self._writing = True

    def add(self, rows: Sequence[Row], vectors: np.ndarray) -> None:
        if not rows:
            return
        self._start_writing()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dim):
            raise M3EError(f"expected vectors of shape {(len(rows), self.dim)}, got {vectors.shape}")
        columns = ("chunk_id, doc_id, chunk, start_char, end_char, text, metadata, fields, n_terms, tsv, "
                   "embedding, gen")
        c = self.conn
        c.execute(self._q("CREATE TEMP TABLE IF NOT EXISTS m3e_staging (LIKE {t} INCLUDING DEFAULTS) "
                          "ON COMMIT DELETE ROWS"))
        with c.cursor() as cur, cur.copy(self._q(f"COPY m3e_staging ({columns}) FROM STDIN")) as copy:
            for row, vector in zip(rows, vectors, strict=True):
                fields = filter_fields(row.metadata)
                self._pending["fields"].update(fields)
                copy.write_row((
                    row.chunk_id, row.doc_id, row.chunk, row.start, row.end, row.text,
                    json.dumps(row.metadata, ensure_ascii=False, sort_keys=True, default=str),
                    json.dumps(fields, ensure_ascii=False, sort_keys=True), len(row.terms),
                    tsvector_literal(row.terms) if self.sparse else None, vector_literal(vector), self._gen,
                ))
        c.execute(self._q(f"INSERT INTO {{t}} ({columns}) SELECT {columns} FROM m3e_staging"))
        c.execute("TRUNCATE m3e_staging")
        p = self._pending
        p["chunks"] += len(rows)
        p["docs"] += sum(1 for r in rows if r.chunk == 0)
        p["terms"] += sum(len(r.terms) for r in rows)

    def delete_docs(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        self._start_writing()
        dropped = self.conn.execute(
            self._q("UPDATE {t} SET dropped = %s WHERE doc_id = ANY(%s) AND dropped IS NULL "
                    "RETURNING chunk, n_terms"), (self._gen, list(doc_ids))).fetchall()
        p = self._pending
        p["chunks"] -= len(dropped)
        p["docs"] -= sum(1 for chunk, _ in dropped if chunk == 0)
        p["terms"] -= sum(int(n) for _, n in dropped)
        return len(dropped)

    def existing_docs(self, doc_ids: Sequence[str]) -> set[str]:
        if not doc_ids:
            return set()
        where, params = self._visible()
        found = self.conn.execute(self._q(f"SELECT DISTINCT doc_id FROM {{t}} WHERE doc_id = ANY(%s) AND {where}"),
                                  (list(dict.fromkeys(doc_ids)), *params)).fetchall()
        self._end_read()
        return {r[0] for r in found}

    def finish_build(self) -> None:
        """The HNSW index over the built table (faster to build once than to grow row by row)."""
        c = self.conn
        c.execute(f"SET maintenance_work_mem = '{int(self.config.get('maintenance_work_mem_mb', 512))}MB'")
        m, ef = int(self.config.get("m", 16)), int(self.config.get("ef_construction", 64))
        c.execute(self._q(f"CREATE INDEX IF NOT EXISTS {{hnsw}} ON {{t}} USING hnsw (embedding vector_cosine_ops) "
                          f"WITH (m = {m}, ef_construction = {ef})"))
        c.execute("RESET maintenance_work_mem")
        c.commit()

    def maintain(self) -> bool:
        # Right after a commit: rows dropped by a committed generation are gone for every reader of it or later.
        self.conn.execute(self._q("DELETE FROM {t} WHERE dropped <= %s"), (self._committed,))
        self.conn.commit()
        return False  # the committed generation (the state) is unchanged

    # ------------------------------------------------------------------ reads
    def _visible(self) -> tuple[str, tuple[int, ...]]:
        """The rows a read sees: the writer's own (uncommitted) rows while writing, else the committed ones."""
        gen = self._gen if self._writing else self._committed
        return "gen <= %s AND (dropped IS NULL OR dropped > %s)", (gen, gen)

    def _filter(self, filters: dict[str, str] | None) -> tuple[str, tuple[Any, ...]]:
        if not filters:
            return "", ()
        known = set(self._stats(self._committed if not self._writing else self._gen)[3])
        if self._writing:
            known |= self._pending["fields"]
        unknown = [f for f in filters if f not in known]
        if unknown:
            self._end_read()
            raise M3EError(f"cannot filter on {unknown[0]!r}: no such metadata field "
                           f"(filterable: {', '.join(sorted(known)) or 'none'})")
        return " AND fields @> %s::jsonb", (json.dumps(filters, ensure_ascii=False),)

    def search(self, vector: np.ndarray, k: int, filters: dict[str, str] | None = None) -> list[Hit]:
        query = vector_literal(np.asarray(vector, dtype=np.float32).reshape(-1))
        where, params = self._visible()
        flt, flt_params = self._filter(filters)
        # Ordered by the bare distance, the HNSW index answers; "+ 0" makes it an expression the index does not
        # serve, so a filtered search sorts every matching row (exact, never fewer than k hits).
        order = "(embedding <=> %s::vector) + 0" if filters else "embedding <=> %s::vector"
        self.conn.execute(f"SET hnsw.ef_search = {max(int(self.config.get('ef_search', DEFAULT_EF_SEARCH)), k)}")
        rows = self.conn.execute(
            self._q(f"SELECT {_COLUMNS}, 1 - (embedding <=> %s::vector) FROM {{t}} WHERE {where}{flt} "
                    f"ORDER BY {order} LIMIT %s"),
            (query, *params, *flt_params, query, k)).fetchall()
        self._end_read()
        return [_hit(r, float(r[7]), dense_score=float(r[7])) for r in rows]

    def search_sparse(self, terms: Sequence[str], k: int, filters: dict[str, str] | None = None) -> list[Hit]:
        if not self.sparse:
            raise M3EError("this index has no sparse side (it was built with --sparse none)")
        words = list(dict.fromkeys(t for t in terms if t))  # a repeated query word counts once
        if not words:
            return []
        where, params = self._visible()
        flt, flt_params = self._filter(filters)
        gen = self._gen if self._writing else self._committed
        chunks, _, total_terms, _ = self._stats(gen)
        if self._writing:
            chunks, total_terms = self._pending["chunks"], self._pending["terms"]
        avgdl = max(total_terms / chunks, 1e-9) if chunks else 1.0
        any_word = " | ".join(tsquery_literal(w) for w in words)
        statement = self._q(
            "WITH q AS (SELECT w.word, w.query::tsquery AS query FROM unnest(%s::text[], %s::text[]) AS w(word, query)), "
            "idf AS (SELECT q.word, ln(1 + (%s - d.n + 0.5) / (d.n + 0.5)) AS idf FROM q, LATERAL "
            f"(SELECT count(*)::float8 AS n FROM {{t}} WHERE tsv @@ q.query AND {where}) d), "
            f"cand AS (SELECT id, n_terms, tsv FROM {{t}} WHERE tsv @@ %s::tsquery AND {where}{flt}), "
            "scored AS (SELECT c.id, sum(idf.idf * u.tf * (%s + 1) / (u.tf + %s * (1 - %s + %s * c.n_terms / %s))) "
            "AS score FROM cand c, LATERAL (SELECT lexeme, cardinality(positions)::float8 AS tf FROM unnest(c.tsv)) u "
            "JOIN idf ON idf.word = u.lexeme GROUP BY c.id) "
            f"SELECT {_COLUMNS}, s.score FROM scored s JOIN {{t}} USING (id) ORDER BY s.score DESC, chunk_id LIMIT %s"
        )
        rows = self.conn.execute(statement, (
            words, [tsquery_literal(w) for w in words], float(chunks), *params, any_word, *params, *flt_params,
            K1, K1, B, B, avgdl, k,
        )).fetchall()
        self._end_read()
        return [_hit(r, float(r[7]), sparse_score=float(r[7])) for r in rows]

    def count(self) -> int:
        if self._writing:
            return int(self._pending["chunks"])
        n = self._stats(self._committed)[0]
        self._end_read()
        return n

    def count_docs(self) -> int:
        if self._writing:
            return int(self._pending["docs"])
        n = self._stats(self._committed)[1]
        self._end_read()
        return n

    def close(self) -> None:
        self.conn.close()  # an unfinished write transaction is rolled back by the server


def _hit(rec: tuple[Any, ...], score: float, **scores: float) -> Hit:
    chunk_id, doc_id, chunk, start, end, text, metadata = rec[:7]
    return Hit(score=score, chunk_id=chunk_id, doc_id=doc_id, chunk=int(chunk), start=int(start), end=int(end),
               text=text, metadata=metadata if isinstance(metadata, dict) else json.loads(metadata or "{}"),
               **scores)
