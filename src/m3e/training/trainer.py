"""Training an embedding model: :class:`EmbeddingTask` and the :class:`Trainer` that runs it.

The task trains ``EmbeddingModel.forward`` (the code that encodes at inference): each planned batch becomes text
columns (queries, positives, negatives; scored pairs; texts with teacher vectors), the columns become embeddings
through GradCache (:mod:`m3e.training.gradcache`), and the loss arithmetic is :mod:`m3e.training.losses`'s. The
loop around it (optimizer, checkpoints, exact resume, stop requests) is :mod:`m3e.training.loop`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3e.errors import M3EError
from m3e.training.batch_plan import PlannedBatch, build_columns, plan_epoch
from m3e.training.card import dataset_rows, display_name, model_card
from m3e.training.config import TrainConfig
from m3e.training.distributed import DistInfo
from m3e.training.gradcache import forward_backward
from m3e.training.loop import TrainingLoop, TrainResult, save_model_into
from m3e.training.losses import EmbeddingLoss, make_loss, matryoshka_dims
from m3e.training.records import TrainingDataset
from m3e.training.task import RunFacts, StepLoss

__all__ = ["EmbeddingTask", "TrainResult", "Trainer", "save_model_into"]


class EmbeddingTask:
    """An :class:`m3e.model.EmbeddingModel` trained contrastively (pairs, triplets), on scored pairs (CoSENT)
    or towards teacher vectors (distill), one loss per record type."""

    name = "embed"

    def __init__(self, model: Any, datasets: list[TrainingDataset], config: TrainConfig):
        self.model = model
        self.datasets = datasets
        self.config = config
        self._losses: dict[str, EmbeddingLoss] = {}

    def num_parameters(self) -> int:
        return int(self.model.num_parameters())

    def head(self) -> torch.nn.Module | None:
        dense: torch.nn.Module = self.model.dense
        return dense

    def plan(self, config: TrainConfig, epoch: int, drop_last: bool) -> list[PlannedBatch]:
        return plan_epoch(
            self.datasets,
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            shuffle=config.shuffle,
            no_duplicates=config.no_duplicates,
            drop_last=drop_last,
        )

    def forward_backward(
        self, batch: PlannedBatch, rng: np.random.Generator, config: TrainConfig, dist: DistInfo
    ) -> StepLoss:
        ds = self.datasets[batch.dataset]
        columns, labels = build_columns(ds, batch.indices, rng, config.num_negatives)
        n_global = len(columns[0])
        if dist.enabled:
            rank, b = dist.rank, n_global // dist.world_size
            columns = [c[rank * b : (rank + 1) * b] for c in columns]
            labels = labels[rank * b : (rank + 1) * b] if labels is not None else None
        loss = forward_backward(
            self.model, columns, labels, self._loss_for(ds),
            prompts=self._prompts(ds, len(columns)), mini_batch=config.mini_batch, bf16=config.bf16,
            gather=dist.enabled,
        )
        return StepLoss(loss, n_global)

    def _loss_for(self, ds: TrainingDataset) -> EmbeddingLoss:
        if ds.type not in self._losses:
            cfg = self.config
            self._losses[ds.type] = make_loss(ds.type, cfg.loss, cfg.temperature, cfg.symmetric,
                                              distill=cfg.distill_loss, distill_contrast=cfg.distill_contrast,
                                              matryoshka_dims=matryoshka_dims(cfg.matryoshka_dims))
        return self._losses[ds.type]

    def _prompts(self, ds: TrainingDataset, n_columns: int) -> list[str]:
        if not self.config.use_prompts:
            return [""] * n_columns
        if ds.type == "distill":  # the side the teacher embedded the texts with
            side = {"query": self.model.query_prompt, "document": self.model.document_prompt}
            return [side.get(ds.side or "", "")] * n_columns
        if ds.type not in ("pair", "triplet"):
            return [""] * n_columns
        return [self.model.query_prompt] + [self.model.document_prompt] * (n_columns - 1)

    def fingerprint(self) -> dict[str, Any]:
        # The loss of each record type (its temperature, Matryoshka sizes...): the loop's settings leave it out,
        # and a run resumed under another loss would silently become a mix of two runs.
        return {"losses": {ds.type: self._loss_for(ds).describe() for ds in self.datasets}}

    def load_weights(self, model_dir: Path) -> None:
        from m3e.loading import load_model

        saved = load_model(str(model_dir), device=str(self.model.device))
        missing, unexpected = self.model.load_state_dict(saved.state_dict(), strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise M3EError(f"{model_dir.parent}: model weights do not match ({(missing + unexpected)[:3]})")

    def card(self, facts: RunFacts) -> str:
        losses = sorted({self._loss_for(d).describe() for d in self.datasets})
        return model_card(
            name=facts.name,
            base_model=facts.base_model,
            datasets=dataset_rows(self.datasets),
            loss="; ".join(losses),
            hyper=facts.hyper,
            steps=facts.steps,
            train_seconds=facts.seconds,
            scores=facts.scores,
            scored_on=facts.scored_on,
            losses=facts.losses,
            dim=self.model.dim,
            max_length=self.model.max_length,
            pooling=self.model.pooling,
        )


class Trainer(TrainingLoop):
    """Train ``model`` (an :class:`m3e.model.EmbeddingModel`) on ``datasets`` as ``config`` says."""

    def __init__(self, model: Any, datasets: list[TrainingDataset], config: TrainConfig):
        super().__init__(EmbeddingTask(model, datasets, config), config)


_display_name = display_name  # its name here before the card helpers had a module of their own
