"""Batch plans: every batch from ONE dataset (the M3E recipe), per-dataset weights, no duplicate text in a batch.

An epoch's plan is a pure function of (dataset sizes and texts, batch size, weights, seed, epoch), so a resumed run
rebuilds the same plan and skips the batches it has done: the data order survives a restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from m3e.errors import M3EError
from m3e.training.records import TrainingDataset


@dataclass(frozen=True)
class PlannedBatch:
    dataset: int  # index into the datasets list
    indices: tuple[int, ...]  # record indices inside that dataset


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def _stream(n: int, weight: float, rng: np.random.Generator, shuffle: bool) -> list[int]:
    """Record indices for one epoch: ``weight`` passes over the dataset (2.0 = twice, 0.5 = a random half)."""
    target = round(n * weight)
    out: list[int] = []
    while len(out) < target:
        order = rng.permutation(n) if shuffle else np.arange(n)
        out.extend(int(i) for i in order[: target - len(out)])
    return out


def _batches_of(
    stream: list[int], texts: Sequence[tuple[str, ...]] | None, batch_size: int
) -> list[tuple[int, ...]]:
    """Cut ``stream`` into batches; with ``texts``, a record whose text already appears in the batch waits for a
    later batch (in-batch duplicates are false negatives). Linear time: only the waiting records are rescanned."""
    out: list[tuple[int, ...]] = []
    if texts is None:
        return [tuple(stream[i : i + batch_size]) for i in range(0, len(stream), batch_size)]
    waiting: deque[int] = deque()
    it = iter(stream)
    exhausted = False
    while not exhausted or waiting:
        batch: list[int] = []
        seen: set[str] = set()
        retry: deque[int] = deque()
        budget = 4 * batch_size + 64  # bounded rescans keep heavily duplicated data linear
        while waiting and len(batch) < batch_size and budget > 0:
            budget -= 1
            idx = waiting.popleft()
            t = texts[idx]
            if seen.isdisjoint(t):
                batch.append(idx)
                seen.update(t)
            else:
                retry.append(idx)
        while not exhausted and len(batch) < batch_size:
            fresh = next(it, None)
            if fresh is None:
                exhausted = True
                break
            t = texts[fresh]
            if seen.isdisjoint(t):
                batch.append(fresh)
                seen.update(t)
            else:
                retry.append(fresh)
        waiting = retry + waiting
        if not batch:  # only conflicting leftovers remain; cannot happen (a fresh batch takes the first one)
            break
        out.append(tuple(batch))
    return out


def plan_epoch(
    datasets: Sequence[TrainingDataset],
    batch_size: int,
    *,
    seed: int = 42,
    epoch: int = 0,
    shuffle: bool = True,
    no_duplicates: bool = True,
    drop_last: bool = False,
    weights: Sequence[float] | None = None,
    min_batch: int = 2,
) -> list[PlannedBatch]:
    """The batches of one epoch. Batches are built per dataset, then their order is shuffled globally. A last
    batch smaller than ``min_batch`` is left out (one pair has no in-batch negatives)."""
    if batch_size < 1:
        raise M3EError("batch size must be >= 1")
    weights = list(weights) if weights is not None else [ds.weight for ds in datasets]
    if len(weights) != len(datasets):
        raise M3EError(f"{len(weights)} weights for {len(datasets)} datasets")
    plan: list[PlannedBatch] = []
    for d, (ds, w) in enumerate(zip(datasets, weights, strict=True)):
        if w < 0:
            raise M3EError(f"dataset {ds.name}: weight must be >= 0")
        stream = _stream(len(ds.records), w, _rng(seed, epoch, d, 1), shuffle)
        dedupe = no_duplicates and ds.type in ("pair", "triplet")
        texts = [r.texts() for r in ds.records] if dedupe else None
        for idx in _batches_of(stream, texts, batch_size):
            if len(idx) < batch_size and (drop_last or len(idx) < min_batch):
                continue
            plan.append(PlannedBatch(d, idx))
    if shuffle:
        order = _rng(seed, epoch, 2).permutation(len(plan))
        plan = [plan[int(i)] for i in order]
    return plan


def batch_rng(seed: int, epoch: int, step_in_epoch: int) -> np.random.Generator:
    """Per-batch randomness (which positive / negatives of a BGE-style record), stable across restarts."""
    return _rng(seed, epoch, step_in_epoch, 3)


def build_columns(
    ds: TrainingDataset, indices: Sequence[int], rng: np.random.Generator, num_negatives: int = 1
) -> tuple[list[list[str]], np.ndarray | None]:
    """Text columns and labels for one batch of one dataset (see :mod:`m3e.training.losses` for the layout)."""
    recs = [ds.records[i] for i in indices]
    if ds.type == "scored":
        return [[r.text for r in recs], [r.pos[0] for r in recs]], np.array([r.score for r in recs], dtype=np.float32)
    if ds.type == "distill":
        return [[r.text for r in recs]], np.array([r.vector for r in recs], dtype=np.float32)
    queries = [r.text for r in recs]
    positives = [r.pos[int(rng.integers(len(r.pos)))] if len(r.pos) > 1 else r.pos[0] for r in recs]
    columns = [queries, positives]
    if ds.type == "triplet" and num_negatives > 0:
        negs: list[list[str]] = [[] for _ in range(num_negatives)]
        for r in recs:
            if len(r.neg) >= num_negatives:
                pick = rng.choice(len(r.neg), size=num_negatives, replace=False)
            else:  # fewer negatives than asked: repeat some
                pick = rng.integers(len(r.neg), size=num_negatives)
            for k, j in enumerate(pick):
                negs[k].append(r.neg[int(j)])
        columns.extend(negs)
    return columns, None
