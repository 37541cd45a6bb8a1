"""`m3e encode`: texts -> vectors (.npy or .jsonl)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m3e.cli._common import add_model_options, load_model_from_args
from m3e.cli.remote import add_server_options, remote_model
from m3e.errors import M3EError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="texts to embed (default: read --input, or stdin)")
    parser.add_argument("-i", "--input", default=None, help="a .txt file (one text per line) or .jsonl file; - for stdin")
    parser.add_argument("--field", default="text", help="the .jsonl field that holds the text (default: text)")
    parser.add_argument("--format", choices=["txt", "jsonl"], default=None, help="input format (default: from the suffix)")
    parser.add_argument("-o", "--output", default=None, help="output .npy or .jsonl file (default: JSON lines on stdout)")
    add_model_options(parser)
    add_server_options(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="texts per batch (default: 32; 16 for int8)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="cap padded tokens per batch")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--query", action="store_true", help="texts are search queries: apply the model's query prompt")
    side.add_argument("--document", action="store_true", help="texts are documents: apply the model's document prompt")
    side.add_argument("--prompt", default=None, help="a literal prefix to put before every text")
    parser.add_argument("--no-normalize", action="store_true", help="keep raw pooled vectors (not unit length)")
    parser.add_argument("--long-text", choices=["truncate", "windows"], default="truncate",
                        help="texts longer than the maximum: truncate, or average windows weighted by tokens")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


def run(args: argparse.Namespace) -> int:
    from m3e.textio import read_texts

    if args.texts and args.input:
        raise M3EError("give texts as arguments or --input, not both")
    if args.batch_size is not None and args.batch_size < 1:
        raise M3EError("--batch-size must be >= 1")
    texts = list(args.texts) if args.texts else read_texts(args.input, field=args.field, fmt=args.format)
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in (".npy", ".jsonl"):
        raise M3EError(f"--output must end in .npy or .jsonl, not {output.suffix or 'nothing'}")

    model = remote_model(args) if args.server else load_model_from_args(args)
    show = args.progress if args.progress is not None else (len(texts) >= 1000 and sys.stderr.isatty())
    kwargs = {
        "batch_size": args.batch_size,
        "normalize": not args.no_normalize,
        "show_progress": show,
        "long_text": args.long_text,
        "max_batch_tokens": args.max_batch_tokens,
    }
    if args.query:
        vectors = model.encode_queries(texts, **kwargs)
    elif args.document:
        vectors = model.encode_documents(texts, **kwargs)
    else:
        vectors = model.encode(texts, prompt=args.prompt, **kwargs)

    if output is None:
        _write_jsonl(sys.stdout, texts, vectors)
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    if output.suffix.lower() == ".npy":
        import numpy as np

        with tmp.open("wb") as fh:
            np.save(fh, vectors)
    else:
        with tmp.open("w", encoding="utf-8") as fh:
            _write_jsonl(fh, texts, vectors)
    tmp.replace(output)
    print(f"wrote {len(texts)} x {model.dim} vectors to {output}", file=sys.stderr)
    return 0


def _write_jsonl(stream, texts, vectors) -> None:  # type: ignore[no-untyped-def]
    for text, vec in zip(texts, vectors, strict=True):
        stream.write(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vec]}, ensure_ascii=False))
        stream.write("\n")
