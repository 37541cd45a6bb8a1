"""The short model card written next to a fine-tuned model: data, loss, hyper-parameters, scores."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.model_card import ModelCard, python_block, table

if TYPE_CHECKING:
    from m3e.training.records import TrainingDataset
    from m3e.training.task import RunFacts


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
    losses: tuple[float, float] | None = None,
    dim: int | None = None,
    max_length: int | None = None,
    pooling: str | None = None,
) -> str:
    """The card of a fine-tuned embedding model: how to use it, data, training, scores before and after."""
    card = ModelCard(name, f"A sentence-transformers model fine-tuned with m3e from `{base_model}`.")
    card.section("Use", python_block(
        "import m3e  # or: from sentence_transformers import SentenceTransformer",
        "model = m3e.load('PATH')",
        "vectors = model.encode(['你好', 'hello'])",
    ))
    card.section("Training data", _datasets_table(datasets))
    training = [f"- loss: {loss}", f"- steps: {steps} ({train_seconds:.0f} s)", *_curve_lines(losses)]
    if dim is not None:
        training.append(f"- dimension {dim}, max length {max_length} tokens, pooling {pooling}")
    training.append(f"- hyper-parameters: `{json.dumps(hyper, ensure_ascii=False, sort_keys=True)}`")
    card.section("Training", training)
    if scores:  # the split matters: a dev-split score must not read as the test suite's
        card.section(f"Scores ({scored_on}, main score)", _before_after(scores, "task"))
    return card.render()


def reranker_card(
    facts: RunFacts,
    *,
    origin: str,
    datasets: list[dict[str, Any]],
    losses: list[str],
    teacher: str | None,
    arch: str,
    max_length: int,
) -> str:
    """The card of a fine-tuned reranker: how to use it, what it started from, data, training, scores."""
    card = ModelCard(
        facts.name, f"A cross-encoder reranker fine-tuned with m3e from `{facts.base_model}`, starting from {origin}."
    )
    card.section("Use", python_block(
        "import m3e  # or: from sentence_transformers import CrossEncoder; CrossEncoder('PATH')",
        "reranker = m3e.load_reranker('PATH')",
        "reranker.rank('车险理赔需要什么材料？', ['理赔需要保单和事故证明。', '今天天气很好'])",
    ))
    card.section("Training data", _datasets_table(datasets))
    training = [f"- loss: {'; '.join(losses)}"]
    if teacher:
        training.append(f"- teacher: {teacher}, its scores cached beside the data")
    training += [
        f"- steps: {facts.steps} ({facts.seconds:.0f} s)",
        *_curve_lines(facts.losses),
        f"- {arch} sequence classification, one logit (sigmoid activation), max length {max_length} tokens",
        f"- hyper-parameters: `{json.dumps(facts.hyper, ensure_ascii=False, sort_keys=True)}`",
    ]
    card.section("Training", training)
    if facts.scores:
        card.section(f"Scores ({facts.scored_on})", _before_after(facts.scores, "metric"))
    return card.render()


def dataset_rows(datasets: Sequence[TrainingDataset]) -> list[dict[str, Any]]:
    """What a card says of each training dataset: name, record type, records, weight and the file it came
    from (as written from the working directory)."""
    return [{"name": d.name, "type": d.type, "records": len(d), "weight": d.weight,
             "source": display_name(d.source) if d.source else ""} for d in datasets]


def _datasets_table(datasets: list[dict[str, Any]]) -> list[str]:
    rows: list[tuple[Any, ...]]
    if any(d.get("source") for d in datasets):
        rows = [(d["name"], d["type"], d.get("source") or "-", d["records"], f"{d.get('weight', 1.0):g}")
                for d in datasets]
        return table(["dataset", "type", "file", "records", "weight"], rows, numeric_from=3)
    rows = [(d["name"], d["type"], d["records"], f"{d.get('weight', 1.0):g}") for d in datasets]
    return table(["dataset", "type", "records", "weight"], rows, numeric_from=2)


def _curve_lines(losses: tuple[float, float] | None) -> list[str]:
    """The loss at the start and the end, and where the whole curve is (written beside the card)."""
    if losses is None:
        return []
    return [f"- training loss {losses[0]:.4f} at the first step, {losses[1]:.4f} at the last "
            "(every step: `loss.csv`, `loss.png` beside this card)"]


def _before_after(scores: dict[str, dict[str, float | None]], what: str) -> list[str]:
    rows = [(name, _fmt(pair.get("before")), _fmt(pair.get("after"))) for name, pair in scores.items()]
    return table([what, "before", "after"], rows)


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
