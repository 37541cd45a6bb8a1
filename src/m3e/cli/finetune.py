"""`m3e finetune MODEL DATA... --output DIR`: fine-tune on pair / triplet / scored-pair data, resumably."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from m3e.errors import M3EError
from m3e.evaluation.suites import OFFLINE_PROFILES


def add_training_options(parser: argparse.ArgumentParser, recipe: bool = False) -> None:
    """Options shared with `m3e train` (there they override the recipe, so their defaults are None)."""
    d = (lambda v: None) if recipe else (lambda v: v)  # recipe runs keep the recipe values
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d(1), help="passes over the data (default 1)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    g.add_argument("--batch-size", type=int, default=d(32), help="contrastive batch: all processes together (default 32)")
    g.add_argument("--mini-batch", type=int, default=None,
                   help="GradCache: embed the batch in chunks of this size, so --batch-size can exceed memory")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: by model size and strategy)")
    g.add_argument("--warmup-ratio", type=float, default=d(0.05), help="share of steps for linear warmup (default 0.05)")
    g.add_argument("--scheduler", choices=["cosine", "linear", "constant"], default=d("cosine"), help="after warmup (default cosine)")
    g.add_argument("--weight-decay", type=float, default=d(0.01))
    g.add_argument("--max-length", type=int, default=None, help="truncate training texts at this many tokens")
    g.add_argument("--loss", choices=["softmax", "sigmoid"], default=d("softmax"),
                   help="contrastive loss for pairs/triplets (scored pairs use CoSENT, distill MSE)")
    g.add_argument("--temperature", type=float, default=d(0.05), help="loss temperature (default 0.05 = scale 20)")
    g.add_argument("--symmetric", action="store_true", default=d(False), help="softmax in both directions (q->p and p->q)")
    g.add_argument("--negatives", dest="num_negatives", type=int, default=d(1), help="hard negatives per query for triplets (default 1)")
    g.add_argument("--strategy", choices=["full", "lora", "bitfit"], default=d("full"), help="what to train (default full)")
    g.add_argument("--lora-r", type=int, default=d(8))
    g.add_argument("--lora-alpha", type=int, default=d(16))
    g.add_argument("--gradient-checkpointing", action="store_true", default=d(False), help="recompute activations to save memory")
    g.add_argument("--bf16", action="store_true", default=d(False), help="bfloat16 autocast (CPU and GPU)")
    g.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=d(True), help="keep the data order")
    g.add_argument("--allow-duplicates", dest="no_duplicates", action="store_false", default=d(True),
                   help="allow the same text twice in a batch (default: such records wait for a later batch)")
    g.add_argument("--no-prompts", dest="use_prompts", action="store_false", default=d(True),
                   help="do not put the model's query/document prompts before training texts")
    g.add_argument("--seed", type=int, default=d(42))
    g.add_argument("--weight", action="append", default=[], metavar="NAME=W",
                   help="dataset weight: passes per epoch for dataset NAME (file stem); repeatable")
    g.add_argument("--save-steps", type=int, default=d(200), help="checkpoint every N steps (default 200)")
    g.add_argument("--keep-checkpoints", type=int, default=d(2), help="how many checkpoints to keep (default 2)")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output directory")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    progress = g.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    e = parser.add_argument_group("evaluation before/after (offline tasks from `m3e data build`)")
    e.add_argument("--eval", dest="eval_suite", choices=list(OFFLINE_PROFILES), default=None,
                   help="evaluate on this offline suite (dev: the held-out dev splits, for choosing settings)")
    e.add_argument("--eval-tasks", default=None, help="comma-separated task names (implies --eval offline)")
    e.add_argument("--data-dir", default=None, help="built data directory for the evaluation tasks")


_CONFIG_ARGS = (
    "epochs", "max_steps", "batch_size", "mini_batch", "lr", "warmup_ratio", "scheduler", "weight_decay", "max_length",
    "loss", "temperature", "symmetric", "num_negatives", "strategy", "lora_r", "lora_alpha", "gradient_checkpointing",
    "bf16", "shuffle", "no_duplicates", "use_prompts", "seed", "save_steps", "keep_checkpoints", "progress",
)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given on the command line (None = not given)."""
    out = {k: getattr(args, k) for k in _CONFIG_ARGS if getattr(args, k, None) is not None}
    weights: dict[str, float] = {}
    for item in args.weight or []:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise M3EError(f"--weight takes NAME=NUMBER, not {item!r}")
    if weights:
        out["weights"] = weights
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model to start from: a directory or hub id ('default' = m3e's default model)")
    parser.add_argument("data", nargs="+", help=".jsonl/.csv/.parquet files or directories (one dataset per file)")
    parser.add_argument("-o", "--output", required=True, help="output directory (the model, checkpoints, loss curve)")
    parser.add_argument("--type", dest="record_type", choices=["pair", "triplet", "scored", "distill"], default=None,
                        help="force the record type (default: detected from the columns)")
    add_training_options(parser)


def _device(name: str | None) -> str | None:
    if name is not None:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    from m3e.training.finetuner import FineTuner

    model = None if args.model in ("default", "-") else args.model
    options = options_from_args(args)
    tuner = FineTuner.from_pretrained(model, args.data, record_type=args.record_type, device=_device(args.device))
    epochs = options.pop("epochs", 1)
    result = tuner.run(epochs=epochs, output_dir=args.output, resume=args.resume, **eval_options(args), **options)
    return report(result)


def eval_options(args: argparse.Namespace) -> dict:
    """--eval / --eval-tasks / --data-dir as keyword arguments of the trainer."""
    tasks = [t.strip() for t in args.eval_tasks.split(",") if t.strip()] if args.eval_tasks else None
    return {"eval_suite": args.eval_suite or ("offline" if tasks else None), "eval_tasks": tasks,
            "eval_data_dir": args.data_dir}


def report(result) -> int:  # type: ignore[no-untyped-def]
    if os.environ.get("RANK", "0") != "0":  # torchrun: the main process reports
        return 0
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    print(f"trained {result.steps} steps in {result.train_seconds:.0f} s{loss}; model saved to {result.output}", file=sys.stderr)
    return 0
