"""`m3e finetune MODEL DATA... --output DIR`: fine-tune on pair / triplet / scored-pair data, resumably.

``--task rerank`` trains a cross-encoder instead: MODEL is a reranker, or an embedding model whose encoder starts
one with a fresh head; DATA are triplet records (query groups, e.g. from `m3e mine`) and scored pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
from argparse import _ArgumentGroup
from typing import TYPE_CHECKING, Any

from m3e.errors import M3EError
from m3e.evaluation.suites import OFFLINE_PROFILES
from m3e.training.config import DEFAULT_EVAL_SPLIT, TrainConfig, TrainOption, train_option, train_options

if TYPE_CHECKING:
    from m3e.training.finetuner import FineTuneResult
    from m3e.training.rerank import RerankResult


def add_training_options(parser: argparse.ArgumentParser, recipe: bool = False) -> None:
    """The TrainConfig options the CLI exposes, shared with `m3e train` (there they override the recipe, so
    their defaults are None), then the evaluation options."""
    group = parser.add_argument_group("training")
    for opt in train_options():
        if not opt.cli:
            continue
        if opt.name == "progress":  # how the run starts stands before how it shows itself
            _add_run_options(group)
        add_option_flag(group, opt, recipe=recipe)
    e = parser.add_argument_group("evaluation before/after (offline tasks from `m3e data build`)")
    e.add_argument("--eval", dest="eval_suite", choices=list(OFFLINE_PROFILES), default=None,
                   help="evaluate on this offline suite "
                        "(dev: the held-out dev splits, for choosing settings; rerank: held-out groups)")
    e.add_argument("--eval-tasks", default=None, help="comma-separated task names (implies --eval offline)")
    e.add_argument("--data-dir", default=None, help="built data directory for the evaluation tasks")
    e.add_argument("--eval-split", type=float, default=None, metavar="SHARE",
                   help=f"rerank: score MRR@10 / nDCG@10 on this share of the queries, held out of training "
                        f"(with --eval: {DEFAULT_EVAL_SPLIT})")
    e.add_argument("--eval-file", default=None, metavar="FILE",
                   help="rerank: score these triplet records instead of a held-out share")


def _add_run_options(group: _ArgumentGroup) -> None:
    group.add_argument("--resume", action="store_true",
                       help="continue from the last checkpoint (in OUTPUT.checkpoints or --checkpoint-dir)")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def add_option_flag(
    parser: argparse.ArgumentParser | _ArgumentGroup, opt: TrainOption, recipe: bool = False
) -> None:
    """The flag (or on/off pair) of one TrainConfig option. Under a recipe a flag that is not given must not
    override the recipe's value, so the default is None there."""
    default = None if recipe else opt.default
    if opt.kind is dict:  # NAME=W, repeatable: parsed by options_from_args
        parser.add_argument(opt.flag, dest=opt.name, action="append", default=[], metavar=opt.metavar,
                            help=opt.help)
    elif opt.off_flag is not None:  # on, off, or unset (the run decides)
        pair = parser.add_mutually_exclusive_group()
        pair.add_argument(opt.flag, dest=opt.name, action="store_true", default=None, help=opt.help)
        pair.add_argument(opt.off_flag, dest=opt.name, action="store_false", help=opt.off_help)
    elif opt.kind is bool:  # a switch that defaults to on is named by the flag that turns it off
        action = "store_false" if opt.default else "store_true"
        parser.add_argument(opt.flag, dest=opt.name, action=action, default=default, help=opt.help)
    else:
        values: dict[str, Any] = {"choices": opt.choices} if opt.choices else {"type": opt.kind}
        if opt.metavar is not None:
            values["metavar"] = opt.metavar
        parser.add_argument(opt.flag, dest=opt.name, default=default, help=opt.help, **values)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given on the command line (None = not given)."""
    out: dict[str, Any] = {}
    for opt in train_options():
        value = getattr(args, opt.name, None) if opt.cli else None
        if opt.kind is dict:
            value = _weights(value or []) or None
        if value is not None:
            out[opt.name] = value
    return out


def _weights(items: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise M3EError(f"--weight takes NAME=NUMBER, not {item!r}")
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model",
                        help="model to start from: a directory or hub id ('default' = m3e's default model)")
    parser.add_argument("data", nargs="+",
                        help=".jsonl/.csv/.parquet files or directories (one dataset per file)")
    parser.add_argument("-o", "--output", required=True,
                        help="directory of the final model alone (with its card and loss curve); checkpoints go to "
                        "OUTPUT.checkpoints or --checkpoint-dir")
    add_option_flag(parser, train_option("record_type"))
    add_training_options(parser)


def training_device(name: str | None) -> str:
    """--device, or cuda when there is one (training on the CPU is the fallback, not the default)."""
    if name is not None:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    model = None if args.model in ("default", "-") else args.model
    config = TrainConfig.from_dict(
        {**options_from_args(args), "model": model, "output": args.output, "record_type": args.record_type}
    )
    device = training_device(args.device)
    if config.task == "rerank":
        from m3e.training.rerank import RerankFineTuner

        reranking = RerankFineTuner.from_pretrained(model, args.data, device=device, config=config)
        return report(reranking.run(resume=args.resume, **rerank_eval_options(args)))
    from m3e.training.finetuner import FineTuner

    tuner = FineTuner.from_pretrained(model, args.data, device=device, config=config)
    return report(tuner.run(resume=args.resume, **eval_options(args)))


def eval_options(args: argparse.Namespace) -> dict[str, Any]:
    """--eval / --eval-tasks / --data-dir as keyword arguments of the trainer."""
    if args.eval_split is not None or args.eval_file is not None:
        raise M3EError("--eval-split and --eval-file score rerankers; they apply to --task rerank")
    tasks = [t.strip() for t in args.eval_tasks.split(",") if t.strip()] if args.eval_tasks else None
    return {"eval_suite": args.eval_suite or ("offline" if tasks else None), "eval_tasks": tasks,
            "eval_data_dir": args.data_dir}


def rerank_eval_options(args: argparse.Namespace) -> dict[str, Any]:
    """A reranker's evaluation: held-out groups (--eval-split, or --eval alone) or a file (--eval-file). The
    retrieval suites score rerankers in `m3e eval --rerank`, not here."""
    if args.eval_tasks or args.data_dir:
        raise M3EError("--eval-tasks and --data-dir choose embedding tasks; a reranker is scored on held-out "
                       "groups (--eval-split, --eval-file); `m3e eval --rerank` scores it on the suites")
    if args.eval_file is not None:
        return {"eval_data": args.eval_file}
    if args.eval_split is not None or args.eval_suite:
        if args.eval_suite:
            print(f"--eval {args.eval_suite}: a reranker is scored on held-out groups of its data "
                  "(the suites score it in `m3e eval --rerank`)", file=sys.stderr)
        return {"eval_split": args.eval_split if args.eval_split is not None else DEFAULT_EVAL_SPLIT}
    return {}


def report(result: FineTuneResult | RerankResult) -> int:
    if os.environ.get("RANK", "0") != "0":  # torchrun: the main process reports
        return 0
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    size = sum(p.stat().st_size for p in result.output.rglob("*") if p.is_file()) / 1e6
    print(f"trained {result.steps} steps in {result.train_seconds:.0f} s{loss}; model saved to {result.output} "
          f"({size:.1f} MB)", file=sys.stderr)
    return 0
