"""Training precision on this CPU: one training step of the default model in fp32 and under bf16 autocast.

    .venv/bin/python bench/train_precision.py [--model DIR] [--batch 32] [--tokens 128,256] [--repeats 3]

A step is what the trainer runs: a batch of (query, passage) pairs embedded with a graph, the in-batch softmax
loss, the backward pass (m3e.training.gradcache.forward_backward). The passages have exactly ``--tokens``
tokens and the queries 16. fp32 and bf16 steps are interleaved (the machine may be shared); medians of
``--repeats``, after one untimed step each. ``bf16 kernels`` says whether torch has bf16 kernels on this CPU
(m3e.backends.bf16_native): where it has none, the trainer trains in fp32 when asked for bf16.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaling import texts_of_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", default="128,256")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from m3e.backends import bf16_native
    from m3e.backends.threads import limit_torch_threads
    from m3e.loading import load_model
    from m3e.training.gradcache import forward_backward
    from m3e.training.losses import SoftmaxLoss

    model = load_model(args.model)
    model.train()
    threads = limit_torch_threads()
    loss = SoftmaxLoss()
    queries = texts_of_length(model, 16, args.batch)
    print(f"torch {torch.__version__}, {threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 kernels: {bf16_native()}; batch {args.batch}")
    print()
    print("| passage tokens | fp32 s/step | bf16 s/step | bf16 / fp32 |")
    print("|---:|---:|---:|---:|")
    for tokens in (int(t) for t in args.tokens.split(",")):
        passages = texts_of_length(model, tokens, args.batch)
        times: dict[bool, list[float]] = {False: [], True: []}
        for repeat in range(args.repeats + 1):
            for bf16 in (False, True):
                started = time.perf_counter()
                forward_backward(model, [queries, passages], None, loss, bf16=bf16)
                if repeat:  # the first round warms both up
                    times[bf16].append(time.perf_counter() - started)
                model.zero_grad(set_to_none=True)
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {tokens} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
