"""Capacity numbers for docs/scaling.md: encoding rate per core and per backend, Ray's overhead, and the stores
(LanceDB, PostgreSQL + pgvector) on real text encoded by the default model.

    .venv/bin/python bench/scale.py encode [--texts 4000] [--shard 250] [--backends torch,int8,openvino] [--repeats 2]
                                       [--chunk-texts 200] [--skip-ray]
    .venv/bin/python bench/scale.py stores [--n 30000] [--queries 200] [--lance none,ivf,hnsw-sq,ivf-pq]
    .venv/bin/python bench/scale.py footprint [--n 30000] [--queries 200]

``encode``: the same real texts (the offline training data's, `m3e data build`) encoded by the default model
in one process with one thread, per backend (texts/s per core); then through Ray (a local Ray on this
machine, `m3e.distributed.encode_shards`: shards of ``--shard`` texts written as parquet parts) with 1 actor
and with 2 actors of one thread each, on the fastest backend. Ray's throughput counts from the moment the
actors are up (their start-up, model load included, is reported apart); the overhead per shard is the run's
time beyond the actors' own time spent in their shards.

``stores``: ``--n`` texts encoded as documents (cached in ~/.cache/m3e/bench/scale/) and ``--queries`` other
texts as queries; the exact top 10 by numpy is the truth. Built and searched through m3e's own store classes
(what `m3e index build` / `m3e search` run): LanceDB exact, IVF-flat, IVF-HNSW-SQ and IVF-PQ; pgvector's HNSW
on a PostgreSQL 16 started here (pgserver). Build time, on-disk size, query latency p50 / p95 (one query at
a time) and recall@10.

``footprint``: bytes per million vectors at 384 / 256 / 128 dimensions (the first dimensions of the default
model's vectors, renormalised), float32 / int8 / binary, and the recall@10 each keeps against the exact top 10
of the full float32 vectors (brute force over the quantized vectors: int8 codes mapped back to values against
the float32 query, as a scalar-quantized index scores them; binary by Hamming distance, then also with the top 100
rescored in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CACHE = Path(os.environ.get("M3E_HOME", "~/.cache/m3e")).expanduser() / "bench" / "scale"
RAY_TEMP = Path(tempfile.gettempdir()) / f"m3e-scale-ray-{os.getpid()}"  # short: Ray's socket paths live under it


def real_texts(n: int, skip: int = 0, long: bool = False) -> list[str]:
    """``n`` distinct texts from the training data, every source in turn (after the first ``skip``); ``long``:
    up to 400 characters each instead of 200."""
    from m3e.data.paths import data_dir

    files = sorted((data_dir() / "train").glob("*.jsonl"))
    if not files:
        raise SystemExit("no training data: run `m3e data fetch` and `m3e data build` first")
    streams = [_texts_of(f, 400 if long else 200) for f in files]
    seen: set[str] = set()
    out: list[str] = []
    while streams and len(out) < n + skip:
        for stream in list(streams):
            text = next(stream, None)
            if text is None:
                streams.remove(stream)
            elif text not in seen:
                seen.add(text)
                out.append(text)
    return out[skip: skip + n]


def _texts_of(path: Path, chars: int):  # type: ignore[no-untyped-def]
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            for key in ("text", "text_pos", "text_neg"):
                value = record.get(key)
                if isinstance(value, str) and value.strip():
                    yield value.strip()[:chars]


def encoded(n: int, queries: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Documents and queries encoded by the default model (fastest backend), cached by size."""
    import m3e

    CACHE.mkdir(parents=True, exist_ok=True)
    docs_file, queries_file = CACHE / f"docs-{n}.npy", CACHE / f"queries-{queries}-after-{n}.npy"
    texts = real_texts(n + queries)
    if not docs_file.exists() or not queries_file.exists():
        model = m3e.load(backend="auto")
        # The texts' order does not depend on n: a smaller cached run is the first rows of this one.
        smaller = max((int(p.stem.split("-")[1]) for p in CACHE.glob("docs-*.npy") if int(p.stem.split("-")[1]) < n),
                      default=0)
        done = np.load(CACHE / f"docs-{smaller}.npy") if smaller else np.zeros((0, model.dim), dtype=np.float32)
        t0 = time.perf_counter()
        rest = np.asarray(model.encode_documents(texts[smaller:n], show_progress=True), dtype=np.float32)
        print(f"encoded {n - smaller} texts with {model.backend} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        docs = np.concatenate([done, rest])
        np.save(docs_file, docs)
        np.save(queries_file, np.asarray(model.encode_queries(texts[n:], show_progress=False), dtype=np.float32))
    return np.load(docs_file), np.load(queries_file), texts[:n]


def exact_top(docs: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    scores = queries @ docs.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------- encode
def bench_encode(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import m3e

    texts = real_texts(args.texts)
    os.environ["M3E_NUM_THREADS"] = "1"  # one thread for torch and for the backends: a rate per core
    # The local Ray's token, given before Ray is first imported: Ray would otherwise write one to ~/.ray, which
    # later `ray start` clusters on this machine would pick up.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    torch.set_num_threads(1)
    rates: dict[str, float] = {}
    for backend in args.backends.split(","):
        model = m3e.load(backend=backend)
        model.encode(texts[:64], show_progress=False)  # warm-up
        t0 = time.perf_counter()
        model.encode(texts, show_progress=False)
        rates[backend] = len(texts) / (time.perf_counter() - t0)
        print(f"1 process, 1 thread, {backend}: {rates[backend]:.1f} texts/s", file=sys.stderr)
    fastest = max(rates, key=lambda b: rates[b])
    chunk_rates: dict[str, float] = {}
    if args.chunk_texts:  # index chunks: pieces of 400 characters (the default chunk size) of the longer texts
        long_texts = [t for t in real_texts(20 * args.chunk_texts, long=True) if len(t) >= 400][: args.chunk_texts]
        for backend in args.backends.split(","):
            model = m3e.load(backend=backend)
            t0 = time.perf_counter()
            model.encode(long_texts, show_progress=False)
            chunk_rates[backend] = len(long_texts) / (time.perf_counter() - t0)
            print(f"1 process, 1 thread, {backend}, 400-character chunks: {chunk_rates[backend]:.1f} texts/s",
                  file=sys.stderr)
    if args.skip_ray:
        return {"texts": len(texts), "per_core": rates, "chunks": len(chunk_rates and long_texts),
                "per_core_400_chars": chunk_rates}
    # The same shards, the same reading, batching and parquet writing: in this process (ShardEncoder called
    # directly, no Ray), then through Ray with 1 and 2 actors; interleaved and repeated, since the machine is
    # shared, and the medians kept.
    root = _write_bench_shards(texts, args.shard)
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "1": [], "2": []}
    for _ in range(args.repeats):
        runs["local"].append(_local_run(root, fastest))
        for n in (1, 2):
            runs[str(n)].append(_ray_run(root, fastest, n))
    shutil.rmtree(root, ignore_errors=True)
    import ray

    ray.shutdown()
    shutil.rmtree(RAY_TEMP, ignore_errors=True)
    med = {k: statistics.median(r["rate"] for r in v) for k, v in runs.items()}
    return {"texts": len(texts), "mean_chars": sum(map(len, texts)) / len(texts), "per_core": rates,
            "ray_backend": fastest, "shard_texts": args.shard, "runs": runs, "median_rate": med,
            "ratio_1_actor": med["1"] / med["local"], "ratio_2_actors_per_core": med["2"] / 2 / med["local"],
            "overhead_per_shard_ms": statistics.median(r["overhead_per_shard_ms"] for r in runs["1"])}


def _write_bench_shards(texts: list[str], shard: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="m3e-scale-"))
    (root / "in").mkdir()
    for s, start in enumerate(range(0, len(texts), shard)):
        (root / "in" / f"s{s:04d}.jsonl").write_text(
            "".join(json.dumps({"id": str(i), "text": texts[i]}, ensure_ascii=False) + "\n"
                    for i in range(start, min(start + shard, len(texts)))), encoding="utf-8")
    return root


def _spec(backend: str) -> Any:
    from m3e.distributed import EncodeSpec
    from m3e.paths import default_model_path

    return EncodeSpec(model=str(default_model_path()), backend=backend, threads=1)


def _local_run(root: Path, backend: str) -> dict[str, Any]:
    from m3e.distributed.encoding import ShardEncoder

    out = root / "out-local"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    encoder = ShardEncoder(_spec(backend), str(out))
    shards = sorted((root / "in").glob("*.jsonl"))
    t0 = time.perf_counter()
    rows = sum(encoder.encode_shard(s)[1] for s in shards)
    rate = rows / (time.perf_counter() - t0)
    print(f"1 process, the same shards: {rate:.1f} texts/s", file=sys.stderr)
    return {"rate": rate}


def _ray_run(root: Path, backend: str, actors: int) -> dict[str, Any]:
    import ray

    from m3e.distributed import encode_shards

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
                 logging_level="WARNING", log_to_driver=False, _temp_dir=str(RAY_TEMP))
    shutil.rmtree(root / "out", ignore_errors=True)
    shards: list[dict[str, Any]] = []  # the actors' reports: when each shard started and finished, its seconds
    t0 = time.time()
    report = encode_shards(str(root / "in" / "*.jsonl"), root / "out", _spec(backend), actors=actors,
                           progress=lambda row, rep, pending: shards.append(dict(row)))
    wall = time.time() - t0
    first, last = min(float(r["started"]) for r in shards), max(float(r["finished"]) for r in shards)
    busy = sum(float(r["seconds"]) for r in shards)
    # From the first shard's start to the last one's end, the actors were busy in shards or waiting on Ray:
    # the waiting, per shard, is Ray's overhead (scheduling, moving the task and its result, the driver's turn).
    span = last - first
    out = {"actors": actors, "wall_s": wall, "startup_s": first - t0, "rate": report.rows / span,
           "shards": len(shards), "overhead_per_shard_ms": 1000 * (span * actors - busy) / len(shards),
           "shard_s": busy / len(shards)}
    startup = first - t0
    print(f"ray, {actors} actor(s): {out['rate']:.1f} texts/s after {startup:.1f} s start-up", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------------- stores
def bench_stores(args: argparse.Namespace) -> dict[str, Any]:
    docs, queries, texts = encoded(args.n, args.queries)
    truth = exact_top(docs, queries)
    out: dict[str, Any] = {"n": len(docs), "dim": int(docs.shape[1]), "queries": len(queries), "runs": []}
    kinds = {"none": [{}], "ivf": [{"nprobes": 16}, {"nprobes": 32}], "hnsw-sq": [{"ef": 40}, {"ef": 100}],
             "ivf-pq": [{"nprobes": 32, "refine_factor": 1}, {"nprobes": 32, "refine_factor": 10}]}
    for ann in args.lance.split(","):
        out["runs"] += _lance(docs, queries, texts, truth, ann, kinds[ann])
    out["runs"] += _pgvector(docs, queries, texts, truth, [{"ef_search": 40}, {"ef_search": 100}])
    return out


def _rows(texts: list[str], start: int, end: int) -> list[Any]:
    from m3e.index.store import Row

    return [Row(f"d{i}#0", f"d{i}", 0, 0, len(texts[i]), texts[i], {}) for i in range(start, end)]


def _timed_search(store: Any, queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    found, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = store.search(q, 10)
        times.append(1000 * (time.perf_counter() - t0))
        found.append([int(h.doc_id[1:]) for h in hits])
    return found, times


def _lance(docs: np.ndarray, queries: np.ndarray, texts: list[str], truth: np.ndarray, ann: str,
           settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from m3e.index.lance_store import LanceStore

    root = Path(tempfile.mkdtemp(prefix="m3e-lance-"))
    config: dict[str, Any] = {"name": "lancedb", "path": "lance", "ann": ann, "sparse": False}
    t0 = time.perf_counter()
    store = LanceStore(root, config, dim=docs.shape[1], create=True)
    store.begin({})
    for start in range(0, len(docs), 10_000):
        store.add(_rows(texts, start, min(start + 10_000, len(docs))), docs[start:start + 10_000])
    store.commit()
    store.finish_build()
    build = time.perf_counter() - t0
    size = dir_size(root)
    runs = []
    for setting in settings:
        store.config.update(setting)
        store.search(queries[0], 10)  # warm-up: index loaded
        found, times = _timed_search(store, queries)
        runs.append(_run_row("lancedb", ann, setting, build, size, found, times, truth))
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return runs


def _pgvector(docs: np.ndarray, queries: np.ndarray, texts: list[str], truth: np.ndarray,
              settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import pgserver
    import psycopg

    from m3e.index.pgvector_store import PgVectorStore

    root = Path(tempfile.mkdtemp(prefix="m3e-pg-"))
    server = pgserver.get_server(root / "pg", cleanup_mode="stop")
    try:
        url = server.get_uri()
        config: dict[str, Any] = {"name": "pgvector", "url": url, "table": "bench", "sparse": False}
        t0 = time.perf_counter()
        store = PgVectorStore(root, config, dim=docs.shape[1], create=True)
        store.begin({})
        for start in range(0, len(docs), 10_000):
            store.add(_rows(texts, start, min(start + 10_000, len(docs))), docs[start:start + 10_000])
            store.commit()
        store.finish_build()
        build = time.perf_counter() - t0
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_total_relation_size('bench')").fetchone()
            size = int(row[0]) if row else 0
        runs = []
        for setting in settings:
            store.config.update(setting)
            store.search(queries[0], 10)
            found, times = _timed_search(store, queries)
            runs.append(_run_row("pgvector", "hnsw", setting, build, size, found, times, truth))
        store.close()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return runs


def _run_row(engine: str, ann: str, setting: dict[str, Any], build: float, size: int, found: list[list[int]],
             times: list[float], truth: np.ndarray) -> dict[str, Any]:
    times = sorted(times)
    row = {"engine": engine, "index": ann, "setting": setting, "build_s": build, "disk_mb": size / 2**20,
           "p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
           "recall@10": recall(found, truth)}
    print(json.dumps(row), file=sys.stderr)
    return row


# ---------------------------------------------------------------------------------------------------- footprint
def bench_footprint(args: argparse.Namespace) -> dict[str, Any]:
    from m3e.quantization import quantize_embeddings

    docs, queries, _ = encoded(args.n, args.queries)
    truth = exact_top(docs, queries)
    rows = []
    for dim in (384, 256, 128):
        d = docs[:, :dim] / np.linalg.norm(docs[:, :dim], axis=1, keepdims=True)
        q = queries[:, :dim] / np.linalg.norm(queries[:, :dim], axis=1, keepdims=True)
        ranges = np.vstack((d.min(axis=0), d.max(axis=0)))
        # int8 as a scalar-quantized index uses it: the stored codes mapped back to values, the query in float32
        steps = (ranges[1] - ranges[0]) / 255
        d8 = (quantize_embeddings(d, "int8", ranges).astype(np.float32) + 128.5) * steps + ranges[0]
        db = np.unpackbits(quantize_embeddings(d, "ubinary"), axis=1).astype(np.float32) * 2 - 1
        qb = np.unpackbits(quantize_embeddings(q, "ubinary"), axis=1).astype(np.float32) * 2 - 1
        binary_top = exact_top(db, qb, 100)  # most agreeing signs = least Hamming distance
        rescored = [c[np.argsort(-(d[c] @ qq))][:10].tolist() for c, qq in zip(binary_top, q, strict=True)]
        for precision, top, per_vector in (
            ("float32", exact_top(d, q), 4 * dim), ("int8", exact_top(d8, q), dim),
            ("binary", binary_top[:, :10], dim // 8), ("binary + float32 rescoring of 100", np.asarray(rescored),
                                                        dim // 8),
        ):
            rows.append({"dim": dim, "precision": precision, "mb_per_million": per_vector * 1e6 / 2**20,
                         "recall@10": recall([t.tolist() for t in top], truth)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return {"n": len(docs), "queries": len(queries), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    enc = sub.add_parser("encode")
    enc.add_argument("--texts", type=int, default=4000)
    enc.add_argument("--shard", type=int, default=250)
    enc.add_argument("--backends", default="torch,int8,openvino")
    enc.add_argument("--repeats", type=int, default=2)
    enc.add_argument("--chunk-texts", type=int, default=200, help="400-character chunks timed per backend")
    enc.add_argument("--skip-ray", action="store_true", help="the rates per core only")
    for name in ("stores", "footprint"):
        p = sub.add_parser(name)
        p.add_argument("--n", type=int, default=30_000)
        p.add_argument("--queries", type=int, default=200)
        if name == "stores":
            p.add_argument("--lance", default="none,ivf,hnsw-sq,ivf-pq", help="LanceDB's indexes to build")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"encode": bench_encode, "stores": bench_stores, "footprint": bench_footprint}[args.part](args)
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    CACHE.mkdir(parents=True, exist_ok=True)
    name = args.part + ("-per-core" if getattr(args, "skip_ray", False) else "")
    (CACHE / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
