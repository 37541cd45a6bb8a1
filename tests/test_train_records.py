"""Record detection: types, aliases, formats, file:line errors, forced types."""

from __future__ import annotations

import json

import pytest

from m3e.errors import InputError, M3EError
from m3e.training.records import detect_schema, load_datasets


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("columns", "kind"),
    [
        (["text", "text_pos"], "pair"),
        (["text", "text_pos", "text_neg"], "triplet"),
        (["query", "pos", "neg"], "triplet"),
        (["query", "pos"], "pair"),
        (["anchor", "positive", "negative"], "triplet"),
        (["anchor", "positive"], "pair"),
        (["question", "answer"], "pair"),
        (["sentence1", "sentence2", "label"], "scored"),
        (["sentence1", "sentence2", "score"], "scored"),
        (["sentence1", "sentence2"], "pair"),
        (["text", "embedding"], "distill"),
    ],
)
def test_detect_aliases(columns, kind):
    assert detect_schema(columns).type == kind


def test_forced_type_and_unknown_columns():
    assert detect_schema(["text", "text_pos", "text_neg"], "pair").type == "pair"
    with pytest.raises(M3EError, match="cannot tell"):
        detect_schema(["foo", "bar"])
    with pytest.raises(M3EError):
        detect_schema(["text", "text_pos"], "triplet")


def test_bge_lists_and_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _jsonl(tmp_path / "bge.jsonl", [{"query": "北京", "pos": ["北京是首都", "北京城市"], "neg": ["上海", "广州"], "prompt": "x"}])
    (tmp_path / "scored.csv").write_text("sentence1,sentence2,score\n天气好,天气晴,0.9\nhello,world,0.1\n", encoding="utf-8")
    pq.write_table(pa.table({"anchor": ["a1", "a2"], "positive": ["p1", "p2"]}), tmp_path / "pairs.parquet")
    dss = {d.name: d for d in load_datasets(tmp_path)}
    assert set(dss) == {"bge", "scored", "pairs"}
    rec = dss["bge"].records[0]
    assert dss["bge"].type == "triplet" and rec.pos == ("北京是首都", "北京城市") and rec.neg == ("上海", "广州")
    assert dss["scored"].type == "scored" and dss["scored"].records[0].score == pytest.approx(0.9)
    assert dss["pairs"].type == "pair" and dss["pairs"].records[1].pos == ("p2",)


def test_hf_dataset_and_list_of_dicts():
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["a", "b"], "text_pos": ["x", "y"]})
    (got,) = load_datasets(ds)
    assert got.type == "pair" and len(got) == 2
    from datasets import DatasetDict

    splits = load_datasets(DatasetDict({"train": ds, "extra": ds}))
    assert [d.type for d in splits] == ["pair", "pair"] and len({d.name for d in splits}) == 2
    (got,) = load_datasets([{"sentence1": "a", "sentence2": "b", "label": 1}])
    assert got.type == "scored"


def test_errors_name_file_and_line(tmp_path):
    p = _jsonl(tmp_path / "bad.jsonl", [{"text": "a", "text_pos": "b"}, {"text": "c", "text_pos": "d"}, {"text": "e", "text_pos": ""}])
    with pytest.raises(InputError, match=r"bad\.jsonl:3: field 'text_pos' is missing or empty") as exc:
        load_datasets(p)
    assert exc.value.line == 3
    p = _jsonl(tmp_path / "missing.jsonl", [{"text": "a", "text_pos": "b"}, {"text": "c"}])
    with pytest.raises(InputError, match=r"missing\.jsonl:2: missing field 'text_pos'"):
        load_datasets(p)
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "text_pos": "b"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.jsonl:2: invalid JSON"):
        load_datasets(tmp_path / "broken.jsonl")
    (tmp_path / "s.csv").write_text("sentence1,sentence2,score\na,b,0.5\nc,d,\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"s\.csv:3: "):
        load_datasets(tmp_path / "s.csv")
    _jsonl(tmp_path / "t.jsonl", [{"query": "q", "pos": ["p"], "neg": []}])
    with pytest.raises(InputError, match=r"t\.jsonl:1: field 'neg' is missing or empty"):
        load_datasets(tmp_path / "t.jsonl")
    # forcing pairs ignores the empty negatives
    (got,) = load_datasets(tmp_path / "t.jsonl", record_type="pair")
    assert got.type == "pair"
