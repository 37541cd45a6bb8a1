"""Pooling: token embeddings -> one vector per text.

The sentence-transformers modes (cls, mean, max, mean_sqrt_len_tokens, weightedmean,
lasttoken) are computed exactly as sentence-transformers does, so vectors match. uniem's
``first_last_mean`` and ``embedding_last_mean`` need more than the last layer and have no
sentence-transformers equivalent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Our names (and uniem's) -> canonical mode.
POOLING_ALIASES: dict[str, str] = {
    "mean": "mean",
    "last_mean": "mean",
    "avg": "mean",
    "cls": "cls",
    "max": "max",
    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "weightedmean": "weightedmean",
    "last_weighted": "weightedmean",
    "lasttoken": "lasttoken",
    "first_last_mean": "first_last_mean",
    "embedding_last_mean": "embedding_last_mean",
}

# Modes that sentence-transformers' Pooling module implements (and can therefore load).
ST_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

# The flag names of sentence-transformers' 1_Pooling/config.json.
ST_CONFIG_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}

# Modes that need hidden states other than the last layer.
NEEDS_HIDDEN_STATES = ("first_last_mean", "embedding_last_mean")


def canonical_pooling(name: str) -> str:
    from m3e.errors import M3EError

    key = name.strip().lower()
    if key not in POOLING_ALIASES:
        raise M3EError(f"unknown pooling {name!r}; choose one of: {', '.join(sorted(POOLING_ALIASES))}")
    return POOLING_ALIASES[key]


def pooling_from_st_config(config: dict[str, Any]) -> tuple[str, bool]:
    """Read a sentence-transformers Pooling config (old flag style or new ``pooling_mode``)."""
    include_prompt = bool(config.get("include_prompt", True))
    mode = config.get("pooling_mode")
    if isinstance(mode, list):
        if len(mode) != 1:
            from m3e.errors import M3EError

            raise M3EError(f"concatenated pooling modes {mode} are not supported")
        mode = mode[0]
    if isinstance(mode, str):
        return canonical_pooling(mode), include_prompt
    enabled = [m for m, flag in ST_CONFIG_FLAGS.items() if config.get(flag)]
    if len(enabled) != 1:
        from m3e.errors import M3EError

        raise M3EError(f"pooling config must enable exactly one mode, found {enabled or 'none'}")
    return enabled[0], include_prompt


def st_pooling_config(mode: str, dim: int, include_prompt: bool = True) -> dict[str, Any]:
    """The 1_Pooling/config.json that every sentence-transformers version reads."""
    config: dict[str, Any] = {"word_embedding_dimension": dim}
    for m, flag in ST_CONFIG_FLAGS.items():
        config[flag] = m == mode
    config["include_prompt"] = include_prompt
    return config


def _masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    acc = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
    m = mask.unsqueeze(-1).to(tokens.dtype)
    summed = (tokens * m).sum(dim=1, dtype=acc)
    count = torch.clamp(m.sum(dim=1, dtype=acc), min=1e-9)
    return summed / count


def pool(
    mode: str,
    token_embeddings: Tensor,
    attention_mask: Tensor,
    hidden_states: tuple[Tensor, ...] | None = None,
    prompt_length: int = 0,
) -> Tensor:
    """Pool ``token_embeddings`` [batch, seq, dim] under ``attention_mask`` [batch, seq].

    ``prompt_length`` > 0 drops that many leading tokens from the mask (sentence-transformers'
    ``include_prompt=False``). Inputs are right-padded.
    """
    if prompt_length:
        attention_mask = attention_mask.clone()
        attention_mask[:, :prompt_length] = 0
    if mode == "cls":
        # The first unmasked position: token 0, or the first token after an excluded prompt.
        first = attention_mask.to(torch.int).argmax(dim=1)
        return token_embeddings[torch.arange(token_embeddings.shape[0], device=first.device), first]
    if mode == "mean":
        return _masked_mean(token_embeddings, attention_mask).to(token_embeddings.dtype)
    if mode == "mean_sqrt_len_tokens":
        acc = torch.float32 if token_embeddings.dtype in (torch.float16, torch.bfloat16) else token_embeddings.dtype
        m = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        summed = (token_embeddings * m).sum(dim=1, dtype=acc)
        return (summed / torch.sqrt(torch.clamp(m.sum(dim=1, dtype=acc), min=1e-9))).to(token_embeddings.dtype)
    if mode == "max":
        m = attention_mask.unsqueeze(-1).expand_as(token_embeddings)
        return token_embeddings.masked_fill(m == 0, float("-inf")).max(dim=1).values
    if mode == "weightedmean":
        acc = torch.float32 if token_embeddings.dtype in (torch.float16, torch.bfloat16) else token_embeddings.dtype
        weights = torch.arange(1, token_embeddings.shape[1] + 1, device=token_embeddings.device, dtype=acc)
        weighted = attention_mask.unsqueeze(-1).to(acc) * weights.view(1, -1, 1)
        summed = (token_embeddings * weighted).sum(dim=1)
        return (summed / torch.clamp(weighted.sum(dim=1), min=1e-9)).to(token_embeddings.dtype)
    if mode == "lasttoken":
        last = attention_mask.sum(dim=1).long() - 1
        last = torch.clamp(last, min=0)
        return token_embeddings[torch.arange(token_embeddings.shape[0], device=last.device), last]
    if mode in NEEDS_HIDDEN_STATES:
        if hidden_states is None:
            raise ValueError(f"{mode} pooling needs the transformer's hidden states")
        first = hidden_states[1] if mode == "first_last_mean" else hidden_states[0]
        both = (_masked_mean(first, attention_mask) + _masked_mean(hidden_states[-1], attention_mask)) / 2
        return both.to(token_embeddings.dtype)
    raise ValueError(f"unknown pooling mode {mode!r}")
