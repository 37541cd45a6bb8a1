"""Task files: reading, checking, choosing (no mteb needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m3e.errors import InputError, M3EError
from m3e.evaluation.taskfile import load_task_files, read_task_file
from tests.eval_helpers import classification_spec, retrieval_spec, write_task, write_toy_tasks


def test_reads_toy_tasks_in_type_order(tmp_path: Path) -> None:
    write_toy_tasks(tmp_path)
    tasks = load_task_files(tmp_path, "smoke")
    assert [t.type for t in tasks] == ["Classification", "Retrieval", "BitextMining", "PairClassification"]
    retrieval = tasks[1]
    assert retrieval.main_score == "ndcg_at_10"
    assert retrieval.size() == {"queries": 8, "corpus": 9}
    assert retrieval.records["qrels"]["q0"] == {"d0": 1, "d-extra": 1}
    assert len(retrieval.revision) == 16


def test_task_filter_is_case_insensitive_and_unknown_names_fail(tmp_path: Path) -> None:
    write_toy_tasks(tmp_path)
    chosen = load_task_files(tmp_path, "smoke", ["toyinsuranceretrieval"])
    assert [t.name for t in chosen] == ["ToyInsuranceRetrieval"]
    with pytest.raises(M3EError, match=r"unknown task.*NoSuchTask.*available: .*ToyHSKBitextMining"):
        load_task_files(tmp_path, "smoke", ["NoSuchTask"])


def test_missing_data_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(M3EError, match="m3e data build"):
        load_task_files(tmp_path, "full")


def test_score_alias_and_default(tmp_path: Path) -> None:
    spec = retrieval_spec()
    spec["main_score"] = "nDCG@10"
    assert read_task_file(write_task(tmp_path, spec)).main_score == "ndcg_at_10"
    spec = classification_spec()
    del spec["main_score"]
    assert read_task_file(write_task(tmp_path, spec)).main_score == "accuracy"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["test"][1].pop("label"), r"test\[1\] has no 'label'"),
        (lambda s: s.update(type="Clustering"), "'type' must be one of"),
        (lambda s: s.update(train=[]), "'train' must be a non-empty list"),
        (lambda s: s.update(languages="cmn"), "'languages'"),
    ],
)
def test_broken_classification_files_name_file_and_record(tmp_path: Path, mutate, message: str) -> None:
    spec = classification_spec()
    mutate(spec)
    path = write_task(tmp_path, spec)
    with pytest.raises(InputError, match=message) as err:
        read_task_file(path)
    assert str(path) in str(err.value)


def test_qrels_must_point_into_corpus_and_queries(tmp_path: Path) -> None:
    spec = retrieval_spec()
    spec["qrels"]["q1"] = {"nope": 1}
    with pytest.raises(InputError, match="document 'nope'"):
        read_task_file(write_task(tmp_path, spec))
    spec = retrieval_spec()
    spec["qrels"]["q99"] = {"d1": 1}
    with pytest.raises(InputError, match="query 'q99'"):
        read_task_file(write_task(tmp_path, spec))


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "tasks" / "X" / "smoke.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not a valid UTF-8 JSON"):
        read_task_file(path)
    path.write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(InputError, match="one JSON object"):
        read_task_file(path)
