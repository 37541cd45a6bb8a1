"""m3e's reranker backends vs sentence-transformers' CrossEncoder (torch fp32): same model, same pairs, one run.

    python bench/rerank.py MODEL [--pairs 128] [--rounds 5] [--batch-size 32] [--threads 2]
        [--backends torch,bf16,int8,openvino] [--markdown FILE]

Pairs are (question, answer) pairs of the offline InsuranceQA retrieval task (test profile: real questions
and answers of 50-300 characters) when the data is built, else synthetic ones. Engines run in rotating order
for ``--rounds`` rounds (the machine is shared and noisy); the table gives the median pairs/s, the ratio to
the CrossEncoder in the same run, and the Spearman correlation of each engine's scores with the
CrossEncoder's (1.0: the same order). m3e reads one window per document here (``--max-windows 1``), which is
CrossEncoder's truncation; more windows score a long document by its best window instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np


def bench_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    try:
        from m3e.data.paths import data_dir

        task = json.loads((data_dir() / "tasks" / "InsuranceQARetrieval" / "full.json").read_text(encoding="utf-8"))
        queries = [q["text"] for q in task["queries"]]
        docs = [d["text"] for d in task["corpus"]]
        return [(rng.choice(queries), rng.choice(docs)) for _ in range(n)]
    except (OSError, KeyError, ValueError):
        words = "保险 理赔 医疗 汽车 房屋 价格 合同 条款 申请 材料 the policy claim cover premium".split()
        return [(" ".join(rng.choices(words, k=6)), " ".join(rng.choices(words, k=60))) for _ in range(n)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def engines(
    model: str, backends: list[str], batch_size: int, max_windows: int = 1
) -> dict[str, Callable[[list[tuple[str, str]]], Any]]:
    from sentence_transformers import CrossEncoder

    import m3e

    ce = CrossEncoder(model, device="cpu")
    out: dict[str, Callable[[list[tuple[str, str]]], Any]] = {
        "sentence-transformers CrossEncoder fp32": lambda pairs: ce.predict(pairs, batch_size=batch_size),
    }
    for backend in backends:
        reranker = m3e.load_reranker(model, backend=backend, max_windows=max_windows)
        out[f"m3e {backend}"] = lambda pairs, r=reranker: r.predict(pairs, batch_size=batch_size)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="torch,bf16,int8,openvino")
    parser.add_argument("--max-windows", type=int, default=1,
                        help="m3e's windows per long document (default 1: truncation, as CrossEncoder does)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args()
    os.environ["M3E_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    pairs = bench_pairs(args.pairs)
    runners = engines(args.model, [b for b in args.backends.split(",") if b], args.batch_size, args.max_windows)
    names = list(runners)
    scores = {name: np.asarray(runners[name](pairs[:8])) for name in names}  # warm-up (and artefact builds)
    scores = {name: np.asarray(runners[name](pairs)) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            start = time.perf_counter()
            runners[name](pairs)
            times[name].append(time.perf_counter() - start)
    reference = names[0]
    base = len(pairs) / statistics.median(times[reference])
    lines = [
        f"{len(pairs)} pairs, batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds (median), "
        f"{platform.processor() or platform.machine()}, model {args.model}",
        "",
        "| engine | pairs/s | x CrossEncoder fp32 | Spearman vs fp32 | max abs score diff |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        rate = len(pairs) / statistics.median(times[name])
        rho = spearman(scores[name], scores[reference])
        diff = float(np.max(np.abs(scores[name] - scores[reference])))
        lines.append(f"| {name} | {rate:.1f} | {rate / base:.2f} | {rho:.4f} | {diff:.4f} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
