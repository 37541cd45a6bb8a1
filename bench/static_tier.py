"""The static tier beside the full model: offline-suite quality and encoding speed, one run.

    .venv/bin/python bench/static_tier.py [--model DIR] [--backends torch,openvino-int8] [--static DIR] [--dim 256]

Distils the model with ``m3e distill-static`` (into ``~/.cache/m3e/bench/static-<name>-<dim>`` unless
``--static`` names one), scores the full model on each backend and the static model on the offline suite's
tasks (mteb's protocols, as ``m3e eval`` runs them), and times encoding of 256 short queries and 64 passages
(batch 32 for the full model; 2 threads): texts/s and the ratio to the full model on torch fp32. Needs the
offline data (``m3e data fetch && m3e data build``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def throughput(encode: Any, texts: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode(texts)
        times.append(time.perf_counter() - started)
    return len(texts) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--backends", default="torch,openvino-int8", help="backends of the full model to score")
    parser.add_argument("--static", type=Path, default=None, help="an already distilled static model")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-quality", action="store_true", help="speed only")
    args = parser.parse_args()
    os.environ.setdefault("M3E_NUM_THREADS", str(args.threads))

    import torch

    import m3e
    from m3e.evaluation.mteb_adapter import for_mteb
    from m3e.evaluation.runner import evaluate_one
    from m3e.evaluation.suites import get_suite
    from m3e.static import StaticModel, distill_static

    sys.path.insert(0, str(Path(__file__).parent))
    from peers import bench_texts

    torch.set_num_threads(args.threads)
    reference = m3e.load(args.model)
    static_dir = args.static or Path.home() / ".cache" / "m3e" / "bench" / f"static-{reference.name}-{args.dim}"
    if not (static_dir / "modules.json").is_file():
        started = time.perf_counter()
        distill_static(m3e.load(args.model, backend="auto"), static_dir, dim=args.dim)
        print(f"distilled {static_dir} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    static = StaticModel.load(static_dir)
    models: dict[str, Any] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        models[f"{reference.name} {backend}"] = reference if backend == "torch" else m3e.load(args.model, backend=backend)
    models[f"static ({static.dim} dims)"] = static

    queries, passages = bench_texts(256, 64)
    speed: dict[str, tuple[float, float]] = {}
    for name, model in models.items():
        batch = 1024 if isinstance(model, StaticModel) else 32
        speed[name] = (throughput(lambda t, m=model, b=batch: m.encode(t, batch_size=b), queries, args.repeats),
                       throughput(lambda t, m=model, b=batch: m.encode(t, batch_size=b), passages, args.repeats))
    base = next(iter(speed.values()))
    scores: dict[str, dict[str, float]] = {name: {} for name in models}
    tasks = [] if args.no_quality else get_suite("offline").tasks
    for task in tasks:
        for name, model in models.items():
            score, _ = evaluate_one(for_mteb(model), task, batch_size=32, progress_bars=False)
            scores[name][task.metadata.name] = 100 * float(score)
        print(f"{task.metadata.name}: " + ", ".join(f"{n} {s[task.metadata.name]:.2f}" for n, s in scores.items()),
              file=sys.stderr)
    print(f"\n{len(queries)} queries, {len(passages)} passages; {args.threads} threads; median of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| model | queries/s | x | passages/s | x | offline suite mean |\n|---|---:|---:|---:|---:|---:|")
    for name in models:
        q, p = speed[name]
        mean = f"{statistics.mean(scores[name].values()):.2f}" if scores[name] else "-"
        print(f"| {name} | {q:.1f} | {q / base[0]:.1f} | {p:.1f} | {p / base[1]:.1f} | {mean} |")
    if tasks:
        print("\n| task | " + " | ".join(models) + " |\n|---|" + "---:|" * len(models))
        for task in tasks:
            n = task.metadata.name
            print(f"| {n} | " + " | ".join(f"{scores[m][n]:.2f}" for m in models) + " |")


if __name__ == "__main__":
    main()
