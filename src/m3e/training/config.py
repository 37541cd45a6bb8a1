"""Training configuration: :class:`TrainConfig` declares every option of a run once.

Each field carries its help text, its command-line flag, its choices and whether `m3e finetune` and
`m3e train` expose it (:func:`train_options`); the CLI generates its flags from that, a recipe's ``train:``
mapping is checked against it (unknown keys, types, choices), and :class:`m3e.training.finetuner.FineTuner`
takes the config itself.

Defaults that depend on the model are filled by :func:`resolve_defaults` (uniem's rule for the learning rate by
parameter count; warmup then cosine decay, as in the M3E recipe).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3e.errors import M3EError
from m3e.extras import require
from m3e.textio import check_encoding
from m3e.training.records import RECORD_TYPES

TASKS = ("embed", "rerank")
SCHEDULERS = ("cosine", "linear", "constant")
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")
RERANK_LOSSES = ("softmax", "bce")  # listwise cross-entropy over each group; pointwise binary cross-entropy
LOSSES = tuple(dict.fromkeys(CONTRASTIVE_LOSSES + RERANK_LOSSES))
DEFAULT_EVAL_SPLIT = 0.05  # the share of its queries a reranker's run holds out to score before and after
DISTILL_LOSSES = ("mse", "cosine")
STRATEGIES = ("full", "lora", "bitfit")
SAVE_DTYPES = ("fp32", "fp16", "bf16")  # what EmbeddingModel.save can store
EVAL_BEFORE = "eval-before.json"  # the starting model's scores, beside the checkpoints: a resume reuses them


def about(
    *,
    help: str | None = None,
    flag: str | None = None,
    off_flag: str | None = None,
    off_help: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    tasks: tuple[str, ...] = TASKS,
) -> dict[str, Any]:
    """A TrainConfig field's metadata: how it is offered. ``help`` may name ``{default}``; ``flag`` is the CLI
    flag where it is not ``--field-name`` (for a switch that defaults to on, the flag that turns it off);
    ``off_flag`` gives an on/off/unset option its second flag; ``cli=False`` keeps it to recipes and
    Python; ``tasks`` are the tasks it applies to (elsewhere it must keep its default)."""
    info = {"help": help, "flag": flag, "off_flag": off_flag, "off_help": off_help, "choices": choices,
            "metavar": metavar, "cli": cli, "tasks": tasks}
    return {"option": info}


def option(default: Any, **info: Any) -> Any:
    """A TrainConfig field with a plain default; ``info`` as :func:`about` takes it."""
    return field(default=default, metadata=about(**info))


@dataclass
class TrainConfig:
    model: str | None = option(
        None, cli=False, help="what the run starts from (path or name; None = the default model)"
    )
    output: str = option(
        "m3e-finetuned", cli=False, help="the final model's directory (with its card and loss curve), nothing else"
    )
    task: str = option(
        "embed", choices=TASKS,
        help="what to train: an embedding model, or a cross-encoder reranker (default {default})",
    )
    epochs: int = option(1, help="passes over the data (default {default})")
    max_steps: int | None = option(None, help="stop after this many optimizer steps")
    batch_size: int = option(
        32, help="contrastive batch (rerank: query groups per step), all processes together (default {default})"
    )
    mini_batch: int | None = option(
        None, help="GradCache: embed the batch in chunks of this size, so --batch-size can exceed memory "
        "(rerank: accumulate gradients over chunks of this many groups)",
    )
    lr: float | None = option(None, help="peak learning rate (default: by model size and strategy)")
    warmup_ratio: float = option(0.05, help="share of steps for linear warmup (default {default})")
    warmup_steps: int | None = option(
        None, cli=False, help="warmup length in steps (instead of warmup_ratio)"
    )
    scheduler: str = option("cosine", choices=SCHEDULERS, help="after warmup (default {default})")
    weight_decay: float = option(0.01)
    max_grad_norm: float | None = option(1.0, cli=False, help="clip the gradient norm (None: no clipping)")
    max_length: int | None = option(None, help="truncate training texts at this many tokens")
    record_type: str | None = option(
        None, cli=False, flag="--type", choices=RECORD_TYPES,
        help="force the record type (default: detected from the columns)",
    )
    encoding: str = option(
        "utf-8", help="text encoding of .jsonl / .json / .csv training files (default {default}; e.g. gb18030)"
    )
    loss: str = option(
        "softmax", choices=LOSSES,
        help="contrastive loss for pairs/triplets (scored pairs use CoSENT, distill MSE); rerank: softmax "
        "(listwise over each group) or bce (pointwise)",
    )
    temperature: float = option(
        0.05, tasks=("embed",), help="loss temperature (default {default} = scale 20)"
    )
    symmetric: bool = option(False, tasks=("embed",), help="softmax in both directions (q->p and p->q)")
    distill_loss: str = option(
        "mse", cli=False, choices=DISTILL_LOSSES, tasks=("embed",), help="the loss of distill datasets"
    )
    distill_contrast: float = option(
        0.0, cli=False, tasks=("embed",),
        help="cosine distillation: weight of the in-batch softmax against teacher vectors",
    )
    matryoshka_dims: str | None = option(
        None, tasks=("embed",), metavar="DIMS",
        help="also train these leading dimensions as embeddings of their own, e.g. 256,128,64 (Matryoshka)",
    )
    num_negatives: int = option(
        1, flag="--negatives", tasks=("embed",), help="hard negatives per query for triplets (default {default})"
    )
    group_size: int = option(
        8, tasks=("rerank",),
        help="rerank: passages per query group, 1 positive + negatives (FlagEmbedding's train_group_size; "
        "default {default})",
    )
    teacher: str | None = option(
        None, tasks=("rerank",), metavar="MODEL",
        help="rerank: distil from this model's scores of each group (an embedder's cosine or a reranker's logit)",
    )
    teacher_temperature: float | None = option(
        None, tasks=("rerank",),
        help="rerank: the teacher's scores are divided by this before the softmax (default: 0.05 for an "
        "embedder's cosines, 1 for a reranker's logits)",
    )
    strategy: str = option("full", choices=STRATEGIES, help="what to train (default {default})")
    lora_r: int = option(8)
    lora_alpha: int = option(16)
    lora_dropout: float = option(0.05, cli=False)
    gradient_checkpointing: bool = option(False, help="recompute activations to save memory")
    bf16: bool = option(False, help="bfloat16 autocast (CPU and GPU)")
    shuffle: bool = option(True, flag="--no-shuffle", help="keep the data order")
    no_duplicates: bool = option(
        True, flag="--allow-duplicates", tasks=("embed",),
        help="allow the same text twice in a batch (default: such records wait for a later batch)",
    )
    use_prompts: bool = option(
        True, flag="--no-prompts", tasks=("embed",),
        help="do not put the model's query/document prompts before training texts",
    )
    seed: int = option(42)
    weights: dict[str, float] = field(default_factory=dict, metadata=about(
        flag="--weight", metavar="NAME=W",
        help="dataset weight: passes per epoch for dataset NAME (file stem); repeatable",
    ))
    save_dtype: str | None = option(  # None: fp32, as before the default was fp16
        "fp16", choices=SAVE_DTYPES,
        help="the final model's weights on disk (default {default}: half of fp32's size; m3e and "
        "sentence-transformers compute in fp32 after loading either)",
    )
    save_steps: int = option(200, help="checkpoint every N steps (default {default})")
    keep_checkpoints: int = option(2, help="how many checkpoints to keep while training (default {default})")
    checkpoint_dir: str | None = option(
        None, metavar="DIR",
        help="where the checkpoints and the resume state go (default: OUTPUT.checkpoints beside the model)",
    )
    keep_checkpoint_dir: bool = option(
        False, help="keep the checkpoint directory after a successful run (default: removed once the final "
        "model is saved; a stopped or failed run keeps it for --resume)",
    )
    log_steps: int = option(1, cli=False, help="a loss-curve row every N steps")
    progress: bool | None = option(  # None: a bar when stderr is a terminal
        None, help="always show a progress bar",
        off_flag="--no-progress", off_help="never show a progress bar",
    )

    def __post_init__(self) -> None:
        for opt in train_options():
            setattr(self, opt.name, opt.checked(getattr(self, opt.name)))
        check_encoding(self.encoding)  # an unknown or unsupported codec is named before any file is read
        self._check_task_options()

    def _check_task_options(self) -> None:
        """An option of another task, set, is a mistake to name rather than to ignore."""
        for opt in train_options():
            if self.task not in opt.tasks and getattr(self, opt.name) != opt.default:
                raise M3EError(f"training option {opt.name} applies to task {' or '.join(opt.tasks)} only, "
                               f"not {self.task}")
        allowed = RERANK_LOSSES if self.task == "rerank" else CONTRASTIVE_LOSSES
        if self.loss not in allowed:
            raise M3EError(f"loss {self.loss} does not apply to task {self.task} (use {', '.join(allowed)})")

    def applying(self) -> dict[str, Any]:
        """The options that apply to this config's task, as set (a model card's hyper-parameters)."""
        return {opt.name: getattr(self, opt.name) for opt in train_options() if self.task in opt.tasks}

    def checkpoint_path(self) -> Path:
        """Where this run's checkpoints and resume state live: ``checkpoint_dir``, or ``OUTPUT.checkpoints``
        beside the output, so that the output holds the final model alone."""
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir).expanduser()
        output = Path(self.output).expanduser()
        return output.with_name(output.name + ".checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A config from option names and values (a recipe's ``train:``, keyword arguments), checked."""
        return cls(**_known(data))

    def updated(self, options: Mapping[str, Any]) -> TrainConfig:
        """A copy with ``options`` replaced, checked as :meth:`from_dict` checks them."""
        return dataclasses.replace(self, **_known(options))


