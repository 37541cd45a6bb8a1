"""Options shared by the commands that load a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from m3e.backends import AUTO, BACKEND_CHOICES
from m3e.errors import FaultError, describe_os_error
from m3e.textio import TEXT_FORMATS

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel


def add_model_options(parser: argparse.ArgumentParser, positional: bool = False, backend: str = AUTO) -> None:
    if positional:
        parser.add_argument("model", nargs="?", default=None, help="model directory or hub id (default: m3e's default model)")
    else:
        parser.add_argument("-m", "--model", default=None, help="model directory or hub id (default: m3e's default model)")
    parser.add_argument("--backend", default=backend, choices=BACKEND_CHOICES, help=backend_help(backend))
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate inputs at this many tokens (at most the model's maximum)")
    parser.add_argument("--pooling", default=None, help="override pooling: mean, cls, max, first_last_mean, last_weighted, ...")


def backend_help(default: str) -> str:
    if default == AUTO:
        return "inference backend (default: auto, the fastest for this CPU and the installed engines; `m3e info --backends`)"
    return f"inference backend (default: {default}; auto: the fastest for this CPU, `m3e info --backends`)"


def load_model_from_args(args: argparse.Namespace) -> EmbeddingModel:
    from m3e.loading import load_model

    return load_model(
        args.model,
        device=args.device,
        backend=args.backend,
        max_length=args.max_length,
        pooling=args.pooling,
    )


def add_io_options(parser: argparse.ArgumentParser, text_field: str = "text") -> None:
    """How to read an input file: its format, encoding, text field and id field."""
    parser.add_argument("--format", choices=TEXT_FORMATS, default=None, help="input format (default: from the suffix)")
    parser.add_argument("--field", default=text_field,
                        help=f"the .jsonl / .csv / .parquet field that holds the text (default: {text_field})")
    parser.add_argument("--id-field", default=None,
                        help="a field every record must have, carried to the output as its id")
    parser.add_argument("--encoding", default="utf-8",
                        help="text encoding of a .txt / .jsonl / .csv input (default: utf-8; e.g. gb18030)")


def write_fault(exc: OSError, output: Path, existed: bool) -> FaultError:
    """The one line for a failed atomic write of ``output``: why, and that nothing of it was written."""
    before = "left as it was" if existed else "not created"
    return FaultError(f"{describe_os_error(exc)}; nothing written: {output} {before}")


def model_source(name: str | None) -> str:
    """What the index records to reload its model: an absolute path for local models."""
    if name is None:
        from m3e.paths import default_model_path

        return str(default_model_path().resolve())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
