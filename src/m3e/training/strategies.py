"""What is trained: all parameters, LoRA adapters (peft) or biases only (BitFit); gradient checkpointing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from m3e.errors import M3EError
from m3e.extras import require
from m3e.training.config import STRATEGIES


def apply_strategy(
    model: Any, strategy: str = "full", *, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05,
    lora_targets: list[str] | None = None, head: torch.nn.Module | None = None,
) -> Any:
    """Mark trainable parameters (or wrap the transformer with LoRA, training ``head`` in full beside the
    adapters: an embedder's Dense layers, a reranker's classifier). Returns the model."""
    if strategy not in STRATEGIES:
        raise M3EError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if strategy == "bitfit":
        n = 0
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias"))
            n += int(p.requires_grad)
        if n == 0:
            raise M3EError("BitFit: this model has no bias parameters")
        return model
    peft = require("peft", purpose="LoRA", extra="train")
    config = peft.LoraConfig(
        r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=lora_targets or _targets(model.transformer), bias="none",
    )
    model.transformer = peft.get_peft_model(model.transformer, config)
    if head is not None:  # a head is small, and a fresh one must learn
        for p in head.parameters():
            p.requires_grad_(True)
    return model


def _targets(transformer: torch.nn.Module) -> list[str]:
    """Attention projections by their common names (BERT/RoBERTa/XLM-R: query/key/value; others: q/k/v_proj)."""
    names = {n.rsplit(".", 1)[-1] for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    for group in (["query", "key", "value"], ["q_proj", "k_proj", "v_proj"], ["q", "k", "v"], ["q_lin", "k_lin", "v_lin"]):
        if set(group) <= names:
            return group
    raise M3EError(f"LoRA: no attention projections found among {sorted(names)[:12]}; pass lora_targets")


def is_lora(model: Any) -> bool:
    return hasattr(model.transformer, "peft_config")


def enable_gradient_checkpointing(model: Any) -> None:
    t = model.transformer
    base = t.get_base_model() if hasattr(t, "get_base_model") else t
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise M3EError(f"{type(base).__name__} does not support gradient checkpointing")
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5 name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise M3EError(f"checkpoint does not match the model (e.g. {missing[0]})")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


@contextmanager
def saveable(model: Any) -> Iterator[Any]:
    """The model as a plain transformer for saving: LoRA weights merged into a copy, the training model intact."""
    if not is_lora(model):
        yield model
        return
    import copy

    peft_model = model.transformer
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for name in ("activation_checkpointing_disable", "gradient_checkpointing_disable"):
        if hasattr(merged, name):
            getattr(merged, name)()
            break
    model.transformer = merged
    try:
        yield model
    finally:
        model.transformer = peft_model
