"""Training recipes: one file (YAML, JSON or TOML) that pins everything a run needs, so it can be reproduced.

Keys::

    model: PATH or hub id            # the initial model (null = m3e's default model)
    output: DIR                      # run directory (model, checkpoints, loss curve)
    datasets:                        # each file is one dataset; each batch comes from one dataset
      - {path: data/train, weight: 1.0}              # a directory: every file in it, same weight
      - {path: extra.jsonl, weight: 0.5, type: triplet}
    distill:                         # optional: MSE to cached teacher vectors
      - {path: texts.jsonl, teacher_vectors: teacher.npy, weight: 1.0}
    loss: softmax                    # or {name: softmax|sigmoid, temperature: 0.05, symmetric: false}
    train: {epochs: 1, batch_size: 256, lr: 3e-5, warmup_ratio: 0.05, ...}   # any TrainConfig field
    eval: {suite: smoke, tasks: [..]}                                          # optional before/after

Relative paths are resolved against the recipe file's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3e.errors import M3EError
from m3e.training.config import TrainConfig, read_recipe
from m3e.training.records import Record, TrainingDataset, attach_teacher_vectors, load_source, unique_names

_TOP_KEYS = {"model", "output", "datasets", "distill", "loss", "train", "eval", "name", "description"}


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def datasets_from_recipe(recipe: dict[str, Any], base: Path) -> list[TrainingDataset]:
    out: list[TrainingDataset] = []
    entries = recipe.get("datasets") or []
    if not isinstance(entries, list):
        raise M3EError("recipe: 'datasets' must be a list")
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise M3EError(f"recipe: datasets[{i}] needs a 'path'")
        found = load_source(_path(base, entry["path"]), entry.get("type"), entry.get("name"))
        for ds in found:
            ds.weight = float(entry.get("weight", 1.0))
        out.extend(found)
    for i, entry in enumerate(recipe.get("distill") or []):
        if not isinstance(entry, dict) or "path" not in entry:
            raise M3EError(f"recipe: distill[{i}] needs a 'path' (and 'teacher_vectors' unless records carry vectors)")
        if "teacher_vectors" in entry:  # texts (.txt lines or .jsonl "text") + an .npy of teacher vectors, row by row
            import numpy as np

            from m3e.textio import read_texts

            src = _path(base, entry["path"])
            if not src.is_file():
                raise M3EError(f"recipe: distill[{i}]: {src} does not exist")
            texts = read_texts(str(src), field=entry.get("field", "text"))
            plain = TrainingDataset(entry.get("name") or src.stem, "pair", [Record(t) for t in texts], source=str(src))
            ds = attach_teacher_vectors(plain, np.load(_path(base, entry["teacher_vectors"])))
        else:
            (ds,) = load_source(_path(base, entry["path"]), "distill", entry.get("name"))
        ds.weight = float(entry.get("weight", 1.0))
        out.append(ds)
    if not out:
        raise M3EError("recipe: no datasets")
    return unique_names(out)


def config_from_recipe(recipe: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    unknown = sorted(set(recipe) - _TOP_KEYS)
    if unknown:
        raise M3EError(f"recipe: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    fields: dict[str, Any] = dict(recipe.get("train") or {})
    loss = recipe.get("loss")
    if isinstance(loss, str):
        fields["loss"] = loss
    elif isinstance(loss, dict):
        for k, v in loss.items():
            fields[{"name": "loss"}.get(k, k)] = v
    if recipe.get("model") is not None:
        fields["model"] = str(recipe["model"])
    if recipe.get("output") is not None:
        fields["output"] = str(recipe["output"])
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(fields)


def run_recipe(
    path: str | Path, overrides: dict[str, Any] | None = None, *, resume: bool = False, device: str | None = None,
    eval_suite: str | None = None, eval_tasks: list[str] | None = None, eval_data_dir: str | None = None,
) -> Any:
    """Load the recipe, its data and model, and train with the resumable trainer. Returns the FineTuneResult."""
    import m3e
    from m3e.training.finetuner import FineTuner

    p = Path(path).expanduser().resolve()
    recipe = read_recipe(p)
    config = config_from_recipe(recipe, overrides)
    if not Path(config.output).is_absolute() and "output" not in (overrides or {}):
        config.output = str(p.parent / config.output)
    datasets = datasets_from_recipe(recipe, p.parent)
    model_src = config.model
    if model_src is not None and not Path(model_src).is_absolute() and (p.parent / model_src).exists():
        model_src = str(p.parent / model_src)
    model = m3e.load(model_src, device=device)
    ev = recipe.get("eval") or {}
    options = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "output")}
    options["model"] = model_src
    tuner = FineTuner(model, datasets, model_name=model_src)
    return tuner.run(
        epochs=config.epochs, output_dir=config.output, resume=resume,
        eval_suite=eval_suite or ev.get("suite"), eval_tasks=eval_tasks or ev.get("tasks"),
        eval_data_dir=eval_data_dir or ev.get("data_dir"), **options,
    )
