"""Choose the hybrid defaults on the dev split: fusion method, dense weight, candidate depth.

    python bench/fusion_sweep.py [--model default] [--profile dev] [--tasks NewsHeadlineRetrieval]

For each task file of the profile: the model's cosines (query prompt / document prompt, as mteb and the index
use them) and BM25 (m3e.lexical, the index's sparse side) are computed once; every fusion setting is then
scored with nDCG@10 (binary relevance, mteb's formula) through m3e.fusion.fuse, the function the index and
`m3e eval ... #hybrid` call. Dense and sparse alone are printed beside them.

Query-dependent rows (``coverage``): the weighted fusion with the sparse side's share scaled, per query, by the
fraction of the query's IDF mass that its best BM25 document contains (1: every query word found; near 0: the
sparse side matched only a stray word, as an idiom's explanation against idioms), to the power 1 or 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from segmenters import RETRIEVAL, ndcg_at_10, task_file


def top(scores: np.ndarray, ids: list[str], depth: int) -> dict[str, float]:
    order = np.argsort(-scores, kind="stable")[:depth]
    return {ids[i]: float(scores[i]) for i in order}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--profile", default="dev")
    ap.add_argument("--tasks", nargs="+", default=list(RETRIEVAL))
    ap.add_argument("--depths", default="20,50,100")
    args = ap.parse_args()

    from m3e.data.paths import data_dir
    from m3e.fusion import Fusion
    from m3e.loading import load_model

    model = load_model(None if args.model == "default" else args.model)
    settings = [Fusion("rrf", rrf_k=k) for k in (10, 30, 60)]
    settings += [Fusion("weighted", dense_weight=w) for w in (0.5, 0.6, 0.7, 0.8, 0.9)]
    depths = [int(d) for d in args.depths.split(",")]
    for name in args.tasks:
        task = task_file(data_dir(), name, args.profile)
        if task is None:
            print(f"{name}: no {args.profile} split")
            continue
        print(f"\n{name} ({args.profile}, {len(task['queries'])} queries, {len(task['corpus'])} documents)")
        sweep(model, task, settings, depths)


def sweep(model, task: dict, settings: list, depths: list[int]) -> None:
    from m3e.fusion import fuse
    from m3e.lexical import BM25, lexical_terms

    ids = [d["id"] for d in task["corpus"]]
    queries = task["queries"]
    docs = np.asarray(model.encode_documents([d["text"] for d in task["corpus"]], show_progress=False))
    qvecs = np.asarray(model.encode_queries([q["text"] for q in queries], show_progress=False))
    cos = qvecs @ docs.T
    bm25 = BM25().fit([lexical_terms(d["text"]) for d in task["corpus"]])
    sparse = [bm25.scores(lexical_terms(q["text"])) for q in queries]

    def score(rank) -> float:
        return 100 * float(np.mean([ndcg_at_10(rank(i), task["qrels"][q["id"]]) for i, q in enumerate(queries)]))

    doc_terms = [set(lexical_terms(d["text"])) for d in task["corpus"]]
    coverage = []
    for i, q in enumerate(queries):
        terms = list(dict.fromkeys(lexical_terms(q["text"])))
        weights = {t: np.log(1 + len(ids) / (1 + sum(t in d for d in doc_terms))) for t in terms}
        best = doc_terms[int(np.argmax(sparse[i]))] if sparse[i].max() > 0 else set()
        total = sum(weights.values())
        coverage.append(sum(w for t, w in weights.items() if t in best) / total if total else 0.0)

    def fused(i: int, depth: int, fusion) -> list[str]:
        s = {k: v for k, v in top(sparse[i], ids, depth).items() if v > 0}
        return list(fuse(top(cos[i], ids, depth), s, fusion))[:10]

    def adaptive(i: int, depth: int, base: float, power: int) -> list[str]:
        from m3e.fusion import Fusion

        share = (1 - base) * coverage[i] ** power
        return fused(i, depth, Fusion("weighted", dense_weight=1 - share))

    print(f"  dense alone  {score(lambda i: list(top(cos[i], ids, 10))):.2f}")
    print(f"  sparse alone {score(lambda i: list(top(sparse[i], ids, 10))):.2f}")
    print("  | fusion | " + " | ".join(f"depth {d}" for d in depths) + " |")
    for fusion in settings:
        cells = [f"{score(lambda i, d=depth, f=fusion: fused(i, d, f)):.2f}" for depth in depths]
        print(f"  | {fusion.describe()} | " + " | ".join(cells) + " |")
    print(f"  mean coverage of the query by its best BM25 document: {np.mean(coverage):.2f}")
    for base in (0.5, 0.6):
        for power in (1, 2):
            cells = [f"{score(lambda i, d=depth, b=base, p=power: adaptive(i, d, b, p)):.2f}" for depth in depths]
            print(f"  | weighted (dense {base:g}), sparse share x coverage^{power} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
