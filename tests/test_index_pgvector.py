"""The PostgreSQL + pgvector engine against a real PostgreSQL 16 with pgvector 0.6 started on this machine
(the `pgserver` wheel bundles both): the LanceDB engine's contract (build, search, filters, add, update,
delete, a failed commit, kill -9 during an add), BM25 as computed by hand, hybrid fusion, and HNSW search
against exact search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pgserver  # the dev extra: a missing server fails the suite instead of skipping
import psycopg
import pytest

from m3e.errors import InputError, M3EError
from tests.test_index_store import corpus_records, first_chunk, write_jsonl
from tests.test_lexical import BY_HAND, MINI

pytestmark = pytest.mark.slow  # a PostgreSQL server started for the module (about 10 s with the first index)


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL server with pgvector in a temporary directory, stopped at the end of the module."""
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def tiny_model(tiny_st_model_dir):
    import m3e

    return m3e.load(str(tiny_st_model_dir))


def _build(corpus: Path, out: Path, model, source, url: str, **kw):
    from m3e.index import build_index

    kw.setdefault("chunk_size", 60)
    kw.setdefault("overlap", 10)
    return build_index(corpus, out, model, model_source=str(source), engine="pgvector", url=url, progress=False,
                       **kw)


def _table_rows(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        assert row is not None
        return int(row[0])


def test_build_search_filter_and_reopen(tmp_path, tiny_model, tiny_st_model_dir, pg_url):
    from m3e.index import Index

    records = corpus_records()
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    index, report = _build(corpus, tmp_path / "contract", tiny_model, tiny_st_model_dir, pg_url)
    engine = index.meta["engine"]
    assert (engine["name"], engine["table"], engine["url"]) == ("pgvector", "contract", pg_url)
    assert index.status == "ready" and index.meta["state"]["docs"] == len(records) == report.docs
    assert index.meta["state"]["chunks"] > len(records)  # long documents were chunked
    target = records[1]
    hits = index.search(first_chunk(target), k=5, mode="dense")
    assert hits[0].doc_id == target["id"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    texts = {r["id"]: r["text"] for r in records}
    for h in index.search("保险", k=50):
        assert texts[h.doc_id][h.start:h.end] == h.text
    only_en = index.search("insurance", k=50, filters={"lang": "en"}, mode="dense")
    assert len(only_en) == sum(1 for h in index.search("insurance", k=500, mode="dense") if h.metadata["lang"] == "en")
    assert only_en and all(h.metadata["lang"] == "en" for h in only_en)
    with pytest.raises(M3EError, match="cannot filter on 'colour'"):
        index.search("x", filters={"colour": "red"})
    index.close()
    with psycopg.connect(pg_url) as conn:  # the table and its HNSW index are m3e's
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'contract'")}
        assert {"contract_hnsw", "contract_tsv", "contract_doc", "contract_fields"} <= names
    with Index.open(tmp_path / "contract") as again:
        assert again.search(first_chunk(target), k=1)[0].doc_id == target["id"]


def test_add_update_delete(tmp_path, tiny_model, tiny_st_model_dir, pg_url):
    from m3e.index.corpus import CorpusReader

    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_records())
    index, _ = _build(corpus, tmp_path / "writes", tiny_model, tiny_st_model_dir, pg_url)
    docs0, chunks0 = index.meta["state"]["docs"], index.meta["state"]["chunks"]
    extra = write_jsonl(tmp_path / "extra.jsonl", [
        {"id": "new1", "text": "新加入的文档讲的是房屋保险和价格。", "topic": "house", "lang": "zh"},
        {"id": "new2", "text": "Another new document about a dog that sits on the mat.", "topic": "pets",
         "lang": "en"},
    ])
    assert index.add_corpus(CorpusReader(extra), progress=False).docs == 2
    assert index.meta["state"]["docs"] == docs0 + 2
    assert index.search("新加入的文档讲的是房屋保险和价格。", k=1, mode="dense")[0].doc_id == "new1"
    assert index.search("dog", k=10, filters={"topic": "pets"})[0].doc_id == "new2"

    clash = write_jsonl(tmp_path / "clash.jsonl", [{"id": "new3", "text": "第三个", "lang": "zh"},
                                                    {"id": "new1", "text": "重复", "lang": "zh"}])
    with pytest.raises(InputError, match=r"clash\.jsonl:2: document id 'new1' is already in the index"):
        index.add_corpus(CorpusReader(clash), progress=False)
    assert index.meta["state"]["docs"] == docs0 + 2 and not index.store.existing_docs(["new3"])

    changed = write_jsonl(tmp_path / "changed.jsonl",
                          [{"id": "new1", "text": "完全不同的新内容：汽车的价格。", "lang": "zh"}])
    report = index.add_corpus(CorpusReader(changed), upsert=True, progress=False)
    assert report.replaced_docs == 1 and index.meta["state"]["docs"] == docs0 + 2
    top = index.search("完全不同的新内容：汽车的价格。", k=1, mode="dense")[0]
    assert top.doc_id == "new1" and top.text == "完全不同的新内容：汽车的价格。" and top.metadata == {"lang": "zh"}

    removed, missing = index.delete(["new1", "new2"])
    assert removed == 2 and missing == []
    assert (index.meta["state"]["docs"], index.meta["state"]["chunks"]) == (docs0, chunks0)
    assert all(h.doc_id not in {"new1", "new2"} for h in index.search("dog", k=100))
    # Deleted rows are purged once their deletion is committed: the table holds the live chunks only.
    assert _table_rows(pg_url, "writes") == chunks0
    index.close()


def test_failure_at_commit_point_leaves_index_as_before(tmp_path, tiny_model, tiny_st_model_dir, pg_url,
                                                        monkeypatch):
    import m3e.index.index as index_module
    from m3e.index import Index
    from m3e.index.corpus import CorpusReader
    from m3e.index.pgvector_store import PgVectorStore

    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_records())
    index, _ = _build(corpus, tmp_path / "commit", tiny_model, tiny_st_model_dir, pg_url)
    before = dict(index.meta["state"])
    first_doc = corpus_records()[0]["id"]
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": f"x{i}", "text": f"第{i}个新文档"} for i in range(30)])

    def crash(*a, **k):
        raise OSError("disk full")

    # The database committed the add, then index.json could not be written; no rollback, as after a power cut.
    monkeypatch.setattr(index_module, "write_meta", crash)
    monkeypatch.setattr(PgVectorStore, "rollback", lambda self, committed: None)
    with pytest.raises(OSError):
        index.add_corpus(CorpusReader(extra), batch_chunks=4, progress=False)
    with pytest.raises(OSError):
        index.delete([first_doc])
    monkeypatch.undo()
    index.close()

    again = Index.open(tmp_path / "commit")
    assert again.meta["state"] == before
    assert again.store.count() == before["chunks"]  # readers see the committed generation only
    assert not again.store.existing_docs(["x0", "x29"]) and again.store.existing_docs([first_doc])
    assert all(not h.doc_id.startswith("x") for h in again.search("第1个新文档", k=50))
    # The next write removes the unfinished rows, restores the unfinished deletion, and succeeds.
    again.add_corpus(CorpusReader(extra), progress=False)
    assert again.meta["state"]["docs"] == before["docs"] + 30
    assert _table_rows(pg_url, "commit") == before["chunks"] + 30
    again.close()


