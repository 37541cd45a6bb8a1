"""The one-liner: ``m3e.FineTuner.from_pretrained(MODEL, dataset).run(epochs=1)``.

``dataset`` is anything :func:`m3e.training.records.load_datasets` reads (files, a directory, a Hugging Face
dataset, a list of dicts). The result is a sentence-transformers directory with a model card; optional
evaluation on offline benchmark tasks runs before and after training and is printed side by side.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3e.atomic import write_atomic
from m3e.errors import M3EError
from m3e.training.config import EVAL_BEFORE, TrainConfig
from m3e.training.records import TrainingDataset, load_datasets

log = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    output: Path
    model: Any  # the fine-tuned EmbeddingModel (eval mode)
    steps: int
    train_seconds: float
    final_loss: float | None
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)  # task -> {"before", "after"}
    resumed_from: int | None = None


class FineTuner:
    """Fine-tune ``model`` on ``datasets`` as ``config`` says; keyword ``options`` are TrainConfig fields that
    replace the config's (without a config, the run directory is named after the model)."""

    def __init__(
        self, model: Any, datasets: list[TrainingDataset], model_name: str | None = None, *,
        config: TrainConfig | None = None, **options: Any,
    ):
        self.model = model
        self.datasets = datasets
        self.model_name = model_name
        if config is None:
            config = TrainConfig(model=model_name, output=f"{Path(str(model_name or 'm3e')).name}-finetuned")
        self.config = config.updated(options)

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str | None, dataset: Any, *, record_type: str | None = None,
        device: str | None = None, config: TrainConfig | None = None, **options: Any,
    ) -> FineTuner:
        """Load the model (anything :func:`m3e.loading.load_model` takes; None = the default model) and read
        the data (``record_type`` or the config's forces the record type)."""
        from m3e.loading import load_model

        if record_type is not None:
            options["record_type"] = record_type
        forced = options.get("record_type", config.record_type if config is not None else None)
        encoding = options.get("encoding", config.encoding if config is not None else "utf-8")
        datasets = load_datasets(dataset, forced, encoding=encoding)
        model = load_model(model_name_or_path, device=device)
        return cls(model, datasets, model_name=model_name_or_path, config=config, **options)

    def run(
        self,
        epochs: int | None = None,
        output_dir: str | Path | None = None,
        *,
        resume: bool = False,
        eval_suite: str | None = None,
        eval_tasks: list[str] | None = None,
        eval_data_dir: str | Path | None = None,
        **options: Any,
    ) -> FineTuneResult:
        """Train; ``options`` are :class:`TrainConfig` fields (batch_size, lr, loss, strategy, mini_batch,
        ...) for this run, and ``epochs`` / ``output_dir`` replace the config's when given."""
        from m3e.training.loop import save_model_into
        from m3e.training.trainer import Trainer

        if epochs is not None:
            options["epochs"] = epochs
        if output_dir is not None:
            options["output"] = str(output_dir)
        config = self.config.updated(options)
        trainer = Trainer(self.model, self.datasets, config)
        evaluation = _Evaluation(eval_suite or "offline", eval_tasks, eval_data_dir)
        want_eval = (eval_suite is not None or bool(eval_tasks)) and trainer.dist.is_main
        run_dir = config.checkpoint_path()  # the scores before training are kept with the checkpoints
        before = self._scores_before(evaluation, run_dir, resume) if want_eval else {}
        result = trainer.train(resume=resume)
        scores: dict[str, dict[str, float | None]] = {}
        if before:
            scores = self._scores_after(evaluation, before)
            card = trainer.card(result.steps, result.train_seconds, scores, scored_on=evaluation.scored_on)
            save_model_into(self.model, result.output, card, dtype=config.save_dtype)
        return FineTuneResult(
            result.output, self.model, result.steps, result.train_seconds, result.final_loss, scores,
            result.resumed_from,
        )

    def _scores_before(self, evaluation: _Evaluation, run_dir: Path, resume: bool) -> dict[str, float | None]:
        """The starting model's scores, kept beside the checkpoints: a resumed run does not score it again."""
        saved = run_dir / EVAL_BEFORE
        key = {"suite": evaluation.suite, "tasks": sorted(evaluation.tasks or [])}
        cached = json.loads(saved.read_text(encoding="utf-8")) if resume and saved.is_file() else {}
        if cached.get("key") == key:
            scores: dict[str, float | None] = cached["scores"]
            return scores
        scores = evaluation.scores(self.model, label="before")
        if scores:
            write_atomic(saved, json.dumps({"key": key, "scores": scores}, indent=2) + "\n")
        return scores

    def _scores_after(
        self, evaluation: _Evaluation, before: dict[str, float | None]
    ) -> dict[str, dict[str, float | None]]:
        """Task -> {"before", "after"}, printed side by side."""
        after = evaluation.scores(self.model, label="after")
        tasks = dict.fromkeys([*before, *after])
        scores = {t: {"before": before.get(t), "after": after.get(t)} for t in tasks}
        print(format_side_by_side(scores), file=sys.stderr if not sys.stdout.isatty() else sys.stdout)
        return scores


@dataclass(frozen=True)
class _Evaluation:
    """The before/after evaluation a run asked for."""

    suite: str
    tasks: list[str] | None
    data_dir: str | Path | None

    def scores(self, model: Any, label: str) -> dict[str, float | None]:
        return evaluate_scores(model, self.suite, self.tasks, self.data_dir, label=label)

    @property
    def scored_on(self) -> str:
        """How the model card names the scores' source (a dev-split score must not read as the test's)."""
        return f"{self.suite} suite" + (f", tasks {', '.join(self.tasks)}" if self.tasks else "")


def evaluate_scores(model: Any, suite: str, tasks: list[str] | None, data_dir: str | Path | None, label: str) -> dict[str, float | None]:
    """Main score per task on an offline suite via m3e.evaluation; {} with a message when it is unavailable."""
    try:
        from m3e.evaluation.runner import ModelSpec, run
        from m3e.evaluation.suites import OFFLINE_PROFILES, get_suite
    except ImportError as exc:
        print(f"evaluation skipped: m3e.evaluation is not available ({exc})", file=sys.stderr)
        return {}
    if suite not in OFFLINE_PROFILES:
        raise M3EError(f"--eval must be one of the offline suites {', '.join(OFFLINE_PROFILES)}, not {suite!r}")
    try:
        s = get_suite(suite, tasks or None, data_dir)
    except M3EError as exc:
        print(f"evaluation skipped: {exc}", file=sys.stderr)
        return {}
    import warnings

    was_training = model.training
    model.eval()
    print(f"evaluating ({label} training) on {len(s.tasks)} {suite} task(s)...", file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # metric libraries warn per fold on tiny test sets
            outcomes = run([ModelSpec(label=label, kind="object", obj=model)], s.tasks)
    finally:
        model.train(was_training)
    return {o.task: o.score for o in outcomes}


def format_side_by_side(scores: dict[str, dict[str, float | None]], label: str = "task") -> str:
    width = max([len(label), *(len(t) for t in scores)])
    lines = [f"{label:<{width}}  {'before':>8}  {'after':>8}  {'delta':>8}"]
    for task, pair in scores.items():
        b, a = pair.get("before"), pair.get("after")
        delta = f"{(a - b) * 100:+8.2f}" if a is not None and b is not None else f"{'-':>8}"
        lines.append(f"{task:<{width}}  {_pct(b)}  {_pct(a)}  {delta}")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return f"{x * 100:8.2f}" if x is not None else f"{'-':>8}"


__all__ = ["FineTuneResult", "FineTuner"]
