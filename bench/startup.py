"""Start-up: how long a one-sentence `m3e similarity` / `m3e encode` takes as a new process, and where it goes.

    python bench/startup.py [--runs 5] [--no-server]

Every timing is a new Python process (the operating system's file cache is warm, as it is for a user who
runs a second command), timed from the parent: wall clock from spawn to exit, median and minimum of
``--runs`` runs. Rows:

- the floor: ``python -c pass``, and ``m3e --help`` (argument parsing, no model);
- `m3e similarity` and `m3e encode` of one sentence on the default model, with the command line's default
  backend (the compiled model recorded by an earlier load on ``auto``: no torch, ``m3e.compiled``) and with
  ``--backend torch``, and the ratio of each to the torch row;
- the same with ``--server URL`` against an ``m3e serve`` this script starts (the model stays loaded there);
- the stages of a local load, each measured inside a fresh process in order: import torch, import
  transformers' BERT model code, import m3e's loader, load the default model (tokenizer + weights +
  backend), encode one sentence; and the stages of the compiled start (imports, finding the record,
  compiling from OpenVINO's blob cache, encoding).

The commands run in rotated rounds (each round runs every command once), so a busy moment of a shared machine
falls on all of them alike.

Numbers go to docs/benchmarks.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence

PY = sys.executable
M3E = [PY, "-m", "m3e.cli"]
A, B = "今天天气很好", "今天天气不错"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

STAGES = r"""
import json, time
marks = [("start", time.perf_counter())]
import torch
marks.append(("import torch", time.perf_counter()))
from transformers import BertModel
marks.append(("import transformers (BERT model code)", time.perf_counter()))
import m3e.loading
marks.append(("import m3e.loading", time.perf_counter()))
model = m3e.loading.load_model(None, backend=BACKEND)
marks.append(("load the default model (backend " + BACKEND + ")", time.perf_counter()))
model.encode(["今天天气很好"])
marks.append(("encode one sentence", time.perf_counter()))
print(json.dumps([(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]))
"""


def timed(cmd: Sequence[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return elapsed


COMPILED_STAGES = r"""
import json, time
marks = [("start", time.perf_counter())]
import numpy, tokenizers
marks.append(("import numpy and tokenizers", time.perf_counter()))
import openvino
marks.append(("import openvino", time.perf_counter()))
from m3e.compiled import LoadRequest, find_compiled
from m3e.paths import default_model_path
model = find_compiled(LoadRequest(str(default_model_path().resolve()), "auto"))
assert model is not None, "no compiled record: run `m3e encode A` once"
marks.append(("find the compiled record (model files checked), read the tokenizer", time.perf_counter()))
model.encode(["今天天气很好"])
marks.append(("compile (blob cache) and encode one sentence", time.perf_counter()))
print(json.dumps([(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]))
"""


def rows_rotated(commands: list[tuple[str, Sequence[str]]], runs: int) -> list[tuple[str, float, float]]:
    """Each command once as a warm-up (in order: the first one leaves the compiled record the others use), then
    ``runs`` rounds of every command."""
    for _, cmd in commands:
        timed(cmd)
    times: dict[str, list[float]] = {name: [] for name, _ in commands}
    for round_ in range(runs):
        for name, cmd in commands[round_ % len(commands):] + commands[: round_ % len(commands)]:
            times[name].append(timed(cmd))
    return [(name, statistics.median(times[name]), min(times[name])) for name, _ in commands]


def stages(runs: int, backend: str | None) -> list[tuple[str, float, float]]:
    code = STAGES.replace("BACKEND", repr(backend)) if backend else COMPILED_STAGES
    samples: dict[str, list[float]] = {}
    for _ in range(runs + 1):
        out = subprocess.run([PY, "-c", code], env=ENV, capture_output=True, text=True, check=True).stdout
        for name, seconds in json.loads(out.strip().splitlines()[-1]):
            samples.setdefault(name, []).append(seconds)
    return [(name, statistics.median(v[1:]), min(v[1:])) for name, v in samples.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve() -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen([*M3E, "serve", "--port", str(port)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("m3e serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-server", action="store_true", help="skip the --server rows")
    args = parser.parse_args()
    commands: list[tuple[str, Sequence[str]]] = [
        ("m3e encode A (default backend)", [*M3E, "encode", A]),
        ("m3e similarity A B (default backend)", [*M3E, "similarity", A, B]),
        ("m3e similarity A B --backend torch", [*M3E, "similarity", A, B, "--backend", "torch"]),
        ("m3e encode A --backend torch", [*M3E, "encode", A, "--backend", "torch"]),
        ("python -c pass", [PY, "-c", "pass"]),
        ("m3e --help", [*M3E, "--help"]),
    ]
    proc = None
    if not args.no_server:
        proc, url = serve()
        commands.append(("m3e similarity A B --server URL", [*M3E, "similarity", A, B, "--server", url]))
        commands.append(("m3e encode A --server URL", [*M3E, "encode", A, "--server", url]))
    try:
        rows = rows_rotated(commands, args.runs)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    torch_row = {name.split(" A")[0]: med for name, med, _ in rows if name.endswith("--backend torch")}
    print(f"new processes, {args.runs} rotated rounds (after one warm-up run each); {os.cpu_count()} CPUs\n")
    print("| command | median s | min s | x torch |\n|---|---:|---:|---:|")
    for name, med, low in rows:
        base = torch_row.get(name.split(" A")[0])
        ratio = f"{base / med:.2f}" if base and name.startswith("m3e ") else ""
        print(f"| `{name}` | {med:.2f} | {low:.2f} | {ratio} |")
    for backend, title in (("torch", "a local load on torch"), (None, "the compiled start (default backend)")):
        parts = stages(args.runs, backend)
        print(f"\n| stage of {title}, in one process | median s | min s |\n|---|---:|---:|")
        for name, med, low in parts:
            print(f"| {name} | {med:.2f} | {low:.2f} |")
        print(f"| total | {sum(m for _, m, _ in parts):.2f} | |")


if __name__ == "__main__":
    main()
