"""Dynamic batching: texts of concurrent requests share forward passes on one inference thread.

A request becomes a *job*: its token-id lists, taken longest first (as ``encode`` does). A lane's
model is an embedder (a text's row is its pooled vector) or a reranker (a row is one (query, document
window) pair's logits; its jobs carry each pair's segment ids too); both share the rounds below. One
inference thread owns the model(s); on 2 cores one forward at a time, using all cores, is the
fastest schedule, and it keeps the event loop free to parse and answer requests meanwhile.

Each round the thread
1. waits until texts are queued; if fewer than a full batch and other requests are in the
   server, it waits a little longer (``max_wait``, counted from the oldest queued text's
   arrival) so that batches fill under load; a lone request goes at once;
2. picks one lane (a model; lanes take turns) and takes texts from its jobs **round-robin, one
   text per job per pass**, until the round holds ``max_batch_size`` texts or
   ``max_batch_tokens`` tokens: a request of 2048 texts gets one slot per pass like everyone
   else, so it cannot starve single-text requests queued behind it;
3. sorts the round's texts by length and cuts it into batches under the token budget
   (:func:`m3e.length_sorting.length_sorted_batches`), then cuts those where padding would cost
   more than another forward (:func:`split_batches`); each batch is one ``embed_token_ids`` call;
4. writes each vector into its job's result array at the text's own index; a job whose
   texts are all done is answered at once, in input order by construction.

The queue is bounded in texts, and in time: a request is refused (HTTP 429) when the queued work,
its own included, would take longer than ``max_queue_seconds`` at the throughput measured on the
recent forward passes (per model, seeded by the warm-up). Retry-After is the time the work queued
ahead of it needs to finish.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from m3e.length_sorting import length_sorted_batches

if TYPE_CHECKING:
    from m3e.serving.metrics import Metrics

logger = logging.getLogger(__name__)


class EmbeddingBackend(Protocol):
    """What the batcher needs of a model (an :class:`m3e.model.EmbeddingModel` fits)."""

    @property
    def dim(self) -> int: ...

    def embed_token_ids(
        self, batch: Sequence[Sequence[int]], normalize: bool = True, prompt_length: int = 0
    ) -> np.ndarray: ...


@runtime_checkable
class PairScorer(Protocol):
    """What the batcher needs of a reranker (:class:`m3e.serving.served_reranker.ServedReranker` fits): one
    row of raw scores per pair of token ids and segment ids."""

    @property
    def dim(self) -> int: ...

    def score_token_ids(
        self, batch: Sequence[Sequence[int]], segments: Sequence[Sequence[int]]
    ) -> np.ndarray: ...


Backend = EmbeddingBackend | PairScorer


class QueueFull(Exception):
    def __init__(self, retry_after: int, queued: int, queued_seconds: float | None = None):
        super().__init__(f"queue full ({queued} texts waiting)")
        self.retry_after = retry_after
        self.queued = queued
        self.queued_seconds = queued_seconds  # estimated time to finish the queued work (None: unknown yet)


class Throughput:
    """Tokens per second of a model's recent forward passes: their tokens over their time, so a few
    small, slow-per-token batches do not skew it as an average of rates would."""

    def __init__(self, window: int = 32):
        self._passes: deque[tuple[int, float]] = deque(maxlen=window)
        self._tokens = 0
        self._seconds = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        if seconds <= 0:
            return
        if len(self._passes) == self._passes.maxlen:
            old_tokens, old_seconds = self._passes[0]
            self._tokens -= old_tokens
            self._seconds -= old_seconds
        self._passes.append((tokens, seconds))
        self._tokens += tokens
        self._seconds += seconds

    @property
    def tokens_per_s(self) -> float:
        return self._tokens / self._seconds if self._seconds > 0 else 0.0


class ShuttingDown(Exception):
    pass


@dataclass(eq=False)
class Job:
    lane: tuple[str, int]  # (model name, prompt length): texts of one lane can share a forward
    ids: list[list[int]]
    future: Future[np.ndarray]
    order: list[int]  # text indices, longest first: the order texts are taken in
    out: np.ndarray  # [n, dim] pooled vectors, filled at each text's own index
    arrived: float
    taken: int = 0  # texts handed to a forward so far
    done: int = 0
    started: bool = False
    failed: bool = field(default=False)
    segments: list[list[int]] | None = None  # a reranker's pairs: the segment id of each token

    @property
    def remaining(self) -> int:
        return len(self.order) - self.taken


class Batcher:
    def __init__(
        self,
        models: Mapping[str, Backend],
        *,
        max_batch_tokens: int = 8192,
        max_batch_size: int = 64,
        max_wait: float = 0.005,
        max_queue: int = 4096,
        max_queue_seconds: float | None = None,
        metrics: Metrics | None = None,
        warmup: Callable[[], None] | None = None,
        torch_threads: int | None = None,
    ):
        if max_batch_tokens < 1 or max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_tokens, max_batch_size and max_queue must be >= 1")
        if max_queue_seconds is not None and max_queue_seconds <= 0:
            raise ValueError("max_queue_seconds must be > 0")
        self.models = models
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_wait)
        self.max_queue = max_queue
        self.max_queue_seconds = max_queue_seconds
        self.metrics = metrics
        self._warmup = warmup
        self._torch_threads = torch_threads
        self._cv = threading.Condition()
        self._lanes: dict[tuple[str, int], deque[Job]] = {}
        self._turn = 0
        self._queued_texts = 0
        self._queued_tokens = 0
        self._queued_tokens_by_model: dict[str, int] = dict.fromkeys(models, 0)
        self._running: tuple[str, int] | None = None  # (model, tokens) of the round in the forwards now
        self._stopping = False
        self.throughput = {name: Throughput() for name in models}
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.warmup_error: str | None = None
        # Requests in the server right now (set by the app); None: always under load.
        self.load_hint: Callable[[], int] | None = None

    # ------------------------------------------------------------------ client side
    def submit(
        self,
        model: str,
        ids: list[list[int]],
        prompt_length: int = 0,
        *,
        segments: list[list[int]] | None = None,
    ) -> Future[np.ndarray]:
        """Queue one request's token ids; the future gets the pooled [n, dim] vectors in order (for a reranker,
        whose pairs come with their ``segments``, the [n, labels] raw scores)."""
        backend = self.models[model]
        if (segments is not None) != isinstance(backend, PairScorer):
            raise ValueError(f"{model!r}: segment ids go with a reranker's pairs, and only with them")
        n = len(ids)
        fut: Future[np.ndarray] = Future()
        order = sorted(range(n), key=lambda i: -len(ids[i]))
        job = Job(
            (model, prompt_length),
            ids,
            fut,
            order,
            np.zeros((n, backend.dim), dtype=np.float32),
            time.monotonic(),
            segments=segments,
        )
        tokens = sum(len(x) for x in ids)
        with self._cv:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            self._admit(model, n, tokens)
            self._lanes.setdefault(job.lane, deque()).append(job)
            self._queued_texts += n
            self._queued_tokens += tokens
            self._queued_tokens_by_model[model] += tokens
            self._gauges()
            self._cv.notify()
        return fut

    def _admit(self, model: str, texts: int, tokens: int) -> None:
        """Raise QueueFull when the queue has no room in texts, or when the queued work and this request's
        would take longer than max_queue_seconds. An empty queue takes any request, so a big one is never
        refused forever. Called holding the lock."""
        if not self._queued_texts:
            return
        ahead = self.queued_seconds()
        if self._queued_texts + texts > self.max_queue:
            raise QueueFull(_retry_after(ahead), self._queued_texts, ahead)
        if self.max_queue_seconds is None or ahead is None:
            return
        own = self._seconds_of(model, tokens)
        if own is not None and ahead + own > self.max_queue_seconds:
            raise QueueFull(_retry_after(ahead), self._queued_texts, ahead)

    def queued_seconds(self) -> float | None:
        """Estimated time to finish the queued work and the round in the forwards now (None: a model's
        throughput is not known yet)."""
        work = dict(self._queued_tokens_by_model)
        running = self._running
        if running is not None:
            work[running[0]] = work.get(running[0], 0) + running[1]
        total = 0.0
        for model, tokens in work.items():
            seconds = self._seconds_of(model, tokens)
            if seconds is None:
                return None
            total += seconds
        return total

    def _seconds_of(self, model: str, tokens: int) -> float | None:
        if not tokens:
            return 0.0
        rate = self.throughput[model].tokens_per_s
        return tokens / rate if rate > 0 else None

    def seed_throughput(self, model: str, tokens: int, seconds: float) -> None:
        """A first throughput measurement (the warm-up's), so the first queue estimates have one."""
        self.throughput[model].add(tokens, seconds)

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        # Not a daemon: interpreter exit waits for the thread to finish queued work.
        self._thread = threading.Thread(target=self._run, name="m3e-inference", daemon=False)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new work, finish what is queued, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("inference thread still busy after %.0f s", timeout or 0)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)
        try:
            if self._warmup is not None:
                self._warmup()
        except Exception as exc:  # serve anyway; /health reports it
            logger.exception("warm-up failed")
            self.warmup_error = f"{type(exc).__name__}: {exc}"
        self.ready.set()
        if self.metrics is not None:
            self.metrics.ready.set(0 if self.warmup_error else 1)
        while True:
            picked = self._next_round()
            if picked is None:
                return
            self._run_round(*picked)

    def _loaded(self) -> bool:
        return self.load_hint is None or self.load_hint() > 1

    def _full(self) -> bool:
        return self._queued_texts >= self.max_batch_size or self._queued_tokens >= self.max_batch_tokens

    def _next_round(self) -> tuple[tuple[str, int], list[tuple[Job, int]]] | None:
        with self._cv:
            while True:
                while not self._queued_texts and not self._stopping:
                    self._cv.wait()
                if not self._queued_texts:
                    return None  # stopping and drained
                self._wait_for_batch_to_fill()
                lane = self._pick_lane()
                if lane is None:
                    continue
                picked = self._take(lane)
                self._gauges()
                if picked:
                    return lane, picked

    def _wait_for_batch_to_fill(self) -> None:
        """Patience: let a batch fill, but never hold a text longer than max_wait, and only under
        load: a lone client should not pay the wait on every request. Called holding the lock."""
        while not self._stopping and not self._full() and self._loaded():
            left = self._oldest() + self.max_wait - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(left)

    def _oldest(self) -> float:
        return min((q[0].arrived for q in self._lanes.values() if q), default=time.monotonic())

    def _pick_lane(self) -> tuple[str, int] | None:
        busy = [lane for lane, q in self._lanes.items() if q]
        if not busy:
            return None
        self._turn = (self._turn + 1) % len(busy)  # lanes (models) take turns
        return busy[self._turn]

    def _take(self, lane: tuple[str, int]) -> list[tuple[Job, int]]:
        """The next round's (job, text index) pairs from one lane; fully taken jobs leave its queue."""
        queue = self._lanes[lane]
        self._drop_cancelled(queue)
        picked = self._round_robin(list(queue))
        for job in {id(j): j for j, _ in picked}.values():
            if not job.remaining:
                queue.remove(job)
        if not queue:
            del self._lanes[lane]
        return picked

    def _drop_cancelled(self, queue: deque[Job]) -> None:
        for job in [j for j in queue if j.future.cancelled()]:  # client went away
            queue.remove(job)
            self._dequeue(job, job.remaining)

    def _round_robin(self, jobs: list[Job]) -> list[tuple[Job, int]]:
        """One text per job per pass (each job's longest first) until the round's size or token limit."""
        picked: list[tuple[Job, int]] = []
        tokens = 0
        active = jobs
        now = time.monotonic()
        while active and len(picked) < self.max_batch_size:
            still: list[Job] = []
            for job in active:
                i = job.order[job.taken]
                n = len(job.ids[i])
                if len(picked) >= self.max_batch_size or (picked and tokens + n > self.max_batch_tokens):
                    return picked
                picked.append((job, i))
                tokens += n
                self._mark_taken(job, n, now)
                if job.remaining:
                    still.append(job)
            active = still
        return picked

    def _mark_taken(self, job: Job, tokens: int, now: float) -> None:
        """One more of ``job``'s texts (``tokens`` long) leaves the queue for a forward."""
        job.taken += 1
        self._queued_texts -= 1
        self._queued_tokens -= tokens
        self._queued_tokens_by_model[job.lane[0]] -= tokens
        if not job.started:
            job.started = True
            if self.metrics is not None:
                self.metrics.queue_seconds.observe(now - job.arrived)

    def _dequeue(self, job: Job, count: int) -> None:
        tokens = sum(len(job.ids[i]) for i in job.order[job.taken :])
        self._queued_texts -= count
        self._queued_tokens -= tokens
        self._queued_tokens_by_model[job.lane[0]] -= tokens
        job.taken = len(job.order)

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_texts.set(self._queued_texts)
            self.metrics.queue_requests.set(sum(len(q) for q in self._lanes.values()))
            self.metrics.queue_seconds_estimate.set(self.queued_seconds() or 0.0)

    def _run_round(self, lane: tuple[str, int], picked: list[tuple[Job, int]]) -> None:
        """The round's texts in length-sorted batches, one forward each; jobs failed meanwhile are skipped."""
        lengths = [len(job.ids[i]) for job, i in picked]
        left = sum(lengths)
        # a round's batches no larger than the backend runs fastest (OpenVINO: 1,024 padded tokens)
        fastest = getattr(self.models[lane[0]], "batch_tokens", None)
        budget = min(self.max_batch_tokens, fastest) if isinstance(fastest, int) else self.max_batch_tokens
        for batch in split_batches(lengths, self.max_batch_size, budget):
            self._running = (lane[0], left)
            items = [picked[k] for k in batch if not picked[k][0].failed]
            if items:
                self._run_batch(lane, items)
            left -= sum(lengths[k] for k in batch)
        self._running = None

    def _run_batch(self, lane: tuple[str, int], items: list[tuple[Job, int]]) -> None:
        model_name = lane[0]
        ids = [job.ids[i] for job, i in items]
        start = time.perf_counter()
        try:
            vectors = self._forward(lane, items)
        except Exception as exc:
            logger.exception("forward pass failed")
            self._fail({id(job): job for job, _ in items}.values(), exc)
            return
        self._record_forward(model_name, ids, time.perf_counter() - start)
        _deliver(items, vectors)

    def _forward(self, lane: tuple[str, int], items: list[tuple[Job, int]]) -> np.ndarray:
        """One forward pass of the lane's model: pooled vectors, or a reranker's raw scores."""
        model_name, prompt_length = lane
        backend = self.models[model_name]
        ids = [job.ids[i] for job, i in items]
        if isinstance(backend, PairScorer):
            return backend.score_token_ids(ids, [_segments(job)[i] for job, i in items])
        return backend.embed_token_ids(ids, normalize=False, prompt_length=prompt_length)

    def _record_forward(self, model_name: str, ids: list[list[int]], seconds: float) -> None:
        """Throughput (for the queue's time estimates) and batch metrics of one forward pass."""
        self.throughput[model_name].add(sum(len(x) for x in ids), seconds)
        if self.metrics is not None:
            padded = len(ids) * max(len(x) for x in ids)
            self.metrics.observe_batch(model_name, len(ids), padded, seconds)

    def _fail(self, jobs: Collection[Job], exc: BaseException) -> None:
        with self._cv:
            for job in jobs:
                job.failed = True
                queue = self._lanes.get(job.lane)
                if queue is not None and job in queue:
                    queue.remove(job)
                    self._dequeue(job, job.remaining)
            self._gauges()
        for job in jobs:
            if not job.future.done():
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                    job.future.set_exception(exc)


