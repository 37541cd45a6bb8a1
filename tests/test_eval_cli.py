"""`m3e eval` end to end: the smoke suite through the CLI, reports, and the hub suites offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mteb  # noqa: F401  # the eval extra: a missing mteb fails the suite instead of skipping
import pytest

from m3e.cli import main
from tests.eval_helpers import smoke_data, write_toy_tasks

pytestmark = pytest.mark.slow  # full mteb runs through the CLI


@pytest.fixture(scope="module")
def smoke_run(tiny_st_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = smoke_data(tmp_path_factory.mktemp("smoke-data"))
    out = tmp_path_factory.mktemp("eval") / "report"
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["eval", str(tiny_st_model_dir), "bm25", "--suite", "smoke",
                     "--data-dir", str(data), "--out", str(out), "--batch-size", "16"])
    return {"code": code, "out": out, "data": data, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_smoke_suite_runs_every_task(smoke_run: dict[str, Any]) -> None:
    assert smoke_run["code"] == 0, smoke_run["stderr"]
    results = json.loads((smoke_run["out"] / "results.json").read_text(encoding="utf-8"))
    tasks = {t["name"]: t for t in results["tasks"]}
    n_files = len(list((smoke_run["data"] / "tasks").glob("*/smoke.json")))
    assert len(tasks) == n_files >= 4
    by_model: dict[str, dict[str, Any]] = {}
    for r in results["results"]:
        by_model.setdefault(r["model"], {})[r["task"]] = r
    tiny, bm25 = by_model.values()
    assert all(r["status"] == "ok" and 0 <= r["score"] <= 1 and r["wall_s"] > 0 for r in tiny.values())
    for name, r in bm25.items():  # BM25 runs retrieval only
        assert r["status"] == ("ok" if tasks[name]["type"] == "Retrieval" else "skipped")
    assert {"mteb", "m3e", "torch", "python"} <= set(results["versions"])
    assert results["suite"] == "smoke" and results["profile"] == "smoke"
    assert set(results["averages"][next(iter(by_model))]) >= {"overall", "Classification", "Retrieval"}


def test_table_report_and_chart(smoke_run: dict[str, Any]) -> None:
    out: Path = smoke_run["out"]
    table = smoke_run["stdout"]
    assert "average (all tasks)" in table and "average Retrieval" in table and "bm25" in table
    assert "*" in table  # bm25's overall average covers fewer tasks
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| task | type | metric |" in report and "![scores](scores.png)" in report
    assert "Wall time" in report and "m3e eval" in report
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[" in smoke_run["stderr"] and "/" in smoke_run["stderr"]  # tasks done / total


@pytest.mark.parametrize("suite", ["cmteb", "mteb-zh"])
def test_hub_suites_fail_clearly_offline(
    suite: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "random", "--suite", suite, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "HF_HUB_OFFLINE" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unknown_task_and_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_toy_tasks(tmp_path / "data")
    assert main(["eval", "random", "--suite", "smoke", "--data-dir", str(data), "--tasks", "Nope"]) == 2
    assert "unknown task(s) Nope" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "random", "--suite", "offline", "--data-dir", str(empty)]) == 2
    assert "m3e data build" in capsys.readouterr().err


def test_task_filter_and_comma_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_toy_tasks(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["eval", "random", "bm25", "--suite", "smoke", "--data-dir", str(data), "--out", str(out),
                 "-q", "--no-chart", "--tasks", "ToyInsuranceRetrieval,ToyHSKBitextMining"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [t["name"] for t in results["tasks"]] == ["ToyInsuranceRetrieval", "ToyHSKBitextMining"]
    assert not (out / "scores.png").exists()
    assert "--tasks ToyInsuranceRetrieval ToyHSKBitextMining" in results["command"]
    assert capsys.readouterr().err.count("[") == 0  # -q: no progress lines


def test_backends_side_by_side_in_one_run(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    """MODEL@BACKEND: the same model on torch and bf16 as two columns of one report."""
    data = write_toy_tasks(tmp_path / "data")
    out = tmp_path / "out"
    model = str(tiny_st_model_dir)
    code = main(["eval", model, f"{model}@bf16", "--suite", "smoke", "--data-dir", str(data),
                 "--out", str(out), "-q", "--no-chart", "--tasks", "ToyHSKBitextMining"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    labels = [m["label"] for m in results["models"]]
    assert labels == [tiny_st_model_dir.name, f"{tiny_st_model_dir.name}@bf16"]
    assert [m["backend"] for m in results["models"]] == ["torch", "bf16"]
    scores = [r["score"] for r in results["results"]]
    assert len(scores) == 2 and abs(scores[0] - scores[1]) < 0.1
    refused = main(["eval", "bm25@int8", "--suite", "smoke", "--data-dir", str(data),
                    "--out", str(tmp_path / "x")])
    assert refused == 2


def test_dev_suite_runs_the_dev_splits_only(tmp_path: Path) -> None:
    data = write_toy_tasks(tmp_path / "data")
    retrieval = data / "tasks" / "ToyInsuranceRetrieval"
    (retrieval / "dev.json").write_bytes((retrieval / "smoke.json").read_bytes())
    out = tmp_path / "out"
    code = main(["eval", "bm25", "--suite", "dev", "--data-dir", str(data), "--out", str(out),
                 "-q", "--no-chart"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["suite"] == results["profile"] == "dev"
    assert [t["name"] for t in results["tasks"]] == ["ToyInsuranceRetrieval"]
    assert [Path(t["file"]).name for t in results["tasks"]] == ["dev.json"]
    assert results["results"][0]["model"] == "bm25" and 0 < results["results"][0]["score"] <= 1


def test_training_evaluates_on_the_dev_suite(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    """`m3e train/finetune --eval dev` scores the model before and after on the dev splits, never on the
    test."""
    import m3e
    from m3e.errors import M3EError
    from m3e.training.finetuner import evaluate_scores

    data = write_toy_tasks(tmp_path / "data")
    retrieval = data / "tasks" / "ToyInsuranceRetrieval"
    (retrieval / "dev.json").write_bytes((retrieval / "smoke.json").read_bytes())
    model = m3e.load(str(tiny_st_model_dir))
    scores = evaluate_scores(model, "dev", None, data, label="before")
    assert list(scores) == ["ToyInsuranceRetrieval"]
    assert 0 < (scores["ToyInsuranceRetrieval"] or 0) <= 1
    with pytest.raises(M3EError, match="offline suites smoke, offline, dev"):
        evaluate_scores(model, "cmteb", None, data, label="before")
