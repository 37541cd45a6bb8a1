"""Recall@10 and query latency of the embedded index store against exact brute-force search, and the latency of
sparse (BM25) and hybrid search beside dense on the same store.

    python bench/search.py [--n 100000] [--dim 384] [--queries 200] [--data clustered|random] [--no-hybrid]
                           [--out report.md]

Vectors: ``clustered`` draws unit vectors around 1,000 random centres (a stand-in for real
sentence embeddings, which are far from uniform); ``random`` is uniform on the sphere, the
worst case for any partition-based index. Ground truth is the exact top 10 by cosine
(numpy). Measured through ``LanceStore.search`` (what `m3e search` calls, results decoded),
without an ANN index (exact scan) and with the IVF index that `m3e index build` creates
from 50k chunks on, at several ``nprobes``.

Hybrid (unless --no-hybrid): every row also gets a real Chinese text (pieces of up to 200 characters of the
offline training data, ``m3e data build``'s train/*.jsonl, cycled when there are fewer than --n) and its words
(m3e.lexical) under LanceDB's full-text index, as `m3e index build` stores them. Each query is a vector near a
random row and 4-12 characters of that row's text. Timed per query, as `Index.search` runs it after the query
is embedded: dense alone (IVF, nprobes 32, top 10); sparse alone (the query's words, then BM25 top 10); hybrid
(both sides' top 50, fused by m3e.fusion's default, top 10, as Index.search runs it: the sparse side in a
worker thread beside the dense one). With --dim 384 (the default model's), dense and hybrid are timed again
with the query text embedded by the default model first, as `m3e search` does.
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


def real_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of up to 200 characters from the offline training data (cycled if there are fewer)."""
    import json

    from m3e.data.paths import data_dir

    pieces: dict[str, None] = {}
    for path in sorted((data_dir() / "train").glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                for value in json.loads(line).values():
                    if isinstance(value, str) and len(value) >= 20:
                        for s in range(0, len(value), 200):
                            pieces.setdefault(value[s: s + 200])
                if len(pieces) >= n:
                    break
        if len(pieces) >= n:
            break
    texts = list(pieces)
    if not texts:
        raise SystemExit("no training data: run `m3e data build` first, or pass --no-hybrid")
    rng = np.random.default_rng(seed)
    rng.shuffle(texts)
    return [texts[i % len(texts)] for i in range(n)]


def measure_modes(store, queries: np.ndarray, texts: list[str], k: int, model=None,
                  seed: int = 2) -> dict[str, list[float]]:
    """Per-query latency of dense, sparse and hybrid search as Index.search runs them; with ``model``, the dense side also embeds the query text (the
    vector found is then not the row's: the latency is what is measured)."""
    from m3e.fusion import FUSION_DEPTH, Fusion
    from m3e.index.index import fused_hits, hybrid_hits
    from m3e.lexical import lexical_terms

    def dense(q: np.ndarray, w: str, n: int) -> list:
        if model is not None:
            q = np.asarray(model.encode_queries([w], show_progress=False))[0]
        return store.search(q, n)

    rng = np.random.default_rng(seed)
    words = []
    for _ in range(len(queries)):
        text = texts[int(rng.integers(len(texts)))]
        length = int(rng.integers(4, 13))
        start = int(rng.integers(0, max(len(text) - length, 1)))
        words.append(text[start: start + length])
    lat: dict[str, list[float]] = {"dense": [], "sparse": [], "hybrid": [], "hybrid, one side after the other": []}
    store.search(queries[0], k)
    store.search_sparse(lexical_terms(words[0]), k)
    dense(queries[0], words[0], k)
    for q, w in zip(queries, words, strict=True):
        t = time.perf_counter()
        dense(q, w, k)
        lat["dense"].append(time.perf_counter() - t)
        t = time.perf_counter()
        store.search_sparse(lexical_terms(w), k)
        lat["sparse"].append(time.perf_counter() - t)
        t = time.perf_counter()
        hybrid_hits(lambda q=q, w=w: dense(q, w, FUSION_DEPTH),
                    lambda w=w: store.search_sparse(lexical_terms(w), FUSION_DEPTH), Fusion())[:k]
        lat["hybrid"].append(time.perf_counter() - t)
        t = time.perf_counter()
        fused_hits(dense(q, w, FUSION_DEPTH), store.search_sparse(lexical_terms(w), FUSION_DEPTH), Fusion())[:k]
        lat["hybrid, one side after the other"].append(time.perf_counter() - t)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", default="clustered", choices=["clustered", "random"])
    ap.add_argument("--nprobes", default="8,16,32,64")
    ap.add_argument("--out", default=None, help="write a markdown report here")
    ap.add_argument("--query-backend", default="auto",
                    help="backend of the default model that embeds the query in the embedded rows (default auto, as "
                    "`m3e index` records it)")
    ap.add_argument("--no-hybrid", dest="hybrid", action="store_false",
                    help="vectors only: no texts, no full-text index, no sparse / hybrid rows")
    args = ap.parse_args()

    import lancedb

    from m3e.fusion import FUSION_DEPTH, Fusion
    from m3e.index.lance_store import LanceStore
    from m3e.index.store import Row
    from m3e.lexical import lexical_terms

    x = make_vectors(args.n + args.queries, args.dim, args.data, seed=0)
    x, queries = x[: args.n], x[args.n:]
    queries = queries + 0.02 * np.random.default_rng(1).standard_normal(queries.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth, brute_lat = exact_top(queries, x, args.k)

    texts = real_texts(args.n) if args.hybrid else []
    rows_md = []
    with tempfile.TemporaryDirectory() as tmp:
        config = {"name": "lancedb", "path": "lance", "ann": "none", "sparse": args.hybrid}
        store = LanceStore(tmp, config, dim=args.dim, create=True)
        start = time.perf_counter()
        step = 10_000
        for s in range(0, args.n, step):
            ids = range(s, min(s + step, args.n))
            if args.hybrid:
                rows = [Row(str(i), str(i), 0, 0, len(texts[i]), texts[i], {"g": i % 10},
                            terms=lexical_terms(texts[i])) for i in ids]
            else:
                rows = [Row(str(i), str(i), 0, 0, 10, f"chunk {i}", {"g": i % 10}) for i in ids]
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
        modes, embedded, model = {}, {}, None
        if args.hybrid:
            modes = measure_modes(store, queries, texts, args.k)
            if args.dim == 384:  # the default model's dimension: time the query's embedding too
                from m3e.loading import load_model

                model = load_model(backend=args.query_backend)
                embedded = measure_modes(store, queries, texts, args.k, model=model)

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
    if modes:
        lines += [
            f"Dense, sparse and hybrid on the same {args.n:,} rows (IVF nprobes 32; each row also holds a Chinese "
            f"text of up to 200 characters and its words under LanceDB's full-text index; query: a vector near a "
            f"row and 4-12 characters of its text; hybrid: both sides' top {FUSION_DEPTH} fused by {Fusion().describe()}; "
            "the rows without the model: query embedding not included):",
            "",
            "| search | p50 ms | p99 ms |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {ms(lat, 50):.1f} | {ms(lat, 99):.1f} |" for name, lat in modes.items()]
        lines += [f"| {name}, the query embedded by the default model ({model.backend}) first | {ms(lat, 50):.1f} | "
                  f"{ms(lat, 99):.1f} |" for name, lat in embedded.items() if name != "sparse"]
        lines.append("")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(report + "\n")


if __name__ == "__main__":
    main()
