"""`m3e distill-static MODEL -o OUT`: a sentence-transformers StaticEmbedding model distilled from MODEL."""

from __future__ import annotations

import argparse
import sys
import time

from m3e.cli._common import add_model_options, load_model_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, positional=True)
    parser.add_argument("-o", "--output", required=True, help="directory to write the static model to")
    parser.add_argument("--dim", type=int, default=256, help="dimensions after PCA (default 256)")


def run(args: argparse.Namespace) -> int:
    from m3e.static import StaticModel, distill_static

    model = load_model_from_args(args)
    started = time.perf_counter()
    out = distill_static(model, args.output, dim=args.dim)
    static = StaticModel.load(out)
    print(f"wrote {out} ({static.table.shape[0]} tokens x {static.dim}, {time.perf_counter() - started:.1f}s)",
          file=sys.stderr)
    return 0
