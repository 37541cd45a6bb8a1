"""The index's sparse side and hybrid search: BM25 as computed by hand, each side finding what the other misses,
documents instead of chunks, both sides kept in step by add / update / delete, token chunks, ColBERT re-scoring."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from m3e.errors import M3EError
from m3e.fusion import Fusion
from tests.test_index_store import write_jsonl
from tests.test_lexical import BY_HAND, MINI


@pytest.fixture(scope="module")
def tiny_model(tiny_st_model_dir):
    import m3e

    return m3e.load(str(tiny_st_model_dir))


def _mini_corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "mini.jsonl", [{"id": d, "text": text, "kind": "mini"}
                                                 for d, (text, _) in MINI.items()])


@pytest.mark.parametrize("engine", ["lancedb", "qdrant"])
def test_sparse_side_ranks_as_computed_by_hand(engine, tmp_path, tiny_model, tiny_st_model_dir):
    from m3e.index import build_index

    extra = {"engine": engine, "url": str(tmp_path / "q"), "collection": "mini"} if engine == "qdrant" else {}
    index, _ = build_index(_mini_corpus(tmp_path), tmp_path / "idx", tiny_model, model_source=str(tiny_st_model_dir),
                           progress=False, **extra)
    hits = index.search("保险理赔", k=10, mode="sparse")
    assert [h.doc_id for h in hits] == ["d0", "d3", "d1"]  # d2 shares no word: not a hit
    assert {h.doc_id: h.score for h in hits} == pytest.approx({d: s for d, s in BY_HAND.items() if s}, abs=1e-4)
    assert all(h.sparse_score == h.score and h.dense_score is None for h in hits)
    assert index.search("的", k=5, mode="sparse") == []  # only a stop word: nothing to match
    index.close()


def test_hybrid_finds_what_each_side_alone_misses(tmp_path, tiny_model, tiny_st_model_dir, monkeypatch):
    from m3e.index import build_index

    docs = [{"id": f"n{i}", "text": t} for i, t in enumerate(
        ["今天天气很好，我们去公园散步吧。", "北京和上海是中国最大的城市。", "想买一台笔记本电脑。",
         "医疗保险可以报销住院费用。", "看病之前最好先预约挂号。", "股票市场今天大幅下跌。"])]
    docs += [{"id": "meaning", "text": "汽车保险包括交强险和商业险。"},
             {"id": "words", "text": "火星探测器的轨道参数已经公布。"}]
    index, _ = build_index(write_jsonl(tmp_path / "c.jsonl", docs), tmp_path / "idx", tiny_model,
                           model_source=str(tiny_st_model_dir), progress=False)
    query = "火星探测器轨道"
    # The dense side is made to understand the query as "meaning" (which shares no word with it).
    target = np.asarray(tiny_model.encode_documents(["汽车保险包括交强险和商业险。"]))[0]
    monkeypatch.setattr(type(tiny_model), "encode_queries", lambda self, texts, **kw: np.asarray([target]))
    dense = [h.doc_id for h in index.search(query, k=2, mode="dense")]
    sparse = [h.doc_id for h in index.search(query, k=2, mode="sparse")]
    assert dense[0] == "meaning" and "words" not in dense
    assert sparse == ["words"]  # the only chunk with its words
    # hybrid: the default of an index with both sides. RRF, so that the tiny model's cosine spread does not
    # decide whether a words-only hit can rise (the default's dense 0.8 share lets it rise only by 0.2).
    hybrid = index.search(query, k=2, fusion=Fusion("rrf"))
    assert {h.doc_id for h in hybrid} == {"meaning", "words"}
    by_id = {h.doc_id: h for h in hybrid}
    assert by_id["meaning"].dense_score == pytest.approx(1.0, abs=1e-4) and by_id["meaning"].sparse_score is None
    assert by_id["words"].sparse_score > 0
    index.close()


def test_documents_not_chunks(tmp_path, tiny_model, tiny_st_model_dir, capsys):
    from m3e.cli import main
    from m3e.index import DocumentHit, build_index

    long_doc = "保险理赔需要保单。" * 12 + "其他内容。" * 10 + "保险理赔很快。" * 8
    docs = [{"id": "long", "text": long_doc, "topic": "a"}, {"id": "short", "text": "保险理赔的材料", "topic": "b"},
            {"id": "other", "text": "今天天气很好", "topic": "c"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    index, _ = build_index(corpus, tmp_path / "idx", tiny_model, model_source=str(tiny_st_model_dir),
                           chunk_size=40, overlap=5, progress=False)
    chunks = index.search("保险理赔", k=10, mode="sparse")
    assert sum(h.doc_id == "long" for h in chunks) >= 3  # the long document matches in several chunks
    grouped = index.search("保险理赔", k=2, mode="sparse", group=True)
    assert all(isinstance(g, DocumentHit) for g in grouped)
    assert [g.doc_id for g in grouped] == list(dict.fromkeys(h.doc_id for h in chunks))[:2]
    long_hit = next(g for g in grouped if g.doc_id == "long")
    assert long_hit.chunks and all(c.doc_id == "long" for c in long_hit.chunks)
    assert long_hit.score >= max(c.score for c in long_hit.chunks)
    assert long_hit.metadata == {"topic": "a"}
    record = long_hit.to_dict()
    assert record["id"] == "long" and len(record["chunks"]) == len(long_hit.chunks)
    assert long_doc[record["start"]:record["end"]] == record["text"]
    index.close()

    out = str(tmp_path / "idx")
    assert main(["search", out, "保险理赔", "--mode", "sparse", "-k", "2", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["id"] for x in lines] == [g.doc_id for g in grouped] and "chunks" in lines[0]
    assert main(["search", out, "保险理赔", "--mode", "sparse", "-k", "3", "--chunks", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and "chunks" not in lines[0]
    assert main(["search", out, "保险理赔", "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert " 1. " in text and "also matches in" in text and "bm25" in text


def test_add_update_delete_keep_both_sides_in_step(tmp_path, tiny_model, tiny_st_model_dir):
    from m3e.index import build_index
    from m3e.index.corpus import CorpusReader

    index, _ = build_index(_mini_corpus(tmp_path), tmp_path / "idx", tiny_model, model_source=str(tiny_st_model_dir),
                           progress=False)
    extra = write_jsonl(tmp_path / "e.jsonl", [{"id": "new", "text": "火星探测器发射成功"}])
    index.add_corpus(CorpusReader(extra), progress=False)
    assert [h.doc_id for h in index.search("火星", k=5, mode="sparse")] == ["new"]
    assert index.search("火星探测器发射成功", k=1, mode="dense")[0].doc_id == "new"
    changed = write_jsonl(tmp_path / "u.jsonl", [{"id": "new", "text": "月球车完成任务"}])
    index.add_corpus(CorpusReader(changed), upsert=True, progress=False)
    assert index.search("火星", k=5, mode="sparse") == []  # the old words left with the old version
    assert [h.doc_id for h in index.search("月球车", k=5, mode="sparse")] == ["new"]
    index.delete(["new"])
    assert index.search("月球车", k=5, mode="sparse") == []
    assert all(h.doc_id != "new" for h in index.search("月球车完成任务", k=10, mode="dense"))
    assert index.meta["state"]["docs"] == len(MINI)
    # The live documents rank as before (the full-text index's statistics, like Lucene's, still count deleted
    # chunks until it is rebuilt, so the scores themselves move a little).
    assert [h.doc_id for h in index.search("保险理赔", k=10, mode="sparse")] == ["d0", "d3", "d1"]
    index.close()


def test_dense_only_index_and_errors(tmp_path, tiny_model, tiny_st_model_dir):
    from m3e.index import build_index

    index, _ = build_index(_mini_corpus(tmp_path), tmp_path / "idx", tiny_model, model_source=str(tiny_st_model_dir),
                           sparse=None, progress=False)
    assert "sparse" not in index.meta and index.default_mode == "dense"
    assert index.search("保险", k=1)[0].dense_score is not None
    with pytest.raises(M3EError, match="no sparse side"):
        index.search("保险", mode="hybrid")
    index.close()
    index, _ = build_index(_mini_corpus(tmp_path), tmp_path / "idx2", tiny_model,
                           model_source=str(tiny_st_model_dir), progress=False)
    vector = np.asarray(tiny_model.encode_queries(["保险"]))[0]
    assert index.search(vector, k=1)[0].dense_score is not None  # a vector query: dense
    with pytest.raises(M3EError, match="needs the query's text"):
        index.search(vector, mode="hybrid")
    with pytest.raises(M3EError, match="unknown search mode"):
        index.search("保险", mode="colbert")
    with pytest.raises(M3EError, match="BGE-M3"):
        index.search("保险", colbert=True)
    index.close()


def test_chunks_by_tokens_keep_their_position(tmp_path, tiny_model, tiny_st_model_dir):
    from m3e.index import build_index
    from m3e.index.chunking import chunk_document_by_tokens, token_spans

    assert token_spans([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)], 6, 2, 1) == [(0, 2), (1, 3), (2, 4), (3, 6)]
    assert token_spans([(0, 2)], 3, 4, 1) == [(0, 3)]
    text = "保险理赔需要提供保单、身份证明和医疗发票。" * 5
    chunks = chunk_document_by_tokens("d", text, 16, 4, tiny_model.tokenizer)
    assert len(chunks) > 3 and all(text[c.start:c.end] == c.text for c in chunks)
    assert all(len(tiny_model.tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 16 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(b.start < a.end for a, b in itertools.pairwise(chunks))  # consecutive chunks overlap
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "d", "text": text}])
    index, _ = build_index(corpus, tmp_path / "idx", tiny_model, model_source=str(tiny_st_model_dir),
                           chunk_unit="tokens", chunk_size=16, overlap=4, progress=False)
    assert index.meta["chunking"] == {"unit": "tokens", "size": 16, "overlap": 4}
    assert index.meta["state"]["chunks"] == len(chunks)
    for h in index.search("医疗发票", k=20, mode="sparse"):
        assert text[h.start:h.end] == h.text
    index.close()


def test_colbert_rescoring_with_bge_m3(tmp_path):
    import m3e
    from m3e.bge_m3 import M3_WEIGHTS
    from m3e.index import Index, build_index
    from tests.test_bge_m3 import _bge_m3_twin

    twin = _bge_m3_twin(tmp_path / "bge-m3")
    m3 = m3e.load_bge_m3(str(twin))
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(
        ["保险理赔需要提供保单", "今天天气很好", "汽车保险包括交强险", "the weather is nice today"])]
    index, _ = build_index(write_jsonl(tmp_path / "c.jsonl", docs), tmp_path / "idx", m3, model_source=str(twin),
                           progress=False)
    query = "保险理赔"
    hits = index.search(query, k=4, colbert=True, candidates=4)
    scores = m3.compute_score([(query, h.text) for h in hits], weights=M3_WEIGHTS)
    assert [h.rerank_score for h in hits] == pytest.approx(scores["colbert+sparse+dense"], abs=1e-5)
    assert [h.colbert_score for h in hits] == pytest.approx(scores["colbert"], abs=1e-5)
    assert [h.rerank_score for h in hits] == sorted((h.rerank_score for h in hits), reverse=True)
    index.close()
    with Index.open(tmp_path / "idx") as again:  # the recorded source is a BGE-M3 checkpoint: loaded for ColBERT
        assert [h.chunk_id for h in again.search(query, k=4, colbert=True, candidates=4)] == [
            h.chunk_id for h in hits]
