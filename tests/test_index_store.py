"""Build, search, add, delete, update and resume an index (embedded LanceDB engine, tiny model).

The corpus is the InsuranceQA smoke answers when `m3e data build` has produced them on this
machine (their text is read at test time, never committed), else a small corpus written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import lancedb  # noqa: F401  # the index extra: a missing engine fails the suite instead of skipping
import pytest

from m3e.errors import InputError, M3EError

_OWN_DOCS = [
    ("保险", "zh", "保险理赔需要提供保单、身份证明和医疗发票。理赔申请一般在三十天内处理完毕，特殊情况可以延长。"),
    ("保险", "zh", "人寿保险的受益人可以是配偶、子女或者父母。投保人可以随时变更受益人，但需要书面通知保险公司。"),
    ("保险", "zh", "汽车保险包括交强险和商业险。交强险是法律规定必须购买的，商业险可以根据需要选择。"),
    ("医疗", "zh", "医疗保险可以报销住院费用和部分门诊费用。报销比例取决于医院等级和所在城市的政策。"),
    ("医疗", "zh", "看病之前最好先预约挂号，带上医保卡和以前的病历，这样可以节省很多时间。"),
    ("旅游", "zh", "北京和上海是中国最大的城市，每年都有很多游客去旅游。故宫和外滩是最受欢迎的景点。"),
    ("旅游", "zh", "今天天气很好，我们去公园散步吧。公园里有很多花，还有一个很大的湖。"),
    ("电脑", "zh", "想买一台笔记本电脑，价格不要太高，适合学生读书和写字用。屏幕大一点更好。"),
    ("insurance", "en", "Car insurance covers damage to your car and to other people. "
                        "The price depends on the car and the driver."),
    ("insurance", "en", "A life insurance policy pays the beneficiary when the insured person dies. "
                        "Premiums are paid every month."),
    ("weather", "en", "The weather is nice today. "
                      "It is sunny and warm, a good day to read a book in the park."),
    ("market", "en", "The stock market fell sharply today after the news. Many investors sold their shares."),
]


def _own_corpus() -> list[dict]:
    docs = []
    for i, (topic, lang, text) in enumerate(_OWN_DOCS):
        # Every third document is long, so it is cut into several overlapping chunks.
        body = text if i % 3 else (text + " ") * 4
        docs.append({"id": f"doc{i:02d}", "text": body, "topic": topic, "lang": lang})
    return docs


def first_chunk(record: dict, size: int = 60, overlap: int = 10) -> str:
    """The text of a record's first chunk: a query equal to it scores 1.0 against it."""
    from m3e.index.chunking import chunk_document

    return chunk_document(record["id"], record["text"], size, overlap)[0].text


def corpus_records() -> list[dict]:
    from m3e.data.paths import data_dir

    task = data_dir() / "tasks" / "InsuranceQARetrieval" / "smoke.json"
    if task.exists():
        corpus = json.loads(task.read_text(encoding="utf-8"))["corpus"][:24]
        langs = ("zh", "en")
        return [{"id": d["id"], "text": d["text"], "topic": "insurance", "lang": langs[i % 2]}
                for i, d in enumerate(corpus)]
    return _own_corpus()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_st_model_dir):
    import m3e

    return m3e.load(str(tiny_st_model_dir))


