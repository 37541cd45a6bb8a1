"""Recall@10 and query latency of the embedded index store against exact brute-force search.

    python bench/search.py [--n 100000] [--dim 384] [--queries 200] [--data clustered|random]
                           [--out report.md]

Vectors: ``clustered`` draws unit vectors around 1,000 random centres (a stand-in for real
sentence embeddings, which are far from uniform); ``random`` is uniform on the sphere, the
worst case for any partition-based index. Ground truth is the exact top 10 by cosine
(numpy). Measured through ``LanceStore.search`` (what `m3e search` calls, results decoded),
without an ANN index (exact scan) and with the IVF index that `m3e index build` creates
from 50k chunks on, at several ``nprobes``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def make_vectors(n: int, dim: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((1000, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        x = centres[rng.integers(0, len(centres), n)] + 0.06 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    out = np.zeros((len(q), k), dtype=np.int64)
    lat = []
    for i in range(len(q)):
        t = time.perf_counter()
        s = x @ q[i]
        top = np.argpartition(-s, k)[:k]
        out[i] = top[np.argsort(-s[top])]
        lat.append(time.perf_counter() - t)
    return out, lat


def measure(store, queries: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, list[float]]:
    lat, recall = [], []
    store.search(queries[0], k)  # warm caches
    for q, t in zip(queries, truth, strict=True):
        start = time.perf_counter()
        hits = store.search(q, k)
        lat.append(time.perf_counter() - start)
        recall.append(len({int(h.doc_id) for h in hits} & set(t.tolist())) / k)
    return float(np.mean(recall)), lat


def ms(lat: list[float], p: float) -> float:
    return 1000 * float(np.percentile(lat, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", default="clustered", choices=["clustered", "random"])
    ap.add_argument("--nprobes", default="8,16,32,64")
    ap.add_argument("--out", default=None, help="write a markdown report here")
    args = ap.parse_args()

    import lancedb

    from m3e.index.lance_store import LanceStore
    from m3e.index.store import Row

    x = make_vectors(args.n + args.queries, args.dim, args.data, seed=0)
    x, queries = x[: args.n], x[args.n:]
    queries = queries + 0.02 * np.random.default_rng(1).standard_normal(queries.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth, brute_lat = exact_top(queries, x, args.k)

    rows_md = []
    with tempfile.TemporaryDirectory() as tmp:
        config = {"name": "lancedb", "path": "lance", "ann": "none"}
        store = LanceStore(tmp, config, dim=args.dim, create=True)
        start = time.perf_counter()
        step = 10_000
        for s in range(0, args.n, step):
            rows = [Row(str(i), str(i), 0, 0, 10, f"chunk {i}", {"g": i % 10})
                    for i in range(s, min(s + step, args.n))]
            store.add(rows, x[s: s + len(rows)])
        store.table.optimize()
        load_s = time.perf_counter() - start
        recall, lat = measure(store, queries, truth, args.k)
        rows_md.append(("exact scan (no ANN index)", "-", recall, ms(lat, 50), ms(lat, 99)))
        print(rows_md[-1], flush=True)

        start = time.perf_counter()
        store.config["ann"] = "ivf"
        store.finish_build()
        index_s = time.perf_counter() - start
        partitions = store.table.list_indices()
        for nprobes in [int(v) for v in args.nprobes.split(",")]:
            store.config["nprobes"] = nprobes
            recall, lat = measure(store, queries, truth, args.k)
            name = f"IVF_FLAT, {round(np.sqrt(args.n))} partitions"
            rows_md.append((name, nprobes, recall, ms(lat, 50), ms(lat, 99)))
            print(rows_md[-1], flush=True)
        store.config["nprobes"] = 32
        lat = []
        for q in queries[:50]:
            t = time.perf_counter()
            store.search(q, args.k, {"g": "3"})
            lat.append(time.perf_counter() - t)
        filtered = (ms(lat, 50), ms(lat, 99))

    lines = [
        f"## Semantic-search store: recall@{args.k} and latency "
        f"({args.n:,} vectors, dim {args.dim}, {args.data})",
        "",
        f"`python bench/search.py --n {args.n} --dim {args.dim} --queries {args.queries} "
        f"--data {args.data}`; lancedb {lancedb.__version__}, {os.cpu_count()} CPU cores "
        f"({platform.machine()}), one query at a time, "
        f"{args.queries} queries; ground truth: exact cosine top {args.k} by numpy. "
        f"Load average while measuring: {os.getloadavg()[0]:.1f} (the cores were shared with other jobs).",
        "",
        f"Load {args.n:,} rows: {load_s:.1f} s; IVF index build: {index_s:.1f} s ({len(partitions)} index).",
        "",
        f"| search | nprobes | recall@{args.k} | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {npb} | {rec:.3f} | {p50:.1f} | {p99:.1f} |"
              for name, npb, rec, p50, p99 in rows_md]
    brute = f"| {ms(brute_lat, 50):.1f} | {ms(brute_lat, 99):.1f} |"
    lines += [f"| numpy brute force (reference, no store) | - | 1.000 {brute}",
              "",
              f"Filtered search (`--filter g=3`, 10% of rows, prefilter, IVF nprobes 32): "
              f"p50 {filtered[0]:.1f} ms, "
              f"p99 {filtered[1]:.1f} ms.", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(report + "\n")


if __name__ == "__main__":
    main()
