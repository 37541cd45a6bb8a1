"""Retrieve-then-rerank quality along a reranker's training, and with the reranker's score fused with the
embedder's: one scoring pass per reranker, every fusion weight from it.

    python bench/rerank_curve.py RERANKER_DIR [RERANKER_DIR ...] [--profile full|dev] [--candidates 20]
        [--tasks IdiomReverseDictionary InsuranceQARetrieval NewsHeadlineRetrieval] [--backend openvino]

For each retrieval task of the offline suite (``--profile dev``: the dev split, where a task has one; ``full``: the
test split), the default embedding model retrieves every query's top ``--candidates`` documents (exact cosine,
as ``m3e eval`` does); each reranker scores those pairs once; then nDCG@10 x 100 is computed for the order of

- the embedder alone (weight 0),
- the reranker alone (weight 1, what ``m3e eval --rerank`` measures),
- and the fusion ``w * minmax(reranker) + (1 - w) * minmax(cosine)`` over each query's candidates, for w in
  0.1 ... 0.9 (the weighted min-max fusion of ``m3e.fusion``, as hybrid search fuses its two sides).

nDCG@10 is the standard one (graded gains, log2 discount, ideal from the qrels), as pytrec_eval computes it.

``--write-weight`` (with ``--profile dev`` and one reranker) records the weight with the best dev average in the
reranker's directory (``m3e_rerank.json``), which ``m3e eval --rerank``, ``m3e search --rerank`` and the
server then use: how ``make default-reranker`` chooses it, on the dev split only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
TASKS = ["IdiomReverseDictionary", "InsuranceQARetrieval", "NewsHeadlineRetrieval"]


def ndcg_at_10(ranked: list[str], gains: dict[str, int]) -> float:
    dcg = sum(gains.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sorted(gains.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def min_max(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min())
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def load_task(name: str, profile: str) -> dict[str, object] | None:
    from m3e.data.paths import data_dir

    path = data_dir() / "tasks" / name / f"{profile}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rerankers", nargs="+")
    parser.add_argument("--profile", default="full", choices=["full", "dev"])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--json", default=None, help="also write every score to this file")
    parser.add_argument("--write-weight", action="store_true",
                        help="record the best dev weight in the (one) reranker's directory")
    args = parser.parse_args()
    if args.write_weight and (args.profile != "dev" or len(args.rerankers) != 1):
        raise SystemExit("--write-weight chooses on the dev split, for one reranker")

    import m3e

    embedder = m3e.load(backend=args.backend)
    results: dict[str, dict[str, list[float]]] = {}  # reranker -> task -> nDCG per weight
    for task_name in args.tasks:
        task = load_task(task_name, args.profile)
        if task is None:
            print(f"{task_name}: no {args.profile} split; skipped")
            continue
        corpus = task["corpus"]
        queries = task["queries"]
        qrels = task["qrels"]
        assert isinstance(corpus, list) and isinstance(queries, list) and isinstance(qrels, dict)
        doc_ids = [d["id"] for d in corpus]
        doc_texts = [d["text"] for d in corpus]
        started = time.perf_counter()
        docs = embedder.encode_documents(doc_texts)
        qvecs = embedder.encode_queries([q["text"] for q in queries])
        cosines = qvecs @ docs.T
        heads = np.argsort(-cosines, axis=1, kind="stable")[:, : args.candidates]
        print(f"{task_name} ({args.profile}): {len(queries)} queries, {len(corpus)} documents, "
              f"embedded in {time.perf_counter() - started:.0f}s", flush=True)
        for reranker_dir in args.rerankers:
            reranker = m3e.load_reranker(reranker_dir, backend=args.backend)
            pairs = [(q["text"], doc_texts[j]) for q, head in zip(queries, heads, strict=True) for j in head]
            started = time.perf_counter()
            scores = np.asarray(reranker.predict(pairs, activation="identity"), dtype=np.float64)
            scores = scores.reshape(len(queries), -1)
            per_weight = []
            for w in WEIGHTS:
                total = 0.0
                for row, q in enumerate(queries):
                    head = heads[row]
                    fused = w * min_max(scores[row]) + (1 - w) * min_max(cosines[row, head].astype(np.float64))
                    order = [doc_ids[head[i]] for i in np.argsort(-fused, kind="stable")]
                    rest = [doc_ids[j] for j in np.argsort(-cosines[row], kind="stable")[args.candidates : 10]]
                    total += ndcg_at_10(order + rest, {k: int(v) for k, v in qrels.get(q["id"], {}).items()})
                per_weight.append(100 * total / len(queries))
            results.setdefault(reranker_dir, {})[task_name] = per_weight
            print(f"  {reranker_dir}: scored {len(pairs)} pairs in {time.perf_counter() - started:.0f}s; "
                  f"alone {per_weight[-1]:.2f}, embedder {per_weight[0]:.2f}", flush=True)

    print(f"\nnDCG@10 x 100, {args.profile} split, top {args.candidates} candidates of the default model; "
          "w = the reranker's share of the fused score (0: the embedder alone, 1: the reranker alone)\n")
    print("| reranker | task | " + " | ".join(f"w={w:g}" for w in WEIGHTS) + " |")
    print("|---|---|" + "---:|" * len(WEIGHTS))
    for reranker_dir, tasks in results.items():
        name = Path(reranker_dir).parent.name if Path(reranker_dir).name == "model" else Path(reranker_dir).name
        for task_name, per_weight in tasks.items():
            print(f"| {name} | {task_name} | " + " | ".join(f"{x:.2f}" for x in per_weight) + " |")
        if len(tasks) > 1:
            mean = np.mean(list(tasks.values()), axis=0)
            print(f"| {name} | **average** | " + " | ".join(f"{x:.2f}" for x in mean) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    if args.write_weight:
        from m3e.atomic import write_atomic
        from m3e.reranker import RERANK_FILE

        (reranker_dir, tasks), = results.items()
        mean = np.mean(list(tasks.values()), axis=0)
        best = WEIGHTS[int(np.argmax(mean))]
        record = {"rerank_weight": best, "chosen_on": f"{', '.join(tasks)} ({args.profile} split), top "
                  f"{args.candidates} of the default model, nDCG@10 {mean.max():.2f} (embedder alone {mean[0]:.2f}, "
                  f"reranker alone {mean[-1]:.2f})"}
        write_atomic(Path(reranker_dir) / RERANK_FILE, json.dumps(record, indent=1).encode("utf-8"))
        print(f"\nwrote {Path(reranker_dir) / RERANK_FILE}: rerank_weight {best:g}")


if __name__ == "__main__":
    main()
