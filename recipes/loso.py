"""Leave-one-source-out runs of the default model's recipe: train without a source, score that source's tasks.

    python recipes/loso.py C A D B J [--recipe recipes/default-model-v2.yaml] [--runs runs]

For each source id (``m3e data`` ids; ``C`` is InsuranceQA): ``m3e train --recipe RECIPE --hold-out-source ID``
into ``runs/loso-ID`` (the import of the student is shared: a fold copies the first fold's ``init``), averaged
with its start as the bundled model is (``m3e average --weights 0.7,0.3``), then ``m3e eval`` on the offline
tasks built from that source (a task file's ``sources``; the dev split where the source has one). The fold's
score on a task says what the recipe does for a source it never trained on; beside the bundled model's (trained
with it) it measures how much of a gain is that source's own data. Resumable: a finished step is skipped when rerun.
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
SOUP_WEIGHTS = "0.7,0.3"  # as `make default-model` averages the bundled model (the Makefile's SOUP_WEIGHTS)


def tasks_of(source: str) -> dict[str, list[str]]:
    """profile -> the task names whose files were built from ``source`` (offline suite: full; dev where built)."""
    out: dict[str, list[str]] = {}
    for task_dir in sorted((data_dir() / "tasks").iterdir()):
        for profile in ("full", "dev"):
            path = task_dir / f"{profile}.json"
            if path.is_file() and source in (json.loads(path.read_text(encoding="utf-8")).get("sources") or []):
                out.setdefault(profile, []).append(task_dir.name)
    return out


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def soup_of(runs: Path, source: str, weights: str) -> Path:
    """A fold's average with its start; named by the weights, so a rerun at other weights never reuses it (nor
    its scores, stored beside it as ``<soup>-eval-<suite>``)."""
    return runs / f"loso-{source}-soup-{weights.replace(',', '-')}"


def fold(source: str, recipe: str, runs: Path, shared_init: Path | None, weights: str) -> Path:
    out = runs / f"loso-{source}"
    soup = soup_of(runs, source, weights)
    if shared_init is not None and not (out / "init").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared_init, out / "init")
        shutil.copy(shared_init.parent / "init-settings.json", out / "init-settings.json")
    if not (out / "model.safetensors").is_file():
        run([*M3E, "train", "--recipe", recipe, "-o", str(out), "--hold-out-source", source, "--resume",
             "--no-progress"])
    if not (soup / "model.safetensors").is_file():
        run([*M3E, "average", str(out), str(out / "init"), "--weights", weights, "-o", str(soup)])
    for profile, names in tasks_of(source).items():
        suite = "offline" if profile == "full" else "dev"
        target = soup.with_name(f"{soup.name}-eval-{suite}")
        if not (target / "results.json").is_file():
            run([*M3E, "eval", str(soup), "--suite", suite, "--tasks", *names, "--backend", "bf16",
                 "--out", str(target), "-q", "--no-chart"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--recipe", default="recipes/default-model-v2.yaml")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--weights", default=SOUP_WEIGHTS,
                        help="the fine-tune's and its start's shares in the average (the Makefile passes its own)")
    args = parser.parse_args()
    runs = Path(args.runs)
    shared: Path | None = None
    for source in args.sources:
        out = fold(source, args.recipe, runs, shared, args.weights)
        shared = shared or out / "init"
    print("\n| held-out source | split | task | score (leave-source-out, averaged with its start) |")
    print("|---|---|---|---:|")
    for source in args.sources:
        for suite in ("offline", "dev"):
            soup = soup_of(runs, source, args.weights)
            path = soup.with_name(f"{soup.name}-eval-{suite}") / "results.json"
            if path.is_file():
                for row in json.loads(path.read_text(encoding="utf-8"))["results"]:
                    if row.get("score") is not None:
                        print(f"| {source} | {suite} | {row['task']} | {100 * row['score']:.2f} |")


if __name__ == "__main__":
    main()