@pytest.fixture()
def corpus(tmp_path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", corpus_records())


def _build(corpus: Path, out: Path, model, source, **kw):
    from m3e.index import build_index

    kw.setdefault("chunk_size", 60)
    kw.setdefault("overlap", 10)
    index, report = build_index(corpus, out, model, model_source=str(source), progress=False, **kw)
    return index, report


def test_build_search_and_offsets(tmp_path, corpus, tiny_model, tiny_st_model_dir):
    records = corpus_records()
    index, report = _build(corpus, tmp_path / "idx", tiny_model, tiny_st_model_dir)
    assert index.status == "ready"
    assert index.meta["state"]["docs"] == len(records) == report.docs
    assert index.meta["state"]["chunks"] > len(records)  # long documents were chunked
    texts = {r["id"]: r["text"] for r in records}
    target = records[1]
    hits = index.search(first_chunk(target), k=5)
    assert hits[0].doc_id == target["id"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in index.search("保险", k=50):
        assert texts[h.doc_id][h.start:h.end] == h.text  # every chunk keeps its document's offsets
    only_en = index.search("insurance", k=50, filters={"lang": "en"})
    assert only_en and all(h.metadata["lang"] == "en" for h in only_en)
    with pytest.raises(M3EError, match="cannot filter on 'colour'"):
        index.search("x", filters={"colour": "red"})
    index.close()
    # The index reloads its own model from the recorded source.
    from m3e.index import Index

    with Index.open(tmp_path / "idx") as again:
        assert again.search(first_chunk(target), k=1)[0].doc_id == target["id"]


def test_add_delete_update(tmp_path, corpus, tiny_model, tiny_st_model_dir):
    from m3e.index import Index
    from m3e.index.corpus import CorpusReader

    index, _ = _build(corpus, tmp_path / "idx", tiny_model, tiny_st_model_dir)
    docs0, chunks0 = index.meta["state"]["docs"], index.meta["state"]["chunks"]
    extra = write_jsonl(tmp_path / "extra.jsonl", [
        {"id": "new1", "text": "新加入的文档讲的是房屋保险和价格。", "topic": "house", "lang": "zh"},
        {"id": "new2", "text": "Another new document about a dog that sits on the mat.", "topic": "pets",
         "lang": "en"},
    ])
    report = index.add_corpus(CorpusReader(extra), progress=False)
    assert report.docs == 2 and index.meta["state"]["docs"] == docs0 + 2
    assert index.search("新加入的文档讲的是房屋保险和价格。", k=1)[0].doc_id == "new1"
    assert index.search("dog", k=10, filters={"topic": "pets"})[0].doc_id == "new2"

    # Adding an id that is already indexed is refused, naming the line, and changes nothing.
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"id": "new3", "text": "第三个", "lang": "zh"},
                                                    {"id": "new1", "text": "重复", "lang": "zh"}])
    with pytest.raises(InputError, match=r"clash\.jsonl:2: document id 'new1' is already in the index"):
        index.add_corpus(CorpusReader(clash), progress=False)
    assert index.meta["state"]["docs"] == docs0 + 2
    assert Index.open(tmp_path / "idx").store.existing_docs(["new3"]) == set()

    # Update (upsert) replaces every chunk of a document.
    changed = write_jsonl(tmp_path / "changed.jsonl",
                          [{"id": "new1", "text": "完全不同的新内容：汽车的价格。", "lang": "zh"}])
    report = index.add_corpus(CorpusReader(changed), upsert=True, progress=False)
    assert report.replaced_docs == 1 and index.meta["state"]["docs"] == docs0 + 2
    top = index.search("完全不同的新内容：汽车的价格。", k=1)[0]
    assert top.doc_id == "new1" and top.text == "完全不同的新内容：汽车的价格。" and top.metadata == {"lang": "zh"}

    removed, missing = index.delete(["new1", "new2", "nope"])
    assert removed == 2 and missing == ["nope"]
    assert (index.meta["state"]["docs"], index.meta["state"]["chunks"]) == (docs0, chunks0)
    assert all(h.doc_id not in {"new1", "new2"} for h in index.search("dog", k=100))


