"""m3e encode vs sentence-transformers encode: same model, same texts, one run.

    python bench/encode.py [--model PATH] [--n 1000] [--repeats 3]

Prints texts/s for each and the ratio m3e / sentence-transformers. Runs are interleaved
and the median is reported, because the machine is shared and noisy.
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
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    import m3e
    from m3e.default_model import default_model_path

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


if __name__ == "__main__":
    main()
