"""Options shared by the commands that load a model."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from m3e.backends import BACKENDS

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel


def add_model_options(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        parser.add_argument("model", nargs="?", default=None, help="model directory or hub id (default: m3e's default model)")
    else:
        parser.add_argument("-m", "--model", default=None, help="model directory or hub id (default: m3e's default model)")
    parser.add_argument("--backend", default="torch", choices=BACKENDS, help="inference backend (default: torch fp32)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate inputs at this many tokens (at most the model's maximum)")
    parser.add_argument("--pooling", default=None, help="override pooling: mean, cls, max, first_last_mean, last_weighted, ...")


def load_model_from_args(args: argparse.Namespace) -> EmbeddingModel:
    from m3e.loading import load_model

    return load_model(
        args.model,
        device=args.device,
        backend=args.backend,
        max_length=args.max_length,
        pooling=args.pooling,
    )