def test_interrupted_build_resumes_without_reencoding(
    tmp_path, corpus, tiny_model, tiny_st_model_dir, monkeypatch
):
    from m3e.index import Index
    from m3e.index.lance_store import LanceStore

    out = tmp_path / "idx"
    full, _ = _build(corpus, tmp_path / "full", tiny_model, tiny_st_model_dir)
    total_chunks = full.meta["state"]["chunks"]

    real_add = LanceStore.add
    calls = {"n": 0}

    def failing_add(self, rows, vectors):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the third batch
        return real_add(self, rows, vectors)

    monkeypatch.setattr(LanceStore, "add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        _build(corpus, out, tiny_model, tiny_st_model_dir, batch_chunks=8)
    monkeypatch.setattr(LanceStore, "add", real_add)

    partial = Index.open(out)
    assert partial.status == "building"
    stored = partial.meta["state"]["chunks"]
    done = partial.meta["state"]["docs_done"]
    assert 0 < stored < total_chunks and done > 0
    with pytest.raises(M3EError, match="unfinished"):
        partial.search("保险")
    partial.close()

    encoded = []
    real_encode = type(tiny_model).encode_documents

    def counting_encode(self, texts, **kw):
        encoded.extend(texts)
        return real_encode(self, texts, **kw)

    monkeypatch.setattr(type(tiny_model), "encode_documents", counting_encode)
    index, report = _build(corpus, out, tiny_model, tiny_st_model_dir, batch_chunks=8)
    assert report.skipped_docs == done
    assert len(encoded) == total_chunks - stored  # nothing stored was encoded again
    assert index.status == "ready" and index.meta["state"]["chunks"] == total_chunks
    assert index.meta["state"]["docs"] == full.meta["state"]["docs"]


def test_failure_at_commit_point_leaves_index_as_before(
    tmp_path, corpus, tiny_model, tiny_st_model_dir, monkeypatch
):
    import m3e.index.index as index_module
    from m3e.index import Index
    from m3e.index.corpus import CorpusReader
    from m3e.index.lance_store import LanceStore

    index, _ = _build(corpus, tmp_path / "idx", tiny_model, tiny_st_model_dir)
    before = dict(index.meta["state"])
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": f"x{i}", "text": f"第{i}个新文档"} for i in range(30)])

    def crash(*a, **k):
        raise OSError("disk full")

    # The engine wrote every batch, then the commit (index.json) fails; with no rollback
    # either, as after a power cut, the unfinished versions stay on disk.
    monkeypatch.setattr(index_module, "write_meta", crash)
    monkeypatch.setattr(LanceStore, "rollback", lambda self, committed: None)
    with pytest.raises(OSError):
        index.add_corpus(CorpusReader(extra), batch_chunks=4, progress=False)
    monkeypatch.undo()

    again = Index.open(tmp_path / "idx")
    assert again.meta["state"] == before
    assert again.store.count() == before["chunks"]  # readers see the committed version only
    assert not again.store.existing_docs(["x0", "x29"])
    assert again.search("第1个新文档", k=3)[0].doc_id not in {f"x{i}" for i in range(30)}
    # The next write rolls the unfinished versions back and succeeds.
    again.add_corpus(CorpusReader(extra), progress=False)
    assert again.meta["state"]["docs"] == before["docs"] + 30


def test_mismatched_model_is_refused(tmp_path, corpus, tiny_model, tiny_st_model_dir, tiny_cls_model_dir):
    import m3e
    from m3e.index import Index

    _build(corpus, tmp_path / "idx", tiny_model, tiny_st_model_dir)[0].close()
    other = m3e.load(str(tiny_cls_model_dir))
    with pytest.raises(M3EError, match="does not match the model that built"):
        Index.open(tmp_path / "idx", model=other)
    prompted = m3e.load(str(tiny_st_model_dir), query_prompt="query: ")
    with pytest.raises(M3EError, match="prompts"):
        Index.open(tmp_path / "idx", model=prompted)
    assert Index.open(tmp_path / "idx", model=m3e.load(str(tiny_st_model_dir))).status == "ready"


def test_cli_build_search_add_update_delete_info(tmp_path, corpus, tiny_st_model_dir, capsys):
    from m3e.cli import main

    out = str(tmp_path / "idx")
    assert main(["index", "build", str(corpus), "--model", str(tiny_st_model_dir), "--out", out,
                 "--chunk-size", "80", "--no-progress"]) == 0
    assert "built" in capsys.readouterr().out
    records = corpus_records()
    assert main(["search", out, first_chunk(records[2], 80), "-k", "3", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and lines[0]["id"] == records[2]["id"] and lines[0]["rank"] == 1
    assert set(lines[0]) >= {"score", "id", "chunk", "start", "end", "text", "metadata"}
    assert main(["search", out, "保险", "--filter", "lang=en", "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert " 1. " in text and "lang=en" in text

    extra = write_jsonl(tmp_path / "extra.csv.jsonl", [{"id": "n1", "text": "新文档", "lang": "zh"}])
    assert main(["index", "add", out, str(extra), "--no-progress"]) == 0
    assert main(["index", "add", out, str(extra), "--no-progress"]) == 2
    assert "already in the index" in capsys.readouterr().err
    assert main(["index", "update", out, str(extra), "--no-progress"]) == 0
    assert "1 replaced" in capsys.readouterr().out
    assert main(["index", "delete", out, "--id", "n1"]) == 0
    assert "deleted 1 documents" in capsys.readouterr().out
    assert main(["index", "info", out]) == 0
    info = capsys.readouterr().out
    assert f"documents {len(records)}" in info and "lancedb" in info
    assert main(["index", "info", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["dim"] == 32
    assert main(["search", out, "x", "--filter", "novalue"]) == 2
    assert main(["search", str(tmp_path / "none"), "x"]) == 2


def test_one_writer_at_a_time(tmp_path, corpus, tiny_model, tiny_st_model_dir):
    from m3e.index.index import _WriteLock

    index, _ = _build(corpus, tmp_path / "idx", tiny_model, tiny_st_model_dir)
    docs = index.meta["state"]["docs"]
    with _WriteLock(index.path), pytest.raises(M3EError, match="being written by another process"):
        index.delete([corpus_records()[0]["id"]])
    assert index.search("保险", k=1)  # readers are not blocked
    assert index.delete([corpus_records()[0]["id"]])[0] > 0 and index.meta["state"]["docs"] == docs - 1


def test_writes_stream_in_bounded_batches(tmp_path, corpus, tiny_model, tiny_st_model_dir, monkeypatch):
    from m3e.index import Document
    from m3e.index.lance_store import LanceStore

    index, _ = _build(corpus, tmp_path / "idx", tiny_model, tiny_st_model_dir)
    pulled = {"n": 0}
    in_flight = []

    def documents():
        for i in range(200):
            pulled["n"] += 1
            yield Document(f"s{i}", f"流式文档 {i}", {}, i + 1)

    real_add = LanceStore.add

    def spy(self, rows, vectors):
        in_flight.append(pulled["n"] - sum(len(x) for x in in_flight_rows))
        in_flight_rows.append(rows)
        return real_add(self, rows, vectors)

    in_flight_rows: list = []
    monkeypatch.setattr(LanceStore, "add", spy)
    index.add(documents(), batch_chunks=16, progress=False)
    # The corpus is pulled one batch at a time: never more than a batch ahead of the store.
    assert len(in_flight) == 200 // 16 + 1 and max(in_flight) <= 16


def test_search_reranks_its_candidates(tmp_path, corpus, tiny_st_model_dir, capsys, monkeypatch):
    import m3e
    from m3e.cli import main
    from m3e.index import Index
    from tests.test_reranker import _bert_cross_encoder

    reranker_dir = _bert_cross_encoder(tmp_path / "ce")
    out = str(tmp_path / "idx")
    assert main(["index", "build", str(corpus), "--model", str(tiny_st_model_dir), "--out", out,
                 "--chunk-size", "80", "--no-progress"]) == 0
    capsys.readouterr()
    query = "保险理赔"
    reranker = m3e.load_reranker(str(reranker_dir))
    with Index.open(out) as index:
        nearest = index.search(query, k=6)
        reranked = index.search(query, k=3, rerank=reranker, candidates=6)
    expected = sorted(nearest, key=lambda h: -float(reranker.predict([(query, h.text)])[0]))[:3]
    assert [h.chunk_id for h in reranked] == [h.chunk_id for h in expected]
    assert all(h.rerank_score is not None for h in reranked)
    with Index.open(out) as index:  # the reranker's share at 0: the retrieval order stays
        kept = index.search(query, k=6, rerank=reranker, candidates=6, rerank_weight=0.0)
    assert [h.chunk_id for h in kept] == [h.chunk_id for h in nearest]
    monkeypatch.setenv("M3E_DEFAULT_RERANKER", str(reranker_dir))  # --rerank with no value: the default
    assert main(["search", out, query, "-k", "3", "--rerank", "--candidates", "6", "--chunks", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["id"], x["chunk"]) for x in lines] == [(h.doc_id, h.chunk) for h in expected]
    assert lines[0]["rerank_score"] >= lines[1]["rerank_score"] >= lines[2]["rerank_score"]
    monkeypatch.delenv("M3E_DEFAULT_RERANKER")
    assert main(["search", out, query, "--rerank"]) == 2
    assert "no default reranker" in capsys.readouterr().err
