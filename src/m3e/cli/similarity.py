"""`m3e similarity`: a readable cosine-similarity matrix of a few texts."""

from __future__ import annotations

import argparse
import unicodedata

from m3e.cli._common import add_model_options, load_text_model
from m3e.cli.remote import add_server_options, remote_model
from m3e.errors import M3EError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="+", help="two or more texts")
    add_model_options(parser, backend=None)  # a few texts: a recorded compiled model, else torch (no engine built)
    add_server_options(parser)
    parser.add_argument("--query", default=None, metavar="TEXT",
                        help="rank the texts against this query (query prompt applied) instead of a matrix")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    out = ""
    for ch in text:
        if _width(out + ch) > limit - 1:
            return out + "…"
        out += ch
    return out


def _pad(text: str, width: int) -> str:
    return text + " " * max(width - _width(text), 0)


def run(args: argparse.Namespace) -> int:
    if args.query is None and len(args.texts) < 2:
        raise M3EError("give at least two texts")
    model = remote_model(args) if args.server else load_text_model(args)
    if args.query is not None:
        q = model.encode_queries([args.query])
        d = model.encode_documents(args.texts)
        scores = model.similarity(q, d)[0]
        print(f"query: {args.query}")
        for rank, i in enumerate(sorted(range(len(args.texts)), key=lambda i: -scores[i]), start=1):
            print(f"{rank:>3}. {scores[i]:.4f}  {args.texts[i]}")
        return 0
    sims = model.similarity(model.encode(args.texts), model.encode(args.texts))
    labels = [f"[{i}] {_clip(t, 28)}" for i, t in enumerate(args.texts)]
    label_w = max(_width(x) for x in labels)
    print(_pad("", label_w) + "".join(f"{f'[{i}]':>8}" for i in range(len(args.texts))))
    for i, label in enumerate(labels):
        print(_pad(label, label_w) + "".join(f"{sims[i, j]:>8.3f}" for j in range(len(args.texts))))
    print(f"\ncosine similarity, model {model.name}")
    return 0
