"""One training step's forward and backward, with optional gradient caching (GradCache, Gao et al. 2021).

GradCache makes the contrastive batch independent of memory: (1) embed the batch in mini-batches without a
graph, (2) compute the loss on those embeddings as leaves and keep d loss / d embedding, (3) embed each
mini-batch again with a graph (replaying its random state, so dropout masks match) and back-propagate the cached
gradient. The parameter gradients equal the full-batch gradients. Ours wraps any embedding loss (softmax, sigmoid,
CoSENT, MSE) and the cross-device gather; sentence-transformers' cached losses cover the ranking losses only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from m3e.training.distributed import gather_no_grad, gather_with_grad
from m3e.training.losses import EmbeddingLoss

# Sequence widths a batch is padded up to under bf16: CPU kernels are chosen (and cached) per shape, and a new
# shape on every step made bf16 steps several times slower than a few repeated ones.
WIDTH_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512)


def pad_to_bucket(features: dict[str, Tensor], pad_token_id: int) -> dict[str, Tensor]:
    """``features`` padded (masked) up to the next of WIDTH_BUCKETS; wider batches are left as they are."""
    width = features["input_ids"].shape[1]
    target = next((b for b in WIDTH_BUCKETS if b >= width), width)
    if target == width:
        return features
    extra = target - width
    out = {}
    for key, value in features.items():
        fill = pad_token_id if key == "input_ids" else 0
        out[key] = F.pad(value, (0, extra), value=fill)
    return out


def embed(model: Any, texts: Sequence[str], prompt: str = "", bf16: bool = False) -> Tensor:
    """Embeddings with a graph: the model's forward (pooled, Dense), normalised if the model normalises."""
    features = {k: v.to(model.device) for k, v in model.tokenize_batch(list(texts), prompt).items()}
    if bf16:
        features = pad_to_bucket(features, model.pad_token_id)
    ctx = torch.autocast(device_type=model.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        out = model(features, model.prompt_length(prompt))
    out = out.float()
    if getattr(model, "normalize_module", False):
        out = F.normalize(out, dim=-1)
    return out


def _rng_state(device: torch.device) -> tuple[Tensor, Any]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Any], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def forward_backward(
    model: Any,
    columns: Sequence[Sequence[str]],
    labels: np.ndarray | Tensor | None,
    loss_fn: EmbeddingLoss,
    *,
    prompts: Sequence[str] | None = None,
    mini_batch: int | None = None,
    bf16: bool = False,
    gather: bool = False,
) -> float:
    """Compute the loss of one (local slice of a) batch and accumulate parameter gradients; return the loss.

    ``gather``: concatenate every process's embeddings first (cross-device negatives); the returned loss is then
    the loss of the global batch.
    """
    prompts = list(prompts) if prompts is not None else [""] * len(columns)
    device = model.device
    lab: Tensor | None = None
    if labels is not None:
        lab = torch.as_tensor(labels, dtype=torch.float32, device=device)
        if gather:
            lab = gather_no_grad(lab)
    glue = gather_with_grad if gather else (lambda t: t)

    if not mini_batch or max(len(c) for c in columns) <= mini_batch:
        embs = [glue(embed(model, col, prompts[i], bf16)) for i, col in enumerate(columns)]
        loss = loss_fn(embs, lab)
        loss.backward()
        return float(loss.detach())

    # 1. embeddings without a graph, remembering each mini-batch's random state
    chunks: list[tuple[int, int, int, tuple[Tensor, Any]]] = []
    leaves: list[Tensor] = []
    with torch.no_grad():
        for c, col in enumerate(columns):
            parts = []
            for start in range(0, len(col), mini_batch):
                end = min(start + mini_batch, len(col))
                state = _rng_state(device)
                parts.append(embed(model, col[start:end], prompts[c], bf16))
                chunks.append((c, start, end, state))
            leaves.append(torch.cat(parts).requires_grad_(True))
    # 2. loss on the leaves: d loss / d embedding
    loss = loss_fn([glue(x) for x in leaves], lab)
    loss.backward()
    after = _rng_state(device)
    # 3. replay each mini-batch with a graph and push the cached gradient through the model
    for c, start, end, state in chunks:
        _set_rng_state(state, device)
        out = embed(model, columns[c][start:end], prompts[c], bf16)
        grad = leaves[c].grad
        assert grad is not None
        out.backward(grad[start:end])
    _set_rng_state(after, device)
    return float(loss.detach())
