"""The openvino backend: the fp32 ONNX export compiled by OpenVINO for this CPU.

OpenVINO chooses the compute precision when it compiles: bf16 on CPUs with AMX or AVX512_BF16
(Sapphire Rapids and later), fp32 elsewhere. On a 2-core Sapphire Rapids it was the fastest CPU
path measured (docs/benchmarks.md): faster than ONNX Runtime int8 and than static or
weight-only int8 in OpenVINO itself, with vectors at cosine >= 0.999 to fp32. The artefact is
the plain export (``MODEL/m3e-openvino/`` from ``m3e export MODEL --backend openvino``, else
``<cache>/openvino/<fingerprint>/``); compiling it takes about a second.

Three compilations serve three shapes of work. A single short text runs on whichever of a one-thread latency
request and the batches' request on every thread was faster for the first such text (measured once, then kept:
threading one query's small matrix products cost more than it saved on a loaded Sapphire Rapids and saved a
sixth on a quiet AMD EPYC, so neither is assumed). One batch (a
server's small batch) runs on the latency compilation: one request using every thread. Several batches run on the
throughput compilation: OpenVINO splits the threads into streams (two streams of one thread on
two cores) and the batches are in flight together. For a model this small, per-layer threading
overhead is a large share of a forward pass, so streams gain 1.2-1.5x in texts/s on short
queries (less on passages) over one request using all threads (docs/benchmarks.md), while a
single query keeps its latency.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.backends import artefacts
from m3e.backends.threads import inference_threads
from m3e.extras import require

if TYPE_CHECKING:
    from torch import Tensor

    from m3e.backends.base import ModelParts

logger = logging.getLogger(__name__)

KIND = "openvino"
# A single text of at most this many tokens may run on a one-thread request, if that measured faster: for a
# 384-wide model, splitting each small matrix product over two threads cost more than it saved on a shared
# Sapphire Rapids (p50 3.5-7.7 ms on one thread against 4.9-13.9 ms on two) and saved 0.7-2.1 ms on a quiet AMD
# EPYC (docs/benchmarks.md).
SINGLE_TEXT_TOKENS = 64
SINGLE_TEXT_TRIALS = 8  # timed runs of each request when choosing
# Padded tokens per batch: the encode loop splits larger batches. A batch's activations then stay in the cores'
# caches: on a 2-core AMD EPYC, 64 passages of 200-400 characters ran at 55 texts/s with batches of 1,024
# tokens against 39 texts/s with the caller's 32 passages a batch (streams or one request alike), while short
# queries (32 x ~15 tokens) were unchanged (docs/benchmarks.md).
BATCH_TOKENS = 1024


class OpenVinoRunner:
    """Runs the compiled model on the features the encode loop builds.

    ``runner(features)`` runs one batch; ``runner.run_many([features, ...])`` runs several on
    ``runner.streams`` parallel streams. One caller at a time (calls from other threads wait).
    """

    def __init__(
        self, path: Path, threads: int | None = None, precision: str | None = None, streams: int | None = None
    ):
        import threading

        import openvino as ov

        self.path = Path(path)
        self.threads = threads or inference_threads()
        self._core = ov.Core()
        self._model = self._core.read_model(str(self.path))
        self.input_names = [port.get_any_name() for port in self._model.inputs]
        self._config: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads}
        if precision:  # e.g. "f32" to pin fp32 on a bf16-capable CPU
            self._config["INFERENCE_PRECISION_HINT"] = precision
        with keep_signal_stack():
            self.compiled = self._core.compile_model(self._model, "CPU", {**self._config, "PERFORMANCE_HINT": "LATENCY"})
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # "bf16" / "f32"
        self._request = self.compiled.create_infer_request()
        # One caller at a time on either compilation: callers from several threads take turns
        # rather than oversubscribe the cores.
        self._lock = threading.RLock()
        self._streams = streams  # None: OpenVINO's throughput choice for this CPU and thread count
        self._queue: Any = None  # the throughput compilation's requests, built on first use
        self._single: Any = None  # the one-thread request for a single short text, built on first use

    @property
    def streams(self) -> int:
        """Batches in flight at once in ``run_many`` (2 streams of 1 thread each on 2 cores)."""
        if self._streams == 1 or (self._streams is None and self.threads == 1):
            return 1
        return len(self._throughput_queue())

    @property
    def batch_tokens(self) -> int:
        return BATCH_TOKENS

    def __call__(self, features: dict[str, Tensor]) -> Tensor:
        import torch

        rows, width = features["input_ids"].shape[:2]
        with self._lock:
            feeds = _feeds(features, self.input_names)
            request = self._single_request(feeds) if rows == 1 and width <= SINGLE_TEXT_TOKENS else self._request
            result = request.infer(feeds)
            hidden = next(iter(result.values())).copy()  # the request reuses its output buffer
        return torch.from_numpy(hidden)

    def _single_request(self, feeds: dict[str, Any]) -> Any:
        """The request a single short text runs on: a one-thread latency compilation or the batches' request,
        whichever ran ``feeds`` (the first single text) faster, interleaved, once per runner."""
        if self.threads == 1:
            return self._request
        if self._single is None:
            config = {**self._config, "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}
            with keep_signal_stack():
                one_thread = self._core.compile_model(self._model, "CPU", config).create_infer_request()
            self._single = faster_request({1: one_thread, self.threads: self._request}, feeds)
        return self._single

    def run_many(self, batches: list[dict[str, Tensor]]) -> list[Tensor]:
        """Last hidden states of several batches, in order, computed ``streams`` at a time."""
        import torch

        if self.streams == 1 or len(batches) == 1:
            return [self(features) for features in batches]
        outputs: list[Any] = [None] * len(batches)

        def collect(request: Any, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()

        with self._lock:
            queue = self._throughput_queue()
            queue.set_callback(collect)
            for index, features in enumerate(batches):
                queue.start_async(_feeds(features, self.input_names), index)
            queue.wait_all()
        return [torch.from_numpy(hidden) for hidden in outputs]

    def _throughput_queue(self) -> Any:
        with self._lock:
            if self._queue is None:
                import openvino as ov

                config = {**self._config, "PERFORMANCE_HINT": "THROUGHPUT"}
                if self._streams:
                    config["NUM_STREAMS"] = self._streams
                with keep_signal_stack():
                    compiled = self._core.compile_model(self._model, "CPU", config)
                self._queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("NUM_STREAMS")))
            return self._queue

    def __repr__(self) -> str:
        return (
            f"OpenVinoRunner({self.path}, threads={self.threads}, streams={self._streams or 'auto'}, "
            f"precision={self.precision})"
        )


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Put back this thread's alternate signal stack after OpenVINO's CPU plugin replaced it.

    Compiling a model makes the plugin install a stack of its own for signal handlers (``sigaltstack``) on the
    calling thread and free it later with the compiled model; a signal then delivered to that thread (SIGTERM to
    a training run, Ctrl-C) was handled on freed memory and crashed the process. Python's handlers are installed
    with SA_ONSTACK, so the thread's stack must stay one that lives as long as the process.
    """
    libc = _libc()
    if libc is None:
        yield
        return
    saved = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def faster_request(requests: dict[int, Any], feeds: dict[str, Any], trials: int = SINGLE_TEXT_TRIALS) -> Any:
    """The request (keyed by its thread count) with the lowest median time on ``feeds``, the requests' turns
    alternated so that a burst of load falls on both."""
    times: dict[int, list[float]] = {threads: [] for threads in requests}
    for request in requests.values():
        request.infer(feeds)  # the first run of a compilation allocates
    for trial in range(trials):
        order = list(requests.items()) if trial % 2 == 0 else list(reversed(requests.items()))
        for threads, request in order:
            started = time.perf_counter()
            request.infer(feeds)
            times[threads].append(time.perf_counter() - started)
    medians = {threads: sorted(t)[len(t) // 2] for threads, t in times.items()}
    best = min(medians, key=lambda threads: medians[threads])
    logger.info(
        "single texts run on %d thread(s): median %s", best,
        ", ".join(f"{1e3 * m:.2f} ms on {t}" for t, m in sorted(medians.items())))
    return requests[best]


def _feeds(features: dict[str, Tensor], names: list[str]) -> dict[str, Any]:
    import torch

    return {name: features[name].detach().to("cpu", torch.long).numpy() for name in names}


def load_openvino_runner(model: ModelParts, precision: str | None = None) -> OpenVinoRunner:
    require_openvino()
    directory = artefacts.artefact_for(model, KIND, artefacts.write_plain_graph)
    return OpenVinoRunner(directory / artefacts.ONNX_NAME, precision=precision)


def require_openvino() -> None:
    require("openvino", purpose="the openvino backend", extra="openvino")
