"""Training configuration: one dataclass shared by `m3e finetune`, `m3e train --recipe` and FineTuner.

Defaults that depend on the model are filled by :func:`resolve_defaults` (uniem's rule for the learning rate by
parameter count; warmup then cosine decay, as in the M3E recipe).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3e.errors import M3EError
from m3e.extras import require


@dataclass
class TrainConfig:
    model: str | None = None  # what the run starts from (path or name; None = the default model)
    output: str = "m3e-finetuned"
    epochs: int = 1
    max_steps: int | None = None  # stop early after this many optimizer steps
    batch_size: int = 32  # the contrastive (global) batch: all processes together
    mini_batch: int | None = None  # GradCache chunk size; None = no gradient caching
    lr: float | None = None  # None = by model size
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None
    scheduler: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float | None = 1.0
    max_length: int | None = None  # None = the model's own
    record_type: str | None = None  # force pair | triplet | scored | distill
    loss: str = "softmax"  # softmax | sigmoid (pairs and triplets); CoSENT for scored, MSE for distill
    temperature: float = 0.05
    symmetric: bool = False
    distill_loss: str = "mse"  # mse | cosine (distill datasets)
    distill_contrast: float = 0.0  # cosine distillation: weight of the in-batch softmax against teacher vectors
    num_negatives: int = 1
    strategy: str = "full"  # full | lora | bitfit
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    bf16: bool = False
    shuffle: bool = True
    no_duplicates: bool = True
    use_prompts: bool = True  # the model's query / document prompts on the query / passage columns
    seed: int = 42
    save_dtype: str | None = None  # the final model's weights on disk: fp16 | bf16 halve its size (None: fp32)
    save_steps: int = 200
    keep_checkpoints: int = 2
    log_steps: int = 1
    progress: bool | None = None  # None: a bar when stderr is a terminal
    weights: dict[str, float] = field(default_factory=dict)  # dataset name -> weight (passes per epoch)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise M3EError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)


def default_lr(num_parameters: int, strategy: str = "full") -> float:
    """uniem's table for full fine-tuning (1e-4 up to 80M parameters, 5e-5 up to 200M, else 8e-6 ... we use 1e-5);
    adapters and biases take larger steps."""
    if strategy == "lora":
        return 2e-4
    if strategy == "bitfit":
        return 5e-4
    if num_parameters <= 80_000_000:
        return 1e-4
    if num_parameters <= 200_000_000:
        return 5e-5
    return 1e-5


def resolve_defaults(config: TrainConfig, num_parameters: int) -> TrainConfig:
    out = dataclasses.replace(config)
    if out.lr is None:
        out.lr = default_lr(num_parameters, out.strategy)
    if out.scheduler not in ("cosine", "linear", "constant"):
        raise M3EError(f"scheduler must be cosine, linear or constant, not {out.scheduler!r}")
    if out.batch_size < 2:
        raise M3EError("batch size must be at least 2 (in-batch negatives)")
    if out.mini_batch is not None and out.mini_batch < 1:
        raise M3EError("mini batch must be >= 1")
    return out


def lr_lambda(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then cosine/linear/constant."""
    import math

    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------- recipes
def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file: YAML (.yaml/.yml), JSON or TOML. See :mod:`m3e.cli.train` for the keys."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise M3EError(f"{p}: no such recipe file")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            yaml = require("yaml", purpose="a YAML recipe", extra="train", package="pyyaml")  # JSON, TOML: stdlib
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except M3EError:
        raise
    except Exception as exc:  # parse errors of three libraries
        raise M3EError(f"{p}: cannot parse the recipe: {exc}") from None
    if not isinstance(data, dict):
        raise M3EError(f"{p}: a recipe must be a mapping")
    return data
