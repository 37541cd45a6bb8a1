"""Options shared by the commands that load a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, cast

from m3e.backends import AUTO, BACKEND_CHOICES
from m3e.errors import FaultError, describe_os_error
from m3e.textio import TEXT_FORMATS

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel


def add_model_options(parser: argparse.ArgumentParser, positional: bool = False, backend: str | None = AUTO) -> None:
    if positional:
        parser.add_argument("model", nargs="?", default=None, help="model directory or hub id (default: m3e's default model)")
    else:
        parser.add_argument("-m", "--model", default=None, help="model directory or hub id (default: m3e's default model)")
    parser.add_argument("--backend", default=backend, choices=BACKEND_CHOICES, help=backend_help(backend))
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate inputs at this many tokens (at most the model's maximum)")
    parser.add_argument("--pooling", default=None, help="override pooling: mean, cls, max, first_last_mean, last_weighted, ...")


def backend_help(default: str | None) -> str:
    if default is None:
        return ("inference backend (default: the compiled engine recorded for this model when an earlier `m3e "
                "encode` / `serve` ran it on auto, which starts without torch; else torch)")
    if default == AUTO:
        return "inference backend (default: auto, the fastest for this CPU and the installed engines; `m3e info --backends`)"
    return f"inference backend (default: {default}; auto: the fastest for this CPU, `m3e info --backends`)"


def load_model_from_args(args: argparse.Namespace) -> EmbeddingModel:
    from m3e.loading import load_model

    return load_model(
        args.model,
        device=args.device,
        backend=args.backend or "torch",
        max_length=args.max_length,
        pooling=args.pooling,
    )


def load_text_model(args: argparse.Namespace) -> EmbeddingModel:
    """The model of a command that embeds the texts on its command line: the recorded compiled model when there
    is one for these options (``m3e.compiled``: no torch, no transformers, no fingerprint; about a second), else
    the model loaded as ``load_model_from_args`` loads it (which leaves such a record when it ends on a compiled
    backend). ``--backend`` unset means: the compiled model recorded for ``auto`` if any, else torch (a few texts
    do not pay for building an engine). Typed as the model it stands in for: the callers use only the methods
    :class:`m3e.compiled.CompiledModel` has."""
    import logging

    from m3e.compiled import ENGINES, LoadRequest, find_compiled

    requested = args.backend or AUTO
    if args.device in (None, "cpu") and (requested == AUTO or requested in ENGINES):
        model_dir = _local_model_dir(args.model)
        if model_dir is not None:
            compiled = find_compiled(LoadRequest(model_dir, requested, args.max_length, args.pooling))
            if compiled is not None:
                logging.getLogger(__name__).info("running the compiled %s model %s", compiled.backend, compiled.name)
                return cast("EmbeddingModel", compiled)
    return load_model_from_args(args)


def _local_model_dir(name: str | None) -> str | None:
    """The resolved directory of a local model (the default model for None); None for a hub id."""
    if name is None:
        from m3e.paths import default_model_path

        return str(default_model_path().resolve())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else None


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
