"""Scaling of the fastest backend: throughput against batch size, text length and threads; attention's cost
at 512 and 2048 tokens.

    .venv/bin/python bench/scaling.py [--model DIR] [--backends auto,torch] [--repeats 3]

1. batch size (1, 4, 16, 32, 64) on 128 short queries: texts/s;
2. text length (16, 64, 128, 256, 510 tokens; 32 texts of exactly that many tokens, batch 16): texts/s and
   tokens/s;
3. threads (1, 2): both tables again at batch 32 / 128 tokens (``M3E_NUM_THREADS``, a fresh model each);
4. attention: the model's encoder shape with 2048 positions (random weights: speed only), one text of 128,
   512 and 2048 tokens through torch fp32 and OpenVINO; ms per token, which would stay flat if attention
   were free.

Each engine's calls are interleaved with the others' (the machine may be shared); medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def timed(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def texts_of_length(model: Any, tokens: int, n: int) -> list[str]:
    """n texts of exactly ``tokens`` tokens (special tokens included) for ``model``'s tokenizer."""
    vocab = [t for t, i in model.tokenizer.get_vocab().items() if i > 1000 and not t.startswith(("[", "<", "#"))]
    out = []
    for k in range(n):
        ids = [model.tokenizer.convert_tokens_to_ids(vocab[(k * 7 + j) % len(vocab)]) for j in range(tokens - 2)]
        out.append(model.tokenizer.decode(ids))
    # the round trip through text may merge or split a few pieces; measure what they are
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backends", default="auto,torch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import sys
    from pathlib import Path

    import m3e

    sys.path.insert(0, str(Path(__file__).parent))
    from peers import bench_texts

    queries, _ = bench_texts(128, 0)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for threads in (2, 1):
        os.environ["M3E_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
        models = {b: m3e.load(args.model, backend=b) for b in backends}
        names = {b: f"{b} ({m.backend})" if b == "auto" else b for b, m in models.items()}
        print(f"\n### {threads} thread(s)\n\n| engine | " + " | ".join(f"batch {s}" for s in (1, 4, 16, 32, 64))
              + " |\n|---|" + "---:|" * 5)
        rows: dict[str, list[float]] = {b: [] for b in backends}
        for size in (1, 4, 16, 32, 64):
            for b, model in models.items():
                rows[b].append(len(queries) / timed(lambda m=model, s=size: m.encode(queries, batch_size=s),
                                                    args.repeats))
        for b in backends:
            print(f"| {names[b]} texts/s | " + " | ".join(f"{x:.0f}" for x in rows[b]) + " |")
        lengths = (16, 64, 128, 256, 510)
        print("\n| engine | " + " | ".join(f"{n} tokens" for n in lengths) + " |\n|---|" + "---:|" * len(lengths))
        by_length: dict[str, list[str]] = {b: [] for b in backends}
        for n in lengths:
            texts = texts_of_length(models[backends[0]], n, 32)
            real = statistics.mean(len(x) for x in models[backends[0]].tokenize(texts))
            for b, model in models.items():
                seconds = timed(lambda m=model, t=texts: m.encode(t, batch_size=16), args.repeats)
                by_length[b].append(f"{32 / seconds:.0f} ({32 * real / seconds / 1000:.1f}k tok/s)")
        for b in backends:
            print(f"| {names[b]} texts/s | " + " | ".join(by_length[b]) + " |")
    attention(args.repeats)


def attention(repeats: int) -> None:
    """ms per token of one text at 128 / 512 / 2048 tokens, the default model's shape with 2048 positions."""
    import tempfile
    from pathlib import Path

    import openvino as ov
    import torch
    from transformers import BertConfig, BertModel

    import m3e
    from m3e.backends import artefacts
    from m3e.backends.threads import inference_threads

    base = m3e.load()
    config = BertConfig(**{**base.transformer.config.to_dict(), "max_position_embeddings": 2048})
    torch.manual_seed(0)
    long_model = BertModel(config).eval()

    class Parts:
        name, source_dir = "long", None
        artefact_inputs, artefact_output = ("input_ids", "attention_mask"), "last_hidden_state"
        transformer, device = long_model, torch.device("cpu")

    work = Path(tempfile.mkdtemp(prefix="m3e-scaling-"))
    artefacts.export_fp32_onnx(Parts(), work / "long.onnx")  # type: ignore[arg-type]
    core = ov.Core()
    request = core.compile_model(core.read_model(str(work / "long.onnx")), "CPU",
                                 {"INFERENCE_NUM_THREADS": inference_threads(), "PERFORMANCE_HINT": "LATENCY"}
                                 ).create_infer_request()
    print("\n### Attention: one text, the default model's shape with 2048 positions (ms per token)\n")
    print("| engine | 128 tokens | 512 tokens | 2048 tokens | 2048 / 128 per token |\n|---|---:|---:|---:|---:|")
    results: dict[str, list[float]] = {"torch fp32": [], "OpenVINO (bf16 where native)": []}
    for n in (128, 512, 2048):
        ids = torch.randint(1000, 15000, (1, n))
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            results["torch fp32"].append(timed(lambda i=ids, m=mask: long_model(input_ids=i, attention_mask=m),
                                               repeats) * 1e3 / n)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        results["OpenVINO (bf16 where native)"].append(timed(lambda f=feeds: request.infer(f), repeats) * 1e3 / n)
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in row) + f" | {row[2] / row[0]:.1f}x |")


if __name__ == "__main__":
    main()
