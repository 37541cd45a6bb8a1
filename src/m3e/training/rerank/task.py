"""Training a cross-encoder: :class:`RerankTask`, the :class:`m3e.training.task.TrainingTask` of a reranker.

A planned batch is ``batch_size`` records of one dataset; each becomes a query group (:mod:`.groups`), the
groups' (query, candidate) pairs are tokenized as the reranker pairs them at inference (the query, then the
candidate's first window) and scored by the sequence classifier, and the logits [groups, candidates] go to the
dataset's loss (:mod:`.losses`). ``mini_batch`` scores the batch in chunks of that many groups whose gradients
accumulate; the losses are sums divided by the whole batch's groups (or pairs), so this is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from m3e.errors import M3EError
from m3e.reranker import Reranker
from m3e.training import distributed as dist_
from m3e.training.batch_plan import PlannedBatch, plan_epoch
from m3e.training.card import dataset_rows, reranker_card
from m3e.training.config import TrainConfig
from m3e.training.distributed import DistInfo
from m3e.training.rerank.groups import Group, RerankDataset, build_groups
from m3e.training.rerank.losses import RerankLoss, make_rerank_loss
from m3e.training.rerank.teacher import Teacher
from m3e.training.task import RunFacts, StepLoss


class RerankTask:
    """A :class:`m3e.reranker.Reranker` trained on query groups (listwise, pointwise or from a teacher's scores)
    and on scored pairs (pointwise); ``origin`` says in the card what the run started from."""

    name = "rerank"

    def __init__(
        self, model: Reranker, datasets: list[RerankDataset], config: TrainConfig, *,
        teacher: Teacher | None = None, origin: str = "", evaluated_on: str | None = None,
    ):
        if model.num_labels != 1:
            raise M3EError(f"training needs a one-logit reranker; {model.name!r} has {model.num_labels} labels")
        self.model = model
        self.datasets = datasets
        self.teacher = teacher
        self.origin = origin
        self.evaluated_on = evaluated_on
        self.group_size = config.group_size
        self._losses = {
            ds.type: make_rerank_loss(
                ds.type, config.loss, teacher_kind=teacher.kind if teacher else None,
                teacher_temperature=config.teacher_temperature,
            )
            for ds in datasets
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def head(self) -> torch.nn.Module | None:
        classifier = self.model.transformer
        for name in ("classifier", "score"):  # BERT / XLM-R and most others; a few decoder classifiers
            module = getattr(classifier, name, None)
            if isinstance(module, torch.nn.Module):
                return module
        return None

    def plan(self, config: TrainConfig, epoch: int, drop_last: bool) -> list[PlannedBatch]:
        # Groups meet no other group in the loss: duplicates in a batch are harmless, and one group is a batch.
        return plan_epoch(
            self.datasets, config.batch_size, seed=config.seed, epoch=epoch, shuffle=config.shuffle,
            no_duplicates=False, drop_last=drop_last, min_batch=1,
        )

    def forward_backward(
        self, batch: PlannedBatch, rng: np.random.Generator, config: TrainConfig, dist: DistInfo
    ) -> StepLoss:
        ds = self.datasets[batch.dataset]
        everyone = build_groups(ds, batch.indices, rng, config.group_size)
        groups = _share(everyone, dist)
        loss_fn = self._losses[ds.type]
        units = loss_fn.units(len(groups), len(groups[0].docs))
        chunk = config.mini_batch or len(groups)
        total = 0.0
        for start in range(0, len(groups), chunk):
            loss = self._chunk_loss(groups[start : start + chunk], loss_fn, config.bf16)
            (loss / units).backward()
            total += float(loss.detach())
        mean = total / units
        pairs = sum(len(g.docs) for g in everyone)
        return StepLoss(dist_.all_reduce_mean(mean) if dist.enabled else mean, pairs)

    def _chunk_loss(self, groups: Sequence[Group], loss_fn: RerankLoss, bf16: bool) -> Tensor:
        """The summed loss of some groups (they have the same number of candidates: one dataset's)."""
        features = pair_features(self.model, [pair for g in groups for pair in g.pairs()])
        autocast = torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with autocast:
            logits = self.model.logits(features)
        logits = logits.float().view(len(groups), -1)
        labels = torch.tensor([g.labels for g in groups], dtype=torch.float32, device=logits.device)
        teacher = None
        if all(g.teacher is not None for g in groups):
            teacher = torch.tensor([g.teacher for g in groups], dtype=torch.float32, device=logits.device)
        return loss_fn(logits, labels, teacher)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "group_size": self.group_size,
            "teacher": self.teacher.key if self.teacher else None,
            "held_out": self.evaluated_on,
        }

    def load_weights(self, model_dir: Path) -> None:
        from m3e.loading import load_reranker

        saved = load_reranker(str(model_dir), device=str(self.model.device))
        self.model.load_state_dict(saved.state_dict())

    def card(self, facts: RunFacts) -> str:
        return reranker_card(
            facts,
            origin=self.origin,
            datasets=dataset_rows(self.datasets),
            losses=sorted({loss.describe() for loss in self._losses.values()}),
            teacher=f"{self.teacher.name} ({self.teacher.kind})" if self.teacher else None,
            arch=str(self.model.transformer.config.model_type),
            max_length=self.model.max_length,
        )


def _share(groups: list[Group], dist: DistInfo) -> list[Group]:
    """This process's equal slice of a batch's groups (all of them in a single process)."""
    if dist.enabled:
        size = len(groups) // dist.world_size
        groups = groups[dist.rank * size : (dist.rank + 1) * size]
    if not groups:
        raise M3EError(f"a batch has no groups for process {dist.rank}")
    return groups


def pair_features(reranker: Reranker, pairs: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """Padded inputs of (query, candidate) pairs laid out as the reranker lays them out at inference, the
    candidate cut to its first window (training reads no further)."""
    return reranker.pair_features(pairs, first_window_only=True)