def test_sparse_side_ranks_as_computed_by_hand_and_hybrid_fuses_both(tmp_path, tiny_model, tiny_st_model_dir,
                                                                     pg_url):
    from m3e.index.index import fused_hits

    corpus = write_jsonl(tmp_path / "mini.jsonl", [{"id": d, "text": text, "kind": "mini"}
                                                   for d, (text, _) in MINI.items()])
    index, _ = _build(corpus, tmp_path / "mini", tiny_model, tiny_st_model_dir, pg_url)
    hits = index.search("保险理赔", k=10, mode="sparse")
    assert [h.doc_id for h in hits] == ["d0", "d3", "d1"]  # d2 shares no word: not a hit
    assert {h.doc_id: h.score for h in hits} == pytest.approx({d: s for d, s in BY_HAND.items() if s}, abs=1e-5)
    assert index.search("的", k=5, mode="sparse") == []  # only a stop word
    assert index.search("保险理赔", k=10, mode="sparse", filters={"kind": "other"}) == []
    dense = index.search("保险理赔", k=50, mode="dense")
    sparse = index.search("保险理赔", k=50, mode="sparse")
    expected = fused_hits(dense, sparse)
    hybrid = index.search("保险理赔", k=4)
    assert [h.chunk_id for h in hybrid] == [h.chunk_id for h in expected][:4]
    assert [h.score for h in hybrid] == pytest.approx([h.score for h in expected][:4], abs=1e-9)
    index.close()


