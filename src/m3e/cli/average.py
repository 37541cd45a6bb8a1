"""`m3e average`: the weighted average of models fine-tuned from one start (a model soup)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="two or more model directories of one start (same tokenizer)")
    parser.add_argument("-o", "--output", required=True, help="the averaged model's directory (written atomically)")
    parser.add_argument("--weights", default=None, help="one weight per model, e.g. 0.5,0.5 (default: equal)")
    parser.add_argument("--save-dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                        help="weights' dtype on disk (default fp16)")


def run(args: argparse.Namespace) -> int:
    from m3e.errors import M3EError
    from m3e.training.soup import average_models

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise M3EError(f"--weights must be numbers like 0.5,0.5, not {args.weights!r}") from None
    out = average_models(args.models, args.output, weights=weights, dtype=args.save_dtype)
    print(f"wrote {out}: the average of {len(args.models)} models")
    return 0
