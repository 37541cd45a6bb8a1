"""`m3e info`: what a model is, before you use it."""

from __future__ import annotations

import argparse
import json

from m3e.cli._common import add_model_options, load_model_from_args
from m3e.errors import M3EError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, positional=True, backend="torch")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--backends", action="store_true",
                        help="also show what backend auto chooses for this model here, and why (CPU, installed engines)")
    parser.add_argument("--measure", action="store_true",
                        help="with --backends: time the candidate backends on this CPU now and record the fastest, "
                             "which auto then runs (builds their artefacts first where missing)")


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


def backends(model, measure: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """What ``auto`` picks for ``model`` on this machine, and the inputs of that choice (nothing is built or
    timed unless ``measure``)."""
    from m3e.backends.measurement import auto_choice
    from m3e.backends.selection import detect_cpu, installed_engines

    cpu = detect_cpu()
    choice = auto_choice(model, time_now=False, force_timing=measure)
    why = choice.reason
    if choice.to_time:
        why += f"; {', '.join(choice.candidates)} will be timed on this CPU at first use (or now: --measure)"
    return {
        "auto": choice.backend,
        "why": why,
        "cpu": f"{cpu.arch}, {cpu.family}" + (f" ({cpu.name})" if cpu.name else ""),
        "engines": sorted(installed_engines()) or ["none"],
        "candidates": list(choice.candidates) or ["none"],
    }


def run(args: argparse.Namespace) -> int:
    if args.measure and not args.backends:
        raise M3EError("--measure goes with --backends")
    model = load_model_from_args(args)
    info = describe(model)
    if args.backends:
        info["backends"] = backends(model, measure=args.measure)
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
                label = f"auto {name}" if name != "auto" else "auto"
                print(f"{label:>15}: {', '.join(part) if isinstance(part, list) else part}")
            continue
        print(f"{key:>15}: {value}")
    return 0
