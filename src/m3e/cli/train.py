"""`m3e train --recipe FILE`: run a training recipe (YAML/JSON/TOML) with resumable checkpoints."""

from __future__ import annotations

import argparse

from m3e.cli.finetune import add_training_options, eval_options, options_from_args, report, training_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True,
                        help="recipe file: model, datasets with weights, loss, hyper-parameters")
    parser.add_argument("-o", "--output", default=None, help="the final model's directory (default: the recipe's 'output'); checkpoints go to "
                        "OUTPUT.checkpoints or --checkpoint-dir")
    parser.add_argument("--hold-out-source", action="append", default=[], metavar="ID",
                        help="leave out every dataset built from this source (an `m3e data` id such as C; "
                        "repeatable): a leave-source-out run, scored then on that source's tasks")
    add_training_options(parser, recipe=True)


def run(args: argparse.Namespace) -> int:
    from m3e.training.recipe import run_recipe

    overrides = options_from_args(args)
    if args.output:
        overrides["output"] = args.output
    result = run_recipe(
        args.recipe, overrides, resume=args.resume, device=training_device(args.device),
        held_out=args.hold_out_source, **eval_options(args)
    )
    return report(result)
