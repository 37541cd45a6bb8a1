"""What OpenVINO's throughput streams add to m3e's openvino backend: paired, interleaved encode runs.

    python bench/openvino_streams.py [--model PATH] [--repeats 15] [--queries 256] [--passages 64]

Encodes the same texts with the openvino backend as m3e loads it (several batches in flight, one
per stream) and with a runner held to one stream (one request using every thread), alternating
which goes first, and prints texts/s and the median of the per-repeat ratios for short queries,
passages, and one batch's worth of passages (which the streamed runner splits across its streams).
Needs openvino and the offline data (`m3e data build`) for realistic texts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import m3e
    from encode import query_and_passage_texts  # the texts bench/encode.py uses
    from m3e.backends.openvino import OpenVinoRunner

    streamed = m3e.load(args.model, backend="openvino")
    serial = m3e.load(args.model, backend="openvino")
    serial._runner = OpenVinoRunner(serial._runner.path, streams=1)
    queries, passages = query_and_passage_texts(m3e.load(args.model), args.queries, args.passages)
    cases = {
        f"{len(queries)} queries": queries,
        f"{len(passages)} passages": passages,
        f"{args.batch_size} passages (one batch)": passages[: args.batch_size],
    }
    for model in (streamed, serial):  # warm-up: compilations, first-shape caches
        model.encode(queries[:64], batch_size=args.batch_size)
        model.encode(passages[:16], batch_size=args.batch_size)
    rates: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        pair = [("streams", streamed), ("1 stream", serial)]
        for case, texts in cases.items():
            for name, model in pair if repeat % 2 == 0 else pair[::-1]:
                t = time.perf_counter()
                model.encode(texts, batch_size=args.batch_size)
                rates.setdefault((case, name), []).append(len(texts) / (time.perf_counter() - t))
    print(f"model: {streamed.name}; streams: {streamed._runner.streams}; threads: {streamed._runner.threads}; "
          f"precision: {streamed._runner.precision}; {args.repeats} repeats; "
          f"load average at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| texts | streams texts/s | 1 stream texts/s | ratio (median of paired repeats) |")
    print("|---|---:|---:|---:|")
    for case in cases:
        a, b = rates[(case, "streams")], rates[(case, "1 stream")]
        paired = statistics.median(x / y for x, y in zip(a, b, strict=True))
        print(f"| {case} | {statistics.median(a):.1f} | {statistics.median(b):.1f} | {paired:.2f}x |")


if __name__ == "__main__":
    main()
