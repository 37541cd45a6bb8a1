"""The dynamic batcher alone, with a fake model: order, fairness, budgets, back-pressure, drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from m3e.serving.batcher import Batcher, QueueFull, ShuttingDown, Throughput, split_batches


class FakeModel:
    """Vector = (first id, length, 1, ...): lets a test check which text landed where."""

    dim = 4

    def __init__(self, delay: float = 0.0, fail_on: int | None = None):
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[list[list[int]]] = []
        self.lock = threading.Lock()

    def embed_token_ids(
        self, batch: Sequence[Sequence[int]], normalize: bool = True, prompt_length: int = 0
    ) -> np.ndarray:
        with self.lock:
            self.batches.append([list(x) for x in batch])
        if self.fail_on is not None and any(x[0] == self.fail_on for x in batch):
            raise RuntimeError("boom")
        time.sleep(self.delay)
        return np.array([[x[0], len(x), 1.0, prompt_length] for x in batch], dtype=np.float32)


def _ids(tag: int, length: int) -> list[int]:
    return [tag] + [7] * (length - 1)


def test_split_batches_covers_each_index_once_and_limits_padding() -> None:
    lengths = [512, 10, 12, 9, 300, 11, 500, 8]
    batches = split_batches(lengths, max_batch_size=4, max_batch_tokens=100000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 for b in batches)
    # Long texts are not padded together with short ones; similar ones share a forward.
    assert sorted(sorted(b) for b in split_batches(lengths, 64, 100000)) == [[0, 6], [1, 2, 3, 5, 7], [4]]

    # Cheaper than the uncut batch, by the cost model it minimises.
    def cost(bs: list[list[int]]) -> int:
        return sum(32 + len(b) * max(lengths[i] for i in b) for b in bs)

    assert cost(split_batches(lengths, 64, 100000)) < cost([list(range(len(lengths)))])
    # Equal lengths stay in one batch; under a token budget every batch's padded size fits.
    assert split_batches([20] * 10, 64, 100000) == [list(range(10))]
    for b in split_batches(lengths, max_batch_size=64, max_batch_tokens=1024):
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024


def test_results_come_back_in_input_order() -> None:
    model = FakeModel()
    batcher = Batcher({"m": model}, max_batch_tokens=64, max_batch_size=3, max_wait=0.0)
    batcher.start()
    try:
        lengths = [5, 1, 9, 3, 3, 12, 2]
        ids = [_ids(100 + k, n) for k, n in enumerate(lengths)]
        out = batcher.submit("m", ids).result(timeout=10)
        np.testing.assert_array_equal(out[:, 0], [100 + k for k in range(len(lengths))])
        np.testing.assert_array_equal(out[:, 1], lengths)
        assert all(len(b) <= 3 for b in model.batches)
    finally:
        batcher.stop()


def test_a_backends_batch_tokens_cap_its_forward_passes() -> None:
    model = FakeModel()
    model.batch_tokens = 40  # type: ignore[attr-defined]  # what an OpenVINO-backed model reports
    batcher = Batcher({"m": model}, max_batch_tokens=4096, max_batch_size=64, max_wait=0.0)
    batcher.start()
    try:
        ids = [_ids(100 + k, 10) for k in range(12)]
        out = batcher.submit("m", ids).result(timeout=10)
        np.testing.assert_array_equal(out[:, 0], [100 + k for k in range(12)])
        # one round of 120 tokens, run as forward passes of at most 40 padded tokens
        assert [len(b) for b in model.batches] == [4, 4, 4]
    finally:
        batcher.stop()


def test_huge_request_does_not_starve_small_ones() -> None:
    model = FakeModel(delay=0.002)
    batcher = Batcher({"m": model}, max_batch_tokens=10000, max_batch_size=16, max_wait=0.0)
    done: list[str] = []
    lock = threading.Lock()
    all_answered = threading.Event()  # a future's callbacks run after its waiters wake: wait for them

    def record(name: str):
        def cb(_):
            with lock:
                done.append(name)
                if len(done) == 7:
                    all_answered.set()

        return cb

    # Everything is queued before the inference thread starts: the big job is first in line.
    big = batcher.submit("m", [_ids(1, 8)] * 400)
    big.add_done_callback(record("big"))
    smalls = []
    for k in range(6):
        f = batcher.submit("m", [_ids(50 + k, 4)])
        f.add_done_callback(record(f"small{k}"))
        smalls.append(f)
    batcher.start()
    try:
        big.result(timeout=30)
        for f in smalls:
            f.result(timeout=30)
        assert all_answered.wait(30), f"only {done} were answered"
        assert done[-1] == "big"
        # The small requests rode in the first round, next to the big job's first texts.
        first_round = [x[0] for b in model.batches[:2] for x in b]
        assert {50 + k for k in range(6)} <= set(first_round)
    finally:
        batcher.stop()


def test_lanes_keep_models_and_prompt_lengths_apart() -> None:
    a, b = FakeModel(), FakeModel()
    batcher = Batcher({"a": a, "b": b}, max_batch_tokens=1000, max_batch_size=64, max_wait=0.0)
    fa = batcher.submit("a", [_ids(1, 3)], prompt_length=0)
    fa2 = batcher.submit("a", [_ids(2, 3)], prompt_length=2)
    fb = batcher.submit("b", [_ids(3, 3)])
    batcher.start()
    try:
        assert fa.result(10)[0, 3] == 0
        assert fa2.result(10)[0, 3] == 2
        assert fb.result(10)[0, 0] == 3
        assert all(len(batch) == 1 for batch in a.batches)  # two prompt lengths: two forwards
        assert len(b.batches) == 1
    finally:
        batcher.stop()


def test_queue_limit_refuses_with_retry_after_and_empty_queue_takes_anything() -> None:
    batcher = Batcher({"m": FakeModel()}, max_queue=4, max_wait=0.0)
    batcher.submit("m", [_ids(1, 2)] * 10)  # bigger than the limit, but the queue was empty
    with pytest.raises(QueueFull) as info:
        batcher.submit("m", [_ids(2, 2)])
    assert info.value.retry_after >= 1
    assert info.value.queued == 10
    batcher.start()
    batcher.stop()
    assert batcher.queued_texts == 0


def test_stop_finishes_queued_work_then_refuses() -> None:
    model = FakeModel(delay=0.01)
    batcher = Batcher({"m": model}, max_batch_size=2, max_wait=0.0)
    futures = [batcher.submit("m", [_ids(k, 3)] * 3) for k in range(5)]
    batcher.start()
    batcher.stop(timeout=30)
    assert all(f.done() and not f.exception() for f in futures)
    with pytest.raises(ShuttingDown):
        batcher.submit("m", [_ids(9, 3)])


def test_a_failing_forward_fails_only_its_requests() -> None:
    batcher = Batcher({"m": FakeModel(fail_on=13)}, max_batch_size=1, max_wait=0.0)
    bad = batcher.submit("m", [_ids(13, 3), _ids(14, 3)])
    good = batcher.submit("m", [_ids(15, 3)])
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(10)
        assert good.result(10)[0, 0] == 15
    finally:
        batcher.stop()


def test_patience_lets_a_batch_fill() -> None:
    model = FakeModel()
    batcher = Batcher({"m": model}, max_batch_size=8, max_wait=0.3)
    batcher.start()
    try:
        futures = []
        for k in range(8):
            futures.append(batcher.submit("m", [_ids(k, 3)]))
            time.sleep(0.005)  # the behaviour under test: texts arriving one by one, well inside max_wait
        for f in futures:
            f.result(10)
        assert [len(b) for b in model.batches] == [8]
    finally:
        batcher.stop()


def test_throughput_is_tokens_over_time_of_recent_passes() -> None:
    rate = Throughput(window=3)
    assert rate.tokens_per_s == 0.0
    rate.add(1000, 1.0)
    rate.add(10, 0.1)  # a small pass, slower per token: weighs by its time, not as one rate in an average
    assert rate.tokens_per_s == pytest.approx(1010 / 1.1)
    rate.add(500, 0.5)
    rate.add(500, 0.5)  # the first pass leaves the window
    assert rate.tokens_per_s == pytest.approx(1010 / 1.1)


def test_queue_seconds_refuse_with_the_queued_work_as_retry_after() -> None:
    batcher = Batcher({"m": FakeModel(), "slow": FakeModel()}, max_queue_seconds=2.0, max_wait=0.0)
    assert batcher.queued_seconds() == 0.0
    batcher.seed_throughput("m", 1000, 1.0)  # 1000 tokens/s
    batcher.submit("m", [_ids(1, 500)] * 3)  # 1.5 s of work
    assert batcher.queued_seconds() == pytest.approx(1.5)
    batcher.submit("m", [_ids(2, 400)])  # 1.9 s: still within 2 s
    with pytest.raises(QueueFull) as info:
        batcher.submit("m", [_ids(3, 200)])  # would make 2.1 s
    assert info.value.queued_seconds == pytest.approx(1.9)
    assert info.value.retry_after == 2  # the whole seconds the queued work needs
    # A model whose throughput is not known yet is not refused by time (only by --max-queue).
    batcher.submit("slow", [_ids(4, 3000)])
    assert batcher.queued_seconds() is None
    batcher.seed_throughput("slow", 100, 1.0)  # 100 tokens/s: its 3000 tokens are 30 s
    assert batcher.queued_seconds() == pytest.approx(31.9)
    with pytest.raises(QueueFull) as info:
        batcher.submit("m", [_ids(5, 1)])
    assert info.value.retry_after == 32
    batcher.start()
    batcher.stop()
    assert batcher.queued_seconds() == 0.0


def test_queue_seconds_let_an_empty_queue_take_any_request() -> None:
    batcher = Batcher({"m": FakeModel()}, max_queue_seconds=0.5, max_wait=0.0)
    batcher.seed_throughput("m", 100, 1.0)
    batcher.submit("m", [_ids(1, 1000)])  # 10 s of work, but nothing was queued
    with pytest.raises(QueueFull):
        batcher.submit("m", [_ids(2, 1)])
    batcher.start()
    batcher.stop()
