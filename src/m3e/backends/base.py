"""The interface between the model and its inference backends.

A backend replaces the transformer's forward pass with a faster runner and needs only a few things from the
model it accelerates (:class:`ModelParts`); the model talks to a backend only through :class:`Runner`. Both
are protocols, so the backends depend on nothing above them and ``m3e.model`` depends on the backends, one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class ModelParts(Protocol):
    """What a backend reads from the model: its transformer, where it was loaded from, its name and device,
    and what the exported graph takes and returns (``last_hidden_state`` for an embedder, ``logits`` for a
    reranker)."""

    name: str
    source_dir: Path | None

    @property
    def artefact_inputs(self) -> tuple[str, ...]: ...

    @property
    def artefact_output(self) -> str: ...

    @property
    def transformer(self) -> PreTrainedModel: ...

    @property
    def device(self) -> torch.device: ...


class Runner(Protocol):
    """Computes the exported output (an embedder's last hidden state, float32 [batch, seq, hidden]; a
    reranker's logits [batch, labels]) from padded features (``input_ids``, ``attention_mask``, ...)."""

    def __call__(self, features: dict[str, Tensor]) -> Tensor: ...


@runtime_checkable
class StreamingRunner(Runner, Protocol):
    """A runner that computes several batches at once (OpenVINO's throughput streams)."""

    @property
    def streams(self) -> int: ...

    @property
    def batch_tokens(self) -> int:
        """Padded tokens per batch that the runner computes fastest (larger batches are split)."""
        ...

    def run_many(self, batches: list[dict[str, Tensor]]) -> list[Tensor]: ...
