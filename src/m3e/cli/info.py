"""`m3e info`: what a model is, before you use it."""

from __future__ import annotations

import argparse
import json

from m3e.cli._common import add_model_options, load_model_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, positional=True, backend="torch")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--backends", action="store_true",
                        help="also show what backend auto chooses for this model here, and why (CPU, installed engines)")


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


def backends(model) -> dict:  # type: ignore[no-untyped-def]
    """What ``auto`` picks for ``model`` on this machine, and the inputs of that choice."""
    from m3e.backends.selection import auto_choice, detect_cpu, installed_engines

    cpu = detect_cpu()
    choice = auto_choice(model)
    return {
        "auto": choice.backend,
        "why": choice.reason,
        "cpu": f"{cpu.arch}, {cpu.family}",
        "engines": sorted(installed_engines()) or ["none"],
    }


def run(args: argparse.Namespace) -> int:
    model = load_model_from_args(args)
    info = describe(model)
    if args.backends:
        info["backends"] = backends(model)
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=2))
        return 0
    for key, value in info.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f}M)"
        elif key == "prompts":
            value = json.dumps(value, ensure_ascii=False) if value else "none"
        elif key == "backends":
            for name, part in value.items():
                print(f"{'auto ' + name if name != 'auto' else 'auto':>13}: {', '.join(part) if isinstance(part, list) else part}")
            continue
        print(f"{key:>13}: {value}")
    return 0
