"""The one-liner for rerankers: ``RerankFineTuner.from_pretrained(MODEL, "groups.jsonl").run(output_dir=DIR)``.

``MODEL`` is a reranker, or an embedding model whose encoder starts a reranker with a fresh head
(:mod:`.start`); the data are triplet records (query groups) and scored pairs (:mod:`.groups`). Asked for an
evaluation (``eval_split`` or ``eval_data``), the run scores held-out groups before and after training and
prints them side by side; the scores go into the model card.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3e.atomic import write_atomic
from m3e.reranker import Reranker
from m3e.training.config import EVAL_BEFORE, TrainConfig
from m3e.training.finetuner import format_side_by_side
from m3e.training.loop import TrainingLoop, save_model_into
from m3e.training.records import TrainingDataset, load_datasets
from m3e.training.rerank.groups import HeldOut, RerankDataset, evaluation_groups, hold_out, rerank_datasets
from m3e.training.rerank.metrics import METRICS, score_groups
from m3e.training.rerank.start import starting_reranker
from m3e.training.rerank.task import RerankTask
from m3e.training.rerank.teacher import Teacher, attach_teacher_scores

Scores = dict[str, dict[str, float | None]]


@dataclass
class RerankResult:
    output: Path
    model: Reranker  # the fine-tuned reranker (eval mode)
    steps: int
    train_seconds: float
    final_loss: float | None
    scores: Scores = field(default_factory=dict)  # metric -> {"before", "after"} on the held-out groups
    resumed_from: int | None = None


class RerankFineTuner:
    """Fine-tune the reranker ``model`` on ``datasets`` as ``config`` says (its task is always rerank);
    keyword ``options`` are TrainConfig fields that replace the config's."""

    def __init__(
        self, model: Reranker, datasets: list[TrainingDataset], model_name: str | None = None, *,
        origin: str = "its own weights and classification head", config: TrainConfig | None = None, **options: Any,
    ):
        self.model = model
        self.datasets = rerank_datasets(datasets)
        self.model_name = model_name
        self.origin = origin
        if config is None:
            config = TrainConfig(task="rerank", model=model_name,
                                 output=f"{Path(str(model_name or 'm3e')).name}-reranker")
        self.config = config.updated({"task": "rerank", **options})

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str | None, dataset: Any, *, record_type: str | None = None,
        device: str | None = None, config: TrainConfig | None = None, **options: Any,
    ) -> RerankFineTuner:
        """Read the data (errors name file and line before any model is loaded), then the starting reranker
        (None: the default embedding model's encoder with a fresh head)."""
        if record_type is not None:
            options["record_type"] = record_type
        forced = options.get("record_type", config.record_type if config is not None else None)
        encoding = options.get("encoding", config.encoding if config is not None else "utf-8")
        datasets = load_datasets(dataset, forced, encoding=encoding)
        seed = int(options.get("seed", config.seed if config is not None else TrainConfig.seed))
        start = starting_reranker(model_name_or_path, device=device, seed=seed)
        return cls(start.reranker, datasets, model_name_or_path, origin=start.origin, config=config, **options)

    def run(
        self,
        epochs: int | None = None,
        output_dir: str | Path | None = None,
        *,
        resume: bool = False,
        eval_split: float | None = None,
        eval_data: Any = None,
        **options: Any,
    ) -> RerankResult:
        """Train; ``options`` are TrainConfig fields for this run. ``eval_data`` (triplet records) or a held-out
        share ``eval_split`` of the training queries are scored before and after (MRR@10, nDCG@10, hit@1)."""
        if epochs is not None:
            options["epochs"] = epochs
        if output_dir is not None:
            options["output"] = str(output_dir)
        config = self.config.updated(options)
        datasets, held_out, teacher = self._prepare_data(config, eval_split, eval_data)
        task = RerankTask(self.model, datasets, config, teacher=teacher, origin=self.origin,
                          evaluated_on=held_out.source if held_out else None)
        loop = TrainingLoop(task, config)
        run_dir = config.checkpoint_path()  # the scores before training are kept with the checkpoints
        evaluate = held_out is not None and loop.dist.is_main
        before = self._scores_before(held_out, run_dir, resume) if evaluate and held_out else {}
        result = loop.train(resume=resume)
        scores: Scores = {}
        if held_out is not None and before:
            scores = self._scores_after(held_out, before)
            card = loop.card(result.steps, result.train_seconds, scores, scored_on=held_out.source)
            save_model_into(self.model, result.output, card, dtype=config.save_dtype)
        return RerankResult(result.output, self.model, result.steps, result.train_seconds, result.final_loss,
                            scores, result.resumed_from)

    def _prepare_data(
        self, config: TrainConfig, eval_split: float | None, eval_data: Any
    ) -> tuple[list[RerankDataset], HeldOut | None, Teacher | None]:
        """The teacher's scores (of whole files: that is what the cache is keyed by), then the held-out split."""
        teacher = Teacher.resolve(config.teacher) if config.teacher else None
        if teacher is not None:
            attach_teacher_scores(self.datasets, teacher, device=str(self.model.device))
        if eval_data is not None:
            groups = evaluation_groups(load_datasets(eval_data, "triplet", encoding=config.encoding))
            return self.datasets, HeldOut(groups, f"{len(groups)} groups of {_describe(eval_data)}"), teacher
        if eval_split is not None:
            kept, held_out = hold_out(self.datasets, eval_split, config.seed)
            return kept, held_out, teacher
        return self.datasets, None, teacher

    def _scores_before(self, held_out: HeldOut, run_dir: Path, resume: bool) -> dict[str, float]:
        """The starting model's scores, kept beside the checkpoints: a resumed run does not score it again."""
        saved = run_dir / EVAL_BEFORE
        key = {"held_out": held_out.source}
        cached = json.loads(saved.read_text(encoding="utf-8")) if resume and saved.is_file() else {}
        if cached.get("key") == key:
            kept: dict[str, float] = cached["scores"]
            return kept
        print(f"evaluating (before training) on {held_out.source}...", file=sys.stderr, flush=True)
        scores = score_groups(self.model, held_out.groups)
        write_atomic(saved, json.dumps({"key": key, "scores": scores}, indent=2) + "\n")
        return scores

    def _scores_after(self, held_out: HeldOut, before: dict[str, float]) -> Scores:
        print(f"evaluating (after training) on {held_out.source}...", file=sys.stderr, flush=True)
        after = score_groups(self.model, held_out.groups)
        scores: Scores = {m: {"before": before.get(m), "after": after.get(m)} for m in METRICS}
        print(format_side_by_side(scores, label="metric"), file=sys.stderr if not sys.stdout.isatty() else sys.stdout)
        return scores


def _describe(data: Any) -> str:
    if isinstance(data, str | Path):
        return Path(data).name
    return "the evaluation records"


__all__ = ["RerankFineTuner", "RerankResult"]