def _known(data: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(data) - {opt.name for opt in train_options()})
    if unknown:
        raise M3EError(f"unknown training option(s): {', '.join(unknown)}")
    return dict(data)


@dataclass(frozen=True)
class TrainOption:
    """One TrainConfig field as the CLI and the recipe checks see it."""

    name: str
    kind: type  # int, float, bool, str or dict (dataset name -> weight)
    optional: bool  # None is a value (unset: the run decides)
    default: Any
    help: str | None
    flag: str
    off_flag: str | None
    off_help: str | None
    choices: tuple[str, ...] | None
    metavar: str | None
    cli: bool  # among the training flags of `m3e finetune` and `m3e train`
    tasks: tuple[str, ...]  # the tasks it applies to

    def checked(self, value: Any) -> Any:
        """``value`` as this option holds it, or an M3EError saying what it must be."""
        if value is None:
            if self.optional:
                return None
            raise M3EError(f"training option {self.name} must be {_KIND_NAMES[self.kind]}, not null")
        held = _as_kind(self.kind, value)
        if held is None:
            raise M3EError(f"training option {self.name} must be {_KIND_NAMES[self.kind]}, not {value!r}")
        if self.choices is not None and held not in self.choices:
            allowed = ", ".join(self.choices)
            raise M3EError(f"training option {self.name} must be one of {allowed}, not {value!r}")
        return held


