"""Weight averaging of models fine-tuned from one start (a "model soup", Wortsman et al. 2022; WiSE-FT).

Averaging a fine-tuned model with the model it started from keeps most of what fine-tuning taught and gives back
much of what it cost elsewhere (the default model v2: classification and long documents, see docs/benchmarks.md),
with no training. The models must share the architecture, the tokenizer and every parameter name; the average is
taken in float32 and saved as a sentence-transformers directory (the first model's modules and prompts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from m3e.errors import M3EError


def average_models(
    models: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    weights: Sequence[float] | None = None,
    dtype: str | None = "fp16",
) -> Path:
    """Write the weighted average of ``models`` (equal weights by default) to ``output``; return its path."""
    import torch

    from m3e.loading import load_model

    if len(models) < 2:
        raise M3EError("averaging needs two models or more")
    shares = [1.0] * len(models) if weights is None else list(weights)
    if len(shares) != len(models) or any(w < 0 for w in shares) or sum(shares) <= 0:
        raise M3EError(f"give one non-negative weight per model ({len(models)}), not {list(shares)}")
    total = sum(shares)
    first = load_model(str(models[0]))
    tokenizer = _tokenizer_bytes(models[0])
    state = {k: v.float() * (shares[0] / total) for k, v in first.state_dict().items() if v.is_floating_point()}
    for path, share in zip(models[1:], shares[1:], strict=True):
        if _tokenizer_bytes(path) != tokenizer:
            raise M3EError(f"{path}: its tokenizer differs from {models[0]}'s; only models of one start can be averaged")
        other = load_model(str(path)).state_dict()
        if set(other) != set(first.state_dict()):
            raise M3EError(f"{path}: its parameters differ from {models[0]}'s; only models of one start can be averaged")
        for key in state:
            if other[key].shape != state[key].shape:
                raise M3EError(f"{path}: parameter {key} has shape {tuple(other[key].shape)}, not {tuple(state[key].shape)}")
            state[key] += other[key].float() * (share / total)
    with torch.no_grad():
        first.load_state_dict(state, strict=False)  # integer buffers (position ids) stay the first model's
    parts = "\n".join(f"- `{p}`: weight {w / total:.3g}" for p, w in zip(models, shares, strict=True))
    card = f"# {Path(output).name}\n\nThe weighted average of the parameters of models of one start (a model soup):\n\n{parts}\n"
    return first.save(output, model_card=card, dtype=dtype)


def _tokenizer_bytes(path: str | os.PathLike[str]) -> bytes | None:
    """The tokenizer's vocabulary and pipeline, comparable across saves: its truncation and padding settings (which
    a training run's max_length leaves behind) are dropped and piece scores rounded (a save writes the last digit
    of a float32 score in its own way)."""
    import json

    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        return None
    spec = json.loads(file.read_text(encoding="utf-8"))
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return json.dumps(_rounded(spec), sort_keys=True).encode()


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
