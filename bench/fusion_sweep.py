"""Choose the hybrid defaults on dev material: fusion method, the sparse side's share, candidate depth.

    python bench/fusion_sweep.py [--model default] [--tasks NewsHeadlineRetrieval:dev DocEntryRetrieval:skills ...]

Each TASK:PROFILE names a task file (``<data>/tasks/TASK/PROFILE.json``). The default set is the dev material
that the test split never sees: the dev splits of the three offline retrieval tasks and the skills suite's
three retrieval tasks (sources the default model never trained on). For each task the model's cosines (query prompt / document prompt,
as mteb and the index use them) and BM25 (m3e.lexical, the index's sparse side) are computed once; every fusion
setting is then scored with nDCG@10 (binary relevance, mteb's formula) through m3e.fusion.fuse, the function the
index and `m3e eval ... #hybrid` call. Printed per setting: each task, the average gain over dense, and the
worst margin to the better side (dense or BM25) — the two things the hybrid goal asks for.

Rows beside the product's fusions (computed here, not in m3e):
- ``both min-max``: the weighted fusion as it was before the dev splits of the idiom and InsuranceQA tasks
  existed: BM25 min-max normalised like the cosines, which stretches small differences at the top of the
  sparse list over the whole range;
- ``agreement``: that fusion with the sparse share scaled per query by the fraction of the sparse side's top 10
  that the dense side's top 10 also holds (a floor keeps a lexical-only hit reachable): tried, not adopted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from segmenters import ndcg_at_10, task_file

DEV_TASKS = ("IdiomReverseDictionary:dev", "InsuranceQARetrieval:dev", "NewsHeadlineRetrieval:dev",
             "HelpPageRetrieval:skills", "DocEntryRetrieval:skills", "DocSectionRetrieval:skills")


def top(scores: np.ndarray, ids: list[str], depth: int) -> dict[str, float]:
    order = np.argsort(-scores, kind="stable")[:depth]
    return {ids[i]: float(scores[i]) for i in order}


class Scored:
    """One task's cosines and BM25 scores, and nDCG@10 of any ranking rule over them."""

    def __init__(self, model, task: dict) -> None:
        from m3e.lexical import BM25, lexical_terms

        self.task = task
        self.ids = [d["id"] for d in task["corpus"]]
        self.queries = task["queries"]
        docs = np.asarray(model.encode_documents([d["text"] for d in task["corpus"]], show_progress=False))
        qvecs = np.asarray(model.encode_queries([q["text"] for q in self.queries], show_progress=False))
        self.cos = qvecs @ docs.T
        bm25 = BM25().fit([lexical_terms(d["text"]) for d in task["corpus"]])
        self.sparse = np.asarray([bm25.scores(lexical_terms(q["text"])) for q in self.queries])

    def score(self, rule: Callable[[Scored, int, int], list[str]], depth: int) -> float:
        """nDCG@10 x 100 of ``rule(self, query index, depth)``, the ranked ids of each query."""
        qrels = self.task["qrels"]
        return 100 * float(np.mean([ndcg_at_10(rule(self, i, depth), qrels[q["id"]])
                                    for i, q in enumerate(self.queries)]))

    def sides(self, i: int, depth: int) -> tuple[dict[str, float], dict[str, float]]:
        sparse = {k: v for k, v in top(self.sparse[i], self.ids, depth).items() if v > 0}
        return top(self.cos[i], self.ids, depth), sparse

    def fused(self, i: int, depth: int, fusion) -> list[str]:
        from m3e.fusion import fuse

        return list(fuse(*self.sides(i, depth), fusion))[:10]

    def min_max_both(self, i: int, depth: int, dense_weight: float, floor: float | None = None) -> list[str]:
        """Both sides min-max; with ``floor``, the sparse share scaled by the top-10 agreement."""
        dense, sparse = self.sides(i, depth)
        share = 1 - dense_weight
        if floor is not None and sparse:
            top_dense = set(list(dense)[:10])
            top_sparse = list(sparse)[:10]
            share *= floor + (1 - floor) * sum(k in top_dense for k in top_sparse) / len(top_sparse)
        fused = {k: (1 - share) * v for k, v in _min_max(dense).items()}
        for k, v in _min_max(sparse).items():
            fused[k] = fused.get(k, 0.0) + share * v
        return sorted(fused, key=lambda k: -fused[k])[:10]


def _min_max(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    return {k: (v - low) / (high - low) if high > low else 1.0 for k, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--backend", default=None, help="the model's backend (default: torch, exact vectors)")
    ap.add_argument("--tasks", nargs="+", default=list(DEV_TASKS), help="TASK:PROFILE, e.g. NewsHeadlineRetrieval:dev")
    ap.add_argument("--depths", default="20,50,100", help="candidates taken from each side, comma separated")
    args = ap.parse_args()

    from m3e.data.paths import data_dir
    from m3e.fusion import Fusion
    from m3e.loading import load_model

    model = load_model(None if args.model == "default" else args.model, backend=args.backend)
    depths = [int(d) for d in args.depths.split(",")]
    tasks: dict[str, Scored] = {}
    for spec in args.tasks:
        name, _, profile = spec.partition(":")
        task = task_file(data_dir(), name, profile or "dev")
        if task is None:
            print(f"{spec}: no such task file (run `m3e data build`)")
            continue
        tasks[spec] = Scored(model, task)
        print(f"scored {spec}: {len(task['queries'])} queries, {len(task['corpus'])} documents", flush=True)

    rules: list[tuple[str, Callable[[Scored, int, int], list[str]]]] = [
        ("dense alone", lambda s, i, d: list(top(s.cos[i], s.ids, 10))),
        ("sparse alone", lambda s, i, d: list(top(s.sparse[i], s.ids, 10))),
    ]
    fusions = [Fusion("rrf", rrf_k=k) for k in (10, 60)]
    fusions += [Fusion("weighted", dense_weight=w) for w in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9)]
    for fusion in fusions:
        rules.append((fusion.describe(), lambda s, i, d, f=fusion: s.fused(i, d, f)))
    for w in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
        rules.append((f"both min-max, dense {w:g}", lambda s, i, d, w=w: s.min_max_both(i, d, w)))
    for w in (0.4, 0.5, 0.6):
        for floor in (0.0, 0.1, 0.2):
            rules.append((f"agreement, sparse up to {1 - w:g}, floor {floor:g}",
                          lambda s, i, d, w=w, f=floor: s.min_max_both(i, d, w, f)))

    names = list(tasks)
    for depth in depths:
        print(f"\ncandidates per side: {depth}")
        print("| fusion | " + " | ".join(names) + " | gain over dense | worst margin to the better side |")
        print("|---|" + "---:|" * (len(names) + 2))
        alone = {n: (tasks[n].score(rules[0][1], depth), tasks[n].score(rules[1][1], depth)) for n in names}
        for label, rule in rules:
            cells = [tasks[n].score(rule, depth) for n in names]
            gain = np.mean([c - alone[n][0] for c, n in zip(cells, names, strict=True)])
            worst = min(c - max(alone[n]) for c, n in zip(cells, names, strict=True))
            print(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {gain:+.2f} | {worst:+.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
