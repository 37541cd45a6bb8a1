"""`m3e info`: what a model is, before you use it."""

from __future__ import annotations

import argparse
import json

from m3e.cli._common import add_model_options, load_model_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, positional=True)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def describe(model) -> dict:  # type: ignore[no-untyped-def]
    config = model.transformer.config
    return {
        "name": model.name,
        "path": str(getattr(model, "source_dir", "")),
        "architecture": f"{config.model_type} ({', '.join(getattr(config, 'architectures', None) or [type(model.transformer).__name__])})",
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "dim": model.dim,
        "max_length": model.max_length,
        "pooling": model.pooling,
        "normalized": True,
        "dense_layers": len(model.dense),
        "prompts": model.prompts,
        "vocab_size": len(model.tokenizer),
        "parameters": model.num_parameters(),
        "backend": model.backend,
    }


def run(args: argparse.Namespace) -> int:
    model = load_model_from_args(args)
    info = describe(model)
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    for key, value in info.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f}M)"
        elif key == "prompts":
            value = json.dumps(value, ensure_ascii=False) if value else "none"
        print(f"{key:>13}: {value}")
    return 0
