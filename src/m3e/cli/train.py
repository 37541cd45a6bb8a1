"""`m3e train --recipe FILE`: run a training recipe (YAML/JSON/TOML) with resumable checkpoints."""

from __future__ import annotations

import argparse
import os
import sys

from m3e.cli.finetune import _device, add_training_options, options_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe file: model, datasets with weights, loss, hyper-parameters")
    parser.add_argument("-o", "--output", default=None, help="run directory (default: the recipe's 'output')")
    add_training_options(parser, recipe=True)


def run(args: argparse.Namespace) -> int:
    from m3e.training.recipe import run_recipe

    overrides = options_from_args(args)
    if args.output:
        overrides["output"] = args.output
    tasks = [t.strip() for t in args.eval_tasks.split(",") if t.strip()] if args.eval_tasks else None
    result = run_recipe(
        args.recipe, overrides, resume=args.resume, device=_device(args.device),
        eval_suite=args.eval_suite or ("offline" if tasks else None), eval_tasks=tasks, eval_data_dir=args.data_dir,
    )
    if os.environ.get("RANK", "0") != "0":  # torchrun: the main process reports
        return 0
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    print(f"trained {result.steps} steps in {result.train_seconds:.0f} s{loss}; model saved to {result.output}", file=sys.stderr)
    return 0
