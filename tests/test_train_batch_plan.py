"""Batch plans: one dataset per batch, weights, no duplicates, shuffling, determinism."""

from __future__ import annotations

from collections import Counter

from m3e.training.batch_plan import batch_rng, build_columns, plan_epoch
from m3e.training.records import Record, TrainingDataset


def _ds(name: str, n: int, dup_every: int = 0) -> TrainingDataset:
    recs = []
    for i in range(n):
        pos = f"{name}-shared" if dup_every and i % dup_every == 0 else f"{name}-p{i}"
        recs.append(Record(f"{name}-q{i}", (pos,)))
    return TrainingDataset(name, "pair", recs)


def test_one_dataset_per_batch_and_weights():
    a, b = _ds("a", 64), _ds("b", 32)
    b.weight = 2.0
    plan = plan_epoch([a, b], 8, seed=1)
    counts = Counter(pb.dataset for pb in plan)
    assert counts == {0: 8, 1: 8}  # b twice per epoch
    for pb in plan:
        ds = [a, b][pb.dataset]
        assert all(0 <= i < len(ds) for i in pb.indices)
    assert sorted(i for pb in plan if pb.dataset == 0 for i in pb.indices) == list(range(64))
    half = plan_epoch([a, b], 8, seed=1, weights=[0.5, 1.0])
    assert Counter(pb.dataset for pb in half) == {0: 4, 1: 4}


def test_shuffled_by_default_and_deterministic():
    a, b = _ds("a", 64), _ds("b", 64)
    p1 = plan_epoch([a, b], 8, seed=3, epoch=0)
    assert p1 == plan_epoch([a, b], 8, seed=3, epoch=0)  # a restart rebuilds the same plan
    assert p1 != plan_epoch([a, b], 8, seed=3, epoch=1)
    assert [pb.dataset for pb in p1] != sorted(pb.dataset for pb in p1)  # datasets interleaved
    assert list(p1[0].indices) != list(range(8)) or list(p1[1].indices) != list(range(8, 16))
    plain = plan_epoch([a], 8, shuffle=False)
    assert [list(pb.indices) for pb in plain][:2] == [list(range(8)), list(range(8, 16))]


def test_no_duplicate_text_in_a_batch():
    a = _ds("a", 80, dup_every=4)  # 20 records share one positive
    plan = plan_epoch([a], 8, seed=0)
    for pb in plan:
        texts = [t for i in pb.indices for t in a.records[i].texts()]
        assert len(texts) == len(set(texts))
    seen = [i for pb in plan for i in pb.indices]
    assert len(seen) == len(set(seen))
    allowed = plan_epoch([a], 8, seed=0, no_duplicates=False)
    assert any(sum(a.records[i].pos[0] == "a-shared" for i in pb.indices) > 1 for pb in allowed)


def test_columns_sample_positives_and_negatives():
    ds = TrainingDataset("t", "triplet", [Record("q1", ("p1", "p2"), ("n1", "n2", "n3")), Record("q2", ("p3",), ("n4",))])
    cols, labels = build_columns(ds, [0, 1], batch_rng(1, 0, 0), num_negatives=2)
    assert labels is None and len(cols) == 4
    assert cols[0] == ["q1", "q2"] and cols[1][0] in ("p1", "p2") and cols[1][1] == "p3"
    assert cols[2][0] != cols[3][0] and cols[2][1] == cols[3][1] == "n4"
    assert build_columns(ds, [0, 1], batch_rng(1, 0, 0), num_negatives=2) == (cols, None)
    scored = TrainingDataset("s", "scored", [Record("a", ("b",), score=0.5)])
    cols, labels = build_columns(scored, [0], batch_rng(1, 0, 0))
    assert cols == [["a"], ["b"]] and labels.tolist() == [0.5]
