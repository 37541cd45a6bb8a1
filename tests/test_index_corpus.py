"""Chunking with overlap and offsets, and the streaming corpus readers (.txt/.jsonl/.csv/.parquet)."""

from __future__ import annotations

import itertools
import json

import pytest

from m3e.errors import InputError, M3EError
from m3e.index.chunking import chunk_document, spans
from m3e.index.corpus import CorpusReader


def test_short_text_is_one_chunk():
    assert spans("短文本", 10, 2) == [(0, 3)]
    assert spans("", 10, 2) == [(0, 0)]


@pytest.mark.parametrize("size,overlap", [(20, 5), (7, 0), (10, 9), (50, 10)])
def test_spans_cover_text_with_overlap(size, overlap):
    text = "保险理赔需要哪些材料？" * 9 + "The weather is nice today. " * 5
    got = spans(text, size, overlap)
    assert got[0][0] == 0 and got[-1][1] == len(text)
    for (s1, e1), (s2, _e2) in itertools.pairwise(got):
        assert e1 - s1 <= size and s2 > s1  # bounded and always advancing
        assert s2 <= e1  # no gap between chunks
        assert e1 - s2 <= overlap  # share at most `overlap` characters
    assert max(e - s for s, e in got) <= size


def test_chunks_prefer_sentence_ends_and_keep_offsets():
    text = "第一句话说的是保险。第二句话讲的是理赔材料。第三句话是关于医疗的内容。"
    chunks = chunk_document("doc-1", text, 12, 3)
    assert all(c.doc_id == "doc-1" and text[c.start:c.end] == c.text for c in chunks)
    assert [c.chunk for c in chunks] == list(range(len(chunks)))
    assert chunks[0].text.endswith("。") and chunks[0].chunk_id == "doc-1#0"


def test_bad_chunking_is_refused():
    with pytest.raises(M3EError):
        spans("abc", 10, 10)
    with pytest.raises(M3EError):
        spans("abc", 0, 0)


def test_txt_reader(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("\ufeff第一行\n\n第三行\n", encoding="utf-8")
    docs = list(CorpusReader(p))
    assert [(d.id, d.text, d.line) for d in docs] == [("1", "第一行", 1), ("3", "第三行", 3)]


def test_jsonl_reader_keeps_metadata_and_names_broken_lines(tmp_path):
    p = tmp_path / "c.jsonl"
    first = json.dumps({"id": 7, "text": "你好", "lang": "zh", "n": 1}, ensure_ascii=False)
    p.write_text(first + "\n\n{broken\n", encoding="utf-8")
    reader = CorpusReader(p)
    it = iter(reader)
    doc = next(it)
    assert (doc.id, doc.text, doc.metadata) == ("7", "你好", {"lang": "zh", "n": 1})
    with pytest.raises(InputError, match=r"c\.jsonl:3: invalid JSON"):
        next(it)
    only = CorpusReader(p, metadata_fields=["lang"])
    assert next(iter(only)).metadata == {"lang": "zh"}


@pytest.mark.parametrize(
    "record,message",
    [({"text": "x"}, "no id field 'id'"), ({"id": "a"}, "no field 'text'"),
     ({"id": "a", "text": 3}, "expected a string"),
     ({"id": " ", "text": "x"}, "empty id")],
)
def test_jsonl_record_errors(tmp_path, record, message):
    p = tmp_path / "bad.jsonl"
    lines = [json.dumps({"id": "ok", "text": "fine"}), json.dumps(record)]
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(InputError, match=rf"bad\.jsonl:2: .*{message}"):
        list(CorpusReader(p))


def test_csv_reader_custom_fields_and_errors(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('doc,body,topic\nx1,"多行\n文本",保险\nx2,第二条,医疗\n', encoding="utf-8")
    docs = list(CorpusReader(p, id_field="doc", text_field="body"))
    assert [(d.id, d.text, d.metadata, d.line) for d in docs] == [
        ("x1", "多行\n文本", {"topic": "保险"}, 2), ("x2", "第二条", {"topic": "医疗"}, 4)]  # a row's first line
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\na,ok\nb,too,many\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.csv:3: more values"):
        list(CorpusReader(bad))


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["甲", None], "year": [2020, 2021]}), p)
    reader = CorpusReader(p)
    it = iter(reader)
    assert next(it).metadata == {"year": 2020}
    with pytest.raises(InputError, match=r"c\.parquet:2: field 'text' is NoneType"):
        next(it)
    with pytest.raises(InputError, match="no column 'body'"):
        list(CorpusReader(p, text_field="body"))


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "c.xml").write_text("<x/>")
    with pytest.raises(M3EError, match="--format"):
        CorpusReader(tmp_path / "c.xml")
    with pytest.raises(M3EError, match="no such corpus"):
        CorpusReader(tmp_path / "none.jsonl")


def test_progress_line_has_rate_and_eta():
    import io

    from m3e.index.progress import IndexProgress

    out = io.StringIO()
    bar = IndexProgress(True, stream=out)
    bar.start -= 10  # ten seconds in
    bar.update(50, 120, 0.25, force=True)
    bar.start_fraction = 0.0
    line = bar.line()
    assert "50 docs, 120 chunks, 25.0%" in line and "ETA 0:00:30" in line
    bar.close()
    assert out.getvalue().endswith("\n")
