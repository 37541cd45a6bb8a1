"""The seam between the training loop and what it trains: a :class:`TrainingTask`.

The loop (:mod:`m3e.training.loop`) owns what every run shares: optimizer and schedule, the order of batches,
checkpoints and exact resume, stop requests, the loss curve, the progress bar and the final save. A task owns what
depends on the model: which batches an epoch has, how one batch becomes a loss (forward and backward), how a
checkpoint's weights are read back, and the model card. :class:`m3e.training.trainer.EmbeddingTask` trains an
embedding model; :class:`m3e.training.rerank.task.RerankTask` trains a cross-encoder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from m3e.training.batch_plan import PlannedBatch
from m3e.training.config import TrainConfig
from m3e.training.distributed import DistInfo
from m3e.training.records import TrainingDataset


class TrainableModel(Protocol):
    """What the loop needs of a model: a torch module around a Hugging Face ``transformer`` (LoRA and gradient
    checkpointing act on it), a token length it truncates at, and a save that writes a loadable directory."""

    transformer: Any
    max_length: int
    training: bool

    @property
    def device(self) -> torch.device: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.nn.Parameter]]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def save(
        self, path: str | os.PathLike[str], *, model_card: str | None = None, dtype: str | None = None
    ) -> Path: ...


@dataclass(frozen=True)
class StepLoss:
    """One batch's loss (of the whole global batch) and its size in examples, for the curve and the rate."""

    loss: float
    examples: int


@dataclass(frozen=True)
class RunFacts:
    """What a model card reports about the run beside the task's own description."""

    name: str  # the run directory's name
    base_model: str  # how the card names the starting model
    hyper: dict[str, Any]  # the options that applied, as set
    steps: int
    seconds: float
    scores: dict[str, dict[str, float | None]] | None
    scored_on: str
    losses: tuple[float, float] | None = None  # the loss at the first and the last logged step


class TrainingTask(Protocol):
    """A model and its data as the loop trains them (see the module's description)."""

    name: str  # "embed" | "rerank": which TrainConfig options apply (their ``tasks``)

    @property
    def model(self) -> TrainableModel: ...

    @property
    def datasets(self) -> Sequence[TrainingDataset]: ...

    def num_parameters(self) -> int:
        """Parameters of the model (the default learning rate follows the size)."""
        ...

    def head(self) -> torch.nn.Module | None:
        """The small layers after the transformer that LoRA trains in full beside the adapters."""
        ...

    def plan(self, config: TrainConfig, epoch: int, drop_last: bool) -> list[PlannedBatch]:
        """The batches of one epoch, a pure function of (data, config, epoch) so a resume rebuilds them."""
        ...

    def forward_backward(
        self, batch: PlannedBatch, rng: np.random.Generator, config: TrainConfig, dist: DistInfo
    ) -> StepLoss:
        """The loss of one planned batch, its gradients accumulated on the parameters (this process's share
        under torchrun); ``rng`` is the batch's own randomness (which positive, which negatives)."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What besides the loop's settings a checkpoint must have been written for (extra keys only)."""
        ...

    def load_weights(self, model_dir: Path) -> None:
        """Put the weights saved in a checkpoint's model directory into :attr:`model`."""
        ...

    def card(self, facts: RunFacts) -> str:
        """The final model's card."""
        ...