_KIND_NAMES = {
    int: "an integer", float: "a number", bool: "true or false", str: "a string",
    dict: "a mapping of dataset names to numbers",
}


def _as_kind(kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` (None when it is not one). Integral numbers count as integers, and numbers
    written as text as numbers: PyYAML reads ``3e-5`` (no dot) as a string."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is str:
        return value if isinstance(value, str) else None
    if kind is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return None
        numbers = {k: _as_kind(float, v) for k, v in value.items()}
        return None if any(v is None for v in numbers.values()) else numbers
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else None
    if isinstance(value, str):  # float
        try:
            return float(value)
        except ValueError:
            return None
    return value if isinstance(value, int | float) else None


@functools.cache
def train_options() -> tuple[TrainOption, ...]:
    """TrainConfig's fields, in declaration order (the order of `m3e finetune --help`)."""
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        info = f.metadata["option"]
        kind, optional = _kind_of(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = info["help"].format(default=default) if info["help"] else None
        out.append(TrainOption(
            name=f.name, kind=kind, optional=optional, default=default, help=help_text,
            flag=info["flag"] or "--" + f.name.replace("_", "-"), off_flag=info["off_flag"],
            off_help=info["off_help"], choices=info["choices"], metavar=info["metavar"], cli=info["cli"],
            tasks=info["tasks"],
        ))
    return tuple(out)


def train_option(name: str) -> TrainOption:
    return next(opt for opt in train_options() if opt.name == name)


def _kind_of(hint: Any) -> tuple[type, bool]:
    """``int | None`` -> (int, True); ``dict[str, float]`` -> (dict, False)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [a for a in args if a is not type(None)]
    (kind,) = kinds
    return typing.get_origin(kind) or kind, len(kinds) < len(args)


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
    if out.task == "embed" and out.batch_size < 2:
        raise M3EError("batch size must be at least 2 (in-batch negatives)")
    if out.batch_size < 1:
        raise M3EError("batch size must be >= 1")
    if out.task == "rerank" and out.group_size < 2:
        raise M3EError("group size must be at least 2 (a positive and a negative)")
    if out.mini_batch is not None and out.mini_batch < 1:
        raise M3EError("mini batch must be >= 1")
    return out


def lr_lambda(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then cosine/linear/constant."""
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
            # JSON and TOML need nothing beyond the standard library
            yaml = require("yaml", purpose="a YAML recipe", extra="train", package="pyyaml")
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
