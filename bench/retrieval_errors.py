"""Where a model and BM25 disagree on an offline retrieval task: per-query ranks of the relevant document.

    python bench/retrieval_errors.py [--task NewsHeadlineRetrieval] [--profile full|dev] [--model PATH]
                                     [--show 10]

Encodes the task's queries and corpus with the model (its query / document prompts), scores the
corpus with the suite's BM25 (same jieba tokens, k1 1.5, b 0.75), and prints nDCG@10 and top-1 of
each, how often one finds the document at rank 1 where the other misses it in the top 10, a
reference hybrid (the sum of per-query z-scored scores; not something m3e ships), and the queries
where the model ranks the relevant document furthest below BM25. Needs `m3e data build`.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="NewsHeadlineRetrieval")
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--show", type=int, default=10, help="queries to print")
    parser.add_argument("--profile", default="full", choices=["full", "dev"],
                        help="the test (full) or the dev split")
    args = parser.parse_args()

    from rank_bm25 import BM25Okapi

    import m3e
    from m3e.data.paths import data_dir
    from m3e.evaluation.baselines import tokenize_zh

    task = json.loads((data_dir() / "tasks" / args.task / f"{args.profile}.json").read_text(encoding="utf-8"))
    corpus, queries, qrels = task["corpus"], task["queries"], task["qrels"]
    position = {d["id"]: i for i, d in enumerate(corpus)}
    model = m3e.load(args.model)
    query_vectors = model.encode_queries([q["text"] for q in queries])
    dense = query_vectors @ model.encode_documents([d["text"] for d in corpus]).T
    bm25 = BM25Okapi([tokenize_zh(d["text"]) or ["\x00"] for d in corpus], k1=1.5, b=0.75)
    sparse = np.array([bm25.get_scores(tokenize_zh(q["text"])) for q in queries])

    def ranks(scores: np.ndarray) -> np.ndarray:
        """0-based rank of the best relevant document (ties broken against it)."""
        out = []
        for i, q in enumerate(queries):
            gold = [position[d] for d, grade in qrels[q["id"]].items() if grade > 0]
            out.append(min(int((scores[i] >= scores[i, g]).sum()) - 1 for g in gold))
        return np.array(out)

    def gains(r: np.ndarray) -> np.ndarray:  # per-query nDCG@10 with one relevant document
        return np.where(r < 10, 1 / np.log2(r + 2), 0.0)

    def ndcg(r: np.ndarray) -> float:
        return float(np.mean(gains(r)))

    def z(scores: np.ndarray) -> np.ndarray:
        return (scores - scores.mean(1, keepdims=True)) / (scores.std(1, keepdims=True) + 1e-9)

    rm, rb = ranks(dense), ranks(sparse)
    print(f"{args.task}: {len(queries)} queries, {len(corpus)} documents; model {model.name}")
    hybrid = ndcg(ranks(z(dense) + z(sparse)))
    print(f"nDCG@10  model {100 * ndcg(rm):.2f}  bm25 {100 * ndcg(rb):.2f}  z-sum hybrid {100 * hybrid:.2f}")
    # Paired bootstrap over queries: how far the model - BM25 difference could move with other queries.
    diff = gains(rm) - gains(rb)
    boot = diff[np.random.default_rng(0).integers(len(diff), size=(10_000, len(diff)))].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    print(f"model - bm25 {100 * diff.mean():+.2f}  "
          f"(95% paired bootstrap interval {100 * low:+.2f} .. {100 * high:+.2f})")
    print(f"top-1    model {100 * (rm == 0).mean():.1f}%  bm25 {100 * (rb == 0).mean():.1f}%")
    print(f"model top-1 where bm25 misses the top 10: {int(((rm == 0) & (rb >= 10)).sum())}; "
          f"bm25 top-1 where the model misses it: {int(((rb == 0) & (rm >= 10)).sum())}")
    print("\nmodel rank | bm25 rank | query | relevant document")
    for i in np.argsort(-(rm - rb), kind="stable")[: args.show]:
        gold = corpus[position[next(iter(qrels[queries[i]["id"]]))]]["text"]
        print(f"{rm[i]} | {rb[i]} | {queries[i]['text']} | {gold[:50]}")


if __name__ == "__main__":
    main()
