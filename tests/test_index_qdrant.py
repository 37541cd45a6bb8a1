"""The distributed engine (Qdrant) behind the same interface, through its client's local mode.

Local mode runs the same client calls (upsert, query_points, delete by filter, count,
scroll) as a Qdrant server or cluster by URL; no server is reachable here.
"""

from __future__ import annotations

import pytest
import qdrant_client  # noqa: F401  # the index extra: a missing client fails the suite instead of skipping

from tests.test_index_store import corpus_records, first_chunk, write_jsonl


def test_qdrant_engine_build_search_add_update_delete(tmp_path, tiny_st_model_dir):
    import m3e
    from m3e.index import Index, build_index
    from m3e.index.corpus import CorpusReader

    model = m3e.load(str(tiny_st_model_dir))
    records = corpus_records()
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    out = tmp_path / "idx"
    index, report = build_index(corpus, out, model, model_source=str(tiny_st_model_dir), engine="qdrant",
                                url=str(tmp_path / "qdrant-local"), collection="test", chunk_size=60,
                                overlap=10,
                                progress=False)
    engine = index.meta["engine"]
    assert {k: engine[k] for k in ("name", "url", "collection")} == {
        "name": "qdrant", "url": str(tmp_path / "qdrant-local"), "collection": "test"}
    assert engine["sparse"] is True and engine["avgdl"] > 0  # the sparse side: BM25 vectors beside the dense
    assert index.meta["state"]["docs"] == len(records) == report.docs
    target = records[3]
    hit = index.search(first_chunk(target), k=1)[0]
    assert hit.doc_id == target["id"] and hit.score == pytest.approx(1.0, abs=1e-4)
    assert hit.text == target["text"][hit.start:hit.end]
    en = index.search("insurance", k=50, filters={"lang": "en"})
    assert en and all(h.metadata["lang"] == "en" for h in en)

    extra = write_jsonl(tmp_path / "e.jsonl", [{"id": "n1", "text": "新文档", "lang": "zh"}])
    index.add_corpus(CorpusReader(extra), progress=False)
    changed = write_jsonl(tmp_path / "u.jsonl", [{"id": "n1", "text": "改过的新文档", "lang": "en"}])
    assert index.add_corpus(CorpusReader(changed), upsert=True, progress=False).replaced_docs == 1
    top = index.search("改过的新文档", k=1)[0]
    assert top.doc_id == "n1" and top.text == "改过的新文档"
    assert index.delete(["n1"]) == (1, [])
    assert index.meta["state"]["docs"] == len(records)
    index.close()
    with Index.open(out) as again:  # local mode holds a lock until closed, as a server would not
        assert again.search(first_chunk(target), k=1)[0].doc_id == target["id"]