def _segments(job: Job) -> list[list[int]]:
    if job.segments is None:  # submit() refuses a reranker's pairs without them
        raise ValueError("a reranker's pairs need their segment ids")
    return job.segments


def _retry_after(queued_seconds: float | None) -> int:
    """Whole seconds until the queued work is done (1 while the throughput is unknown), at most an hour."""
    if queued_seconds is None:
        return 1
    return int(min(3600, max(1, math.ceil(queued_seconds))))


def _deliver(items: list[tuple[Job, int]], vectors: np.ndarray) -> None:
    """Each vector to its text's own row; a job whose texts are all done is answered."""
    for row, (job, i) in enumerate(items):
        job.out[i] = vectors[row]
        job.done += 1
        if job.done == len(job.order):
            _resolve(job.future, job.out)


def _resolve(future: Future[np.ndarray], value: np.ndarray) -> None:
    with contextlib.suppress(InvalidStateError):  # the client cancelled; nothing to answer
        future.set_result(value)


def split_batches(
    lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int, overhead_tokens: int = 32
) -> list[list[int]]:
    """Length-sorted batches under the token budget, each cut where padding costs more than a forward.

    A round mixes requests of any lengths: one 120-token text with 30 short ones would pad all
    to 120 under the budget alone. On CPU a forward costs about (its padded tokens) plus a fixed
    overhead (about ``overhead_tokens`` tokens' worth: Python and small-matrix inefficiency), so
    each budget batch, already sorted longest first, is cut into the contiguous groups of least
    total cost (a small dynamic programme over at most ``max_batch_size`` texts).
    """
    out: list[list[int]] = []
    for batch in length_sorted_batches(lengths, max_batch_size, max_batch_tokens):
        widths = [max(int(lengths[k]), 1) for k in batch]  # longest first
        out.extend(batch[lo:hi] for lo, hi in _cheapest_groups(widths, overhead_tokens))
    return out


def _cheapest_groups(widths: Sequence[int], overhead_tokens: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` groups of a longest-first batch with the least total forward cost."""
    n = len(widths)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # group [i, j), its width is widths[i]
            cost = best[i] + overhead_tokens + (j - i) * widths[i]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[tuple[int, int]] = []
    j = n
    while j > 0:
        groups.append((cut[j], j))
        j = cut[j]
    return groups[::-1]