def test_hnsw_search_against_exact_search(tmp_path, pg_url):
    """Random unit vectors: the HNSW index's top 10 against numpy's, and a filtered search equal to numpy's."""
    from m3e.index.pgvector_store import PgVectorStore
    from m3e.index.store import Row

    rng = np.random.default_rng(0)
    n, dim = 3000, 32
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [Row(f"v{i}#0", f"v{i}", 0, 0, 1, "x", {"part": str(i % 3)}) for i in range(n)]
    config = {"name": "pgvector", "url": pg_url, "table": "exact", "sparse": False}
    store = PgVectorStore(tmp_path, config, dim=dim, create=True)
    store.begin({})
    for i in range(0, n, 500):
        store.add(rows[i:i + 500], vectors[i:i + 500])
    store.commit()
    store.finish_build()
    queries = rng.normal(size=(50, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    recalls = []
    for q in queries:
        cosines = vectors @ q
        exact = np.argsort(-cosines)[:10]
        hits = store.search(q, 10)
        got = [int(h.doc_id[1:]) for h in hits]
        recalls.append(len(set(got) & set(exact.tolist())) / 10)
        for h, i in zip(hits, got, strict=True):
            assert h.score == pytest.approx(float(cosines[i]), abs=1e-5)
        part = np.flatnonzero(np.arange(n) % 3 == 1)
        exact_part = part[np.argsort(-cosines[part])[:10]]
        filtered = store.search(q, 10, {"part": "1"})
        assert [int(h.doc_id[1:]) for h in filtered] == exact_part.tolist()
    assert np.mean(recalls) >= 0.95, np.mean(recalls)
    store.close()


def test_a_table_belongs_to_one_index(tmp_path, tiny_model, tiny_st_model_dir, pg_url):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records()[:3])
    first, _ = _build(corpus, tmp_path / "a" / "shared", tiny_model, tiny_st_model_dir, pg_url)
    first.close()
    # Another index directory of the same name would take the same table: refused, the first index intact.
    with pytest.raises(M3EError, match=r"table 'shared' already holds the index at .*a/shared; .*--collection"):
        _build(corpus, tmp_path / "b" / "shared", tiny_model, tiny_st_model_dir, pg_url)
    assert _table_rows(pg_url, "shared") > 0
    other, _ = _build(corpus, tmp_path / "b" / "shared", tiny_model, tiny_st_model_dir, pg_url, collection="shared_b")
    assert other.meta["engine"]["table"] == "shared_b"
    other.close()
    # A rebuild of the same index replaces its own table.
    again, _ = _build(corpus, tmp_path / "a" / "shared", tiny_model, tiny_st_model_dir, pg_url, overwrite=True)
    assert again.meta["state"]["docs"] == 3
    again.close()


def test_password_in_url_is_refused(tmp_path, tiny_model, tiny_st_model_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records()[:2])
    with pytest.raises(M3EError, match="PGPASSWORD"):
        _build(corpus, tmp_path / "pw", tiny_model, tiny_st_model_dir, "postgresql://u:secret@127.0.0.1:1/db")
    with pytest.raises(M3EError, match="postgresql://"):
        _build(corpus, tmp_path / "pw2", tiny_model, tiny_st_model_dir, "http://127.0.0.1:1")


def _relation_size(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_relation_size(%s)", (table,)).fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_during_add_leaves_a_consistent_index(tmp_path, tiny_st_model_dir, pg_url):
    from m3e.cli import main
    from m3e.index import Index

    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_records())
    out = tmp_path / "killed"
    assert main(["index", "build", str(corpus), "--model", str(tiny_st_model_dir), "--out", str(out),
                 "--engine", "pgvector", "--url", pg_url, "--no-progress"]) == 0
    before = json.loads((out / "index.json").read_text())["state"]
    size_before = _relation_size(pg_url, "killed")

    extra = write_jsonl(tmp_path / "extra.jsonl",
                        [{"id": f"x{i}", "text": f"第{i}个新文档，关于保险和理赔。"} for i in range(4000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "m3e.cli", "index", "add", str(out), str(extra), "--batch-chunks", "8",
         "--no-progress"],
        env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        # Kill once the add's uncommitted rows have grown the table by a few pages.
        deadline = time.monotonic() + 120
        while _relation_size(pg_url, "killed") < size_before + 5 * 8192 and proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail("the add wrote nothing to the table in 120 s")
            time.sleep(0.05)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed, "the add finished before it could be killed: " + proc.stderr.read().decode()[-500:]

    with Index.open(out) as index:
        assert index.meta["state"] == before
        assert index.store.count() == before["chunks"]
        assert not index.store.existing_docs([f"x{i}" for i in range(4000)])
        assert not any(h.doc_id.startswith("x") for h in index.search("新文档 保险 理赔", k=100, mode="sparse"))
    assert _table_rows(pg_url, "killed") == before["chunks"]  # Postgres rolled the killed transaction back
    small = write_jsonl(tmp_path / "small.jsonl", [{"id": "x1", "text": "一个新文档"}])
    assert main(["index", "add", str(out), str(small), "--no-progress"]) == 0
    with Index.open(out) as index:
        assert index.meta["state"]["docs"] == before["docs"] + 1
        found = [h.doc_id for h in index.search("一个新文档", k=100, mode="sparse")]
        assert "x1" in found and not any(d.startswith("x") and d != "x1" for d in found)
