"""``auto`` for a model: the table's choice, or where its order is a guess, the fastest accurate backend timed on this CPU.

The preference orders in :mod:`m3e.backends.selection` come from measurements on the CPU families named there
(AMX, AVX512_BF16); AVX2 without VNNI has one accurate candidate (OpenVINO). On the others (VNNI without
AVX512_BF16, ARM) an order written down is a guess, so ``auto`` times its candidates here instead, the first
time a model is run with it: each candidate's runner (its artefact built or found as for any load) computes the
same fixed-shape batches of short queries and of passages, turns rotated over a few rounds, and the highest
geometric mean of the two throughputs wins.

The result is a record, ``<cache>/auto/<model fingerprint>-<cpu id>.json`` (written atomically), which every
later ``auto`` on this CPU with the same thread count and engine versions reuses; on any CPU a record beats the
table (``m3e info MODEL --backends --measure`` writes one anywhere). Only backends held to cosine >= 0.995 to
fp32 are timed: ONNX Runtime's dynamic int8 (0.977-0.981 on the default model) is not one of them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.atomic import write_atomic
from m3e.backends import selection
from m3e.backends.base import Runner, StreamingRunner
from m3e.backends.selection import Choice, CpuFeatures
from m3e.backends.threads import inference_threads
from m3e.paths import cache_root

if TYPE_CHECKING:
    from torch import Tensor

    from m3e.backends.base import ModelParts

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1
ROUNDS = 3


@dataclass(frozen=True)
class Shape:
    """One timed workload: ``batches`` padded batches of ``batch`` texts of ``tokens`` tokens."""

    name: str
    batch: int
    tokens: int
    batches: int


# Short queries and 200-400 character passages, at the command line's batch size of 32.
SHAPES = (Shape("queries", 32, 24, 4), Shape("passages", 32, 160, 2))
# The engines whose version decides a backend's speed (a record made under others is measured again).
_ENGINE_PACKAGES = {"openvino": ("openvino",), "openvino-int8": ("openvino", "nncf"), "int8": ("onnxruntime",)}


def cpu_identity(cpu: CpuFeatures | None = None, threads: int | None = None) -> dict[str, Any]:
    """What a timing holds for: the CPU (name and flags) and the thread count an engine gets."""
    cpu = cpu or selection.detect_cpu()
    return {
        "arch": cpu.arch,
        "name": cpu.name,
        "family": cpu.family,
        "flags": hashlib.sha256(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:16],
        "threads": threads or inference_threads(),
    }


def engine_versions(backends: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for backend in backends:
        for package in _ENGINE_PACKAGES.get(backend, ()):
            try:
                versions[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                versions[package] = "missing"
    return versions


def record_path(model_fingerprint: str, cpu: dict[str, Any]) -> Path:
    cpu_id = hashlib.sha256(json.dumps(cpu, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "auto" / f"{model_fingerprint}-{cpu_id}.json"


def _model_fingerprint(model: ModelParts) -> str:
    from m3e.backends.artefacts import fingerprint

    return fingerprint(model, "openvino")


def read_record(model: ModelParts, candidates: tuple[str, ...], fp: str | None = None) -> dict[str, Any] | None:
    """The timing recorded for ``model`` on this CPU, if it covers ``candidates`` under today's engines."""
    cpu = cpu_identity()
    path = record_path(fp or _model_fingerprint(model), cpu)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("cpu") != cpu:
        return None
    timed = record.get("texts_per_s", {})
    if not set(candidates) <= set(timed) or record.get("engines") != engine_versions(tuple(timed)):
        logger.info("%s was timed with other backends or engine versions; not using it", path)
        return None
    record["path"] = str(path)
    return record


# ---------------------------------------------------------------------------- timing
def _batches(model: ModelParts, shape: Shape) -> list[dict[str, Tensor]]:
    import torch

    config = model.transformer.config
    generator = torch.Generator().manual_seed(shape.tokens)
    vocab = int(config.vocab_size)
    # within the positions the model has (XLM-R's reserve two of them)
    tokens = min(shape.tokens, int(getattr(config, "max_position_embeddings", shape.tokens + 2)) - 2)
    batches = []
    for _ in range(shape.batches):
        size = (shape.batch, tokens)
        features = {
            "input_ids": torch.randint(5, max(6, vocab - 1), size, generator=generator),
            "attention_mask": torch.ones(size, dtype=torch.long),
        }
        if "token_type_ids" in model.artefact_inputs:
            features["token_type_ids"] = torch.zeros(size, dtype=torch.long)
        batches.append({name: features[name] for name in model.artefact_inputs})
    return batches


def _run(runner: Runner, batches: list[dict[str, Tensor]]) -> None:
    if isinstance(runner, StreamingRunner) and runner.streams > 1:
        runner.run_many(batches)  # how encode feeds a streaming runner
    else:
        for batch in batches:
            runner(batch)


