"""jieba against rjieba for the sparse side: segmentation speed and BM25 retrieval quality.

    python bench/segmenters.py [--profile dev] [--tasks NewsHeadlineRetrieval ...]

Speed: every corpus and query text of the offline retrieval tasks (full profile) cut in search mode, best of
3 passes, characters per second, after one warm-up pass (dictionaries loaded). Quality: nDCG@10 of BM25
(m3e.lexical, k1 1.2, b 0.75) with each segmenter, with and without stop words, on the given profile's task
files (dev by default: the choice is made there, the test is not read).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

RETRIEVAL = ("IdiomReverseDictionary", "InsuranceQARetrieval", "NewsHeadlineRetrieval")


def ndcg_at_10(ranked: list[str], relevant: dict[str, int]) -> float:
    gains = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return gains / ideal if ideal else 0.0


def task_file(data: Path, task: str, profile: str) -> dict | None:
    path = data / "tasks" / task / f"{profile}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def bm25_ndcg(task: dict, segmenter: str, stop_words: bool) -> float:
    from m3e.lexical import BM25, BM25Params, lexical_terms

    ids = [d["id"] for d in task["corpus"]]
    docs = [lexical_terms(d["text"], segmenter, stop_words=stop_words) for d in task["corpus"]]
    bm25 = BM25(BM25Params(segmenter=segmenter, stop_words=stop_words)).fit(docs)
    total = 0.0
    for q in task["queries"]:
        scores = bm25.scores(lexical_terms(q["text"], segmenter, stop_words=stop_words))
        order = np.argsort(-scores, kind="stable")[:10]
        total += ndcg_at_10([ids[i] for i in order], task["qrels"][q["id"]])
    return 100 * total / len(task["queries"])


def speed(texts: list[str], segmenter: str) -> float:
    from m3e.lexical import segmenter as cutter

    cut = cutter(segmenter)
    for t in texts:
        list(cut(t))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for t in texts:
            list(cut(t))
        best = min(best, time.perf_counter() - start)
    return sum(map(len, texts)) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="dev")
    ap.add_argument("--tasks", nargs="+", default=list(RETRIEVAL))
    args = ap.parse_args()
    from m3e.data.paths import data_dir

    data = data_dir()
    texts = []
    for name in RETRIEVAL:
        task = task_file(data, name, "full")
        if task:
            texts += [d["text"] for d in task["corpus"]] + [q["text"] for q in task["queries"]]
    print(f"speed over {len(texts)} texts, {sum(map(len, texts)):,} characters (best of 3 passes):")
    for seg in ("jieba", "rjieba"):
        print(f"  {seg:7s} {speed(texts, seg) / 1e6:.2f} M characters/s")
    print(f"\nBM25 nDCG@10 on the {args.profile} profile:")
    print("| task | jieba | jieba, no stop words | rjieba | rjieba, no stop words |")
    print("|---|---:|---:|---:|---:|")
    for name in args.tasks:
        task = task_file(data, name, args.profile)
        if task is None:
            print(f"| {name} | (no {args.profile} split) | | | |")
            continue
        cells = [bm25_ndcg(task, seg, stops) for seg in ("jieba", "rjieba") for stops in (True, False)]
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
