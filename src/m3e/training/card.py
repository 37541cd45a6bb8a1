"""The short model card written next to a fine-tuned model: data, loss, hyper-parameters, scores."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def model_card(
    *,
    name: str,
    base_model: str,
    datasets: list[dict[str, Any]],
    loss: str,
    hyper: dict[str, Any],
    steps: int,
    train_seconds: float,
    scores: dict[str, dict[str, float | None]] | None = None,
    scored_on: str = "offline suite",
    dim: int | None = None,
    max_length: int | None = None,
    pooling: str | None = None,
) -> str:
    lines = [
        f"# {name}",
        "",
        f"A sentence-transformers model fine-tuned with m3e from `{base_model}`.",
        "",
        "```python",
        "import m3e  # or: from sentence_transformers import SentenceTransformer",
        "model = m3e.load('PATH')",
        "vectors = model.encode(['你好', 'hello'])",
        "```",
        "",
        "## Training data",
        "",
        "| dataset | type | records | weight |",
        "|---|---|---:|---:|",
    ]
    for d in datasets:
        lines.append(f"| {d['name']} | {d['type']} | {d['records']} | {d.get('weight', 1.0):g} |")
    lines += ["", "## Training", "", f"- loss: {loss}", f"- steps: {steps} ({train_seconds:.0f} s)"]
    if dim is not None:
        lines.append(f"- dimension {dim}, max length {max_length} tokens, pooling {pooling}")
    lines.append(f"- hyper-parameters: `{json.dumps(hyper, ensure_ascii=False, sort_keys=True)}`")
    if scores:
        # the split matters: a dev-split score must not read as the test suite's
        lines += ["", f"## Scores ({scored_on}, main score)", "", "| task | before | after |", "|---|---:|---:|"]
        for task, pair in scores.items():
            b, a = pair.get("before"), pair.get("after")
            lines.append(f"| {task} | {_fmt(b)} | {_fmt(a)} |")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def display_name(model: str | None) -> str:
    """How a card names the model a run started from: a local path as written from the working directory
    (``runs/default-model``, not ``/home/.../recipes/../runs/default-model``), a hub id as it is."""
    if not model:
        return "the m3e default model"
    path = Path(model).expanduser()
    if not path.exists():
        return model
    cwd = Path.cwd().resolve()
    # Lexical first: a `runs/` that is a symlink to other storage is still named `runs/...`.
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        try:
            return candidate.relative_to(cwd).as_posix()
        except ValueError:
            continue
    return path.resolve().as_posix()