def time_runners(
    runners: dict[str, Runner],
    workloads: dict[str, list[dict[str, Tensor]]],
    rounds: int = ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, float]]:
    """Texts per second of every runner on every workload: the median of ``rounds`` timings, each round running
    the runners in a rotated order so that a burst of load on a shared machine falls on all of them."""
    names = list(runners)
    seconds: dict[str, dict[str, list[float]]] = {n: {w: [] for w in workloads} for n in names}
    for name in names:  # the first run of a compiled graph allocates: not timed
        for batches in workloads.values():
            _run(runners[name], batches[:1])
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            for workload, batches in workloads.items():
                started = clock()
                _run(runners[name], batches)
                seconds[name][workload].append(clock() - started)
    texts = {w: sum(len(next(iter(b.values()))) for b in batches) for w, batches in workloads.items()}
    return {
        name: {w: texts[w] / max(sorted(s)[len(s) // 2], 1e-9) for w, s in per.items()}
        for name, per in seconds.items()
    }


def fastest(texts_per_s: dict[str, dict[str, float]]) -> str:
    """The backend with the highest geometric mean of its throughputs (queries and passages count alike)."""
    def score(name: str) -> float:
        rates = list(texts_per_s[name].values())
        return math.exp(sum(math.log(r) for r in rates) / len(rates))

    return max(texts_per_s, key=score)


def measure(model: ModelParts, candidates: tuple[str, ...], fp: str | None = None) -> dict[str, Any]:
    """Time ``candidates`` for ``model`` on this CPU and record the result (the artefacts they need are built
    or found first, as for any load)."""
    from m3e.backends import runner_for

    logger.warning(
        "timing %s for %s on this CPU (once per model; the artefacts are built first where missing)",
        ", ".join(candidates), getattr(model, "name", "the model"))
    workloads = {shape.name: _batches(model, shape) for shape in SHAPES}
    runners: dict[str, Runner] = {}
    for backend in candidates:
        runner = runner_for(model, backend)
        assert runner is not None, backend  # every candidate is an engine backend
        runners[backend] = runner
    rates = time_runners(runners, workloads)
    cpu = cpu_identity()
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "cpu": cpu,
        "engines": engine_versions(candidates),
        "workload": {s.name: f"{s.batches} batches of {s.batch} x {s.tokens} tokens" for s in SHAPES},
        "rounds": ROUNDS,
        "texts_per_s": {b: {w: round(r, 1) for w, r in per.items()} for b, per in rates.items()},
        "choice": fastest(rates),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = record_path(fp or _model_fingerprint(model), cpu)
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    record["path"] = str(path)
    return record


def summary(record: dict[str, Any]) -> str:
    """``openvino-int8 612 q/s 71 p/s, openvino 420 q/s 55 p/s``: the timings behind a measured choice."""
    return ", ".join(
        f"{backend} {rates.get('queries', 0):.0f} q/s {rates.get('passages', 0):.0f} p/s"
        for backend, rates in sorted(record["texts_per_s"].items(), key=lambda kv: kv[0] != record["choice"])
    )


def measured_choice(model: ModelParts, choice: Choice, *, time_now: bool, force: bool = False) -> Choice:
    """``choice`` replaced by the recorded timing of its candidates when there is one; timed now (and recorded)
    when ``force``, or when ``time_now`` and nothing is recorded yet."""
    fp = _model_fingerprint(model)
    record = None if force else read_record(model, choice.candidates, fp)
    if record is None and (force or time_now):
        record = measure(model, choice.candidates, fp)
    if record is None:
        return choice
    best = str(record["choice"])
    if best not in choice.candidates:  # a record covers more backends than are installed now
        rates = {b: r for b, r in record["texts_per_s"].items() if b in choice.candidates}
        best = fastest(rates)
    return Choice(
        best, f"fastest of {', '.join(choice.candidates)} timed on this CPU ({summary(record)}; {record['path']})",
        candidates=choice.candidates,
    )


def auto_choice(model: ModelParts, *, time_now: bool = True, force_timing: bool = False) -> Choice:
    """What ``auto`` picks for ``model`` on this machine with what is installed here: the table's choice, or
    the fastest candidate as timed on this CPU (a record of an earlier timing; a timing now where the table's
    order is a guess and ``time_now``, or wherever ``force_timing``)."""
    choice = selection.choose_backend(selection.detect_cpu(), selection.installed_engines(), selection.workload_of(model))
    if len(choice.candidates) < 2:
        return choice
    return measured_choice(model, choice, time_now=time_now and choice.to_time, force=force_timing)


def resolve(model: ModelParts, backend: str) -> str:
    """``backend`` itself, or for ``auto`` the choice for this model, logged in one line."""
    if backend != selection.AUTO:
        return backend
    choice = auto_choice(model)
    log = selection.logger  # the choice's line comes from where its reasons are written
    if choice.fallback:
        log.warning("%s", choice)
    else:
        log.info("%s", choice)
    return choice.backend
