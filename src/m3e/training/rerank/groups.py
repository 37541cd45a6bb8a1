"""A reranker's training data: query groups from triplet records, pointwise pairs from scored records.

Triplets are the embedder's BGE records (``{"query", "pos": [...], "neg": [...]}``, as `m3e mine` writes them).
Each becomes a group of one positive and ``group_size - 1`` negatives, drawn afresh for every batch from the
batch's own random generator (FlagEmbedding's ``train_group_size``; negatives repeat when a record has fewer).
Scored pairs (``{sentence1, sentence2, score}``, a score in [0, 1]) are groups of one pair with the score as its
label. A held-out slice of the queries, or a separate file, gives the groups the run is evaluated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from m3e.errors import InputError, M3EError
from m3e.training.records import Record, TrainingDataset, iter_rows

RERANK_RECORD_TYPES = ("triplet", "scored")


@dataclass
class RerankDataset(TrainingDataset):
    """A training dataset as a reranker reads it: ``teacher[i]`` holds a teacher's score of record i's query
    with each of its texts, positives then negatives (None without a teacher)."""

    teacher: list[NDArray[np.float32]] | None = None


@dataclass(frozen=True)
class Group:
    """A query and its candidates, the positive first; ``labels`` say how relevant each one is (1 / 0, or a
    scored pair's score) and ``teacher`` holds a teacher's scores of the same candidates."""

    query: str
    docs: tuple[str, ...]
    labels: tuple[float, ...]
    teacher: tuple[float, ...] | None = None

    def pairs(self) -> list[tuple[str, str]]:
        return [(self.query, d) for d in self.docs]


@dataclass
class HeldOut:
    """What a run is evaluated on: groups of one positive and all of a query's negatives, and where they came
    from (said in the model card)."""

    groups: list[Group]
    source: str


def rerank_datasets(datasets: Sequence[TrainingDataset]) -> list[RerankDataset]:
    """The datasets a reranker can train on, checked: triplets (groups) and scored pairs (scores in [0, 1])."""
    out: list[RerankDataset] = []
    for ds in datasets:
        if ds.type == "pair":
            raise M3EError(
                f"{ds.source}: pairs without negatives cannot train a reranker; add negatives with `m3e mine` "
                "(records {query, pos, neg}) or give scored pairs {sentence1, sentence2, score}"
            )
        if ds.type not in RERANK_RECORD_TYPES:
            raise M3EError(f"{ds.source}: {ds.type} records cannot train a reranker (triplets or scored pairs)")
        if ds.type == "scored":
            _check_scores(ds)
        out.append(_as_rerank(ds, ds.records))
    return out


def _as_rerank(ds: TrainingDataset, records: list[Record], teacher: list[NDArray[np.float32]] | None = None,
               ) -> RerankDataset:
    return RerankDataset(ds.name, ds.type, records, source=ds.source, weight=ds.weight, columns=ds.columns,
                         side=ds.side, teacher=teacher)


def _check_scores(ds: TrainingDataset) -> None:
    for i, record in enumerate(ds.records):
        score = record.score
        if score is None or not 0.0 <= score <= 1.0:
            raise InputError(
                f"a reranker's scored pair needs a score in [0, 1] (a relevance label), got {score!r}",
                path=ds.source, line=record_line(ds, i),
            )


def record_line(ds: TrainingDataset, index: int) -> int | None:
    """The line (or row) of a file that record ``index`` was read from; None for data that is not a file."""
    path = Path(ds.source)
    if not path.is_file():
        return None
    for i, (line, _row) in enumerate(iter_rows(path, ds.encoding)):
        if i == index:
            return line
    return None


# ------------------------------------------------------------------------------------------------ batches
def build_groups(ds: RerankDataset, indices: Sequence[int], rng: np.random.Generator, group_size: int) -> list[Group]:
    """The groups of one batch (see the module's description); the draws come from ``rng`` alone, so a resumed
    run draws the same ones."""
    groups = []
    for i in indices:
        record = ds.records[i]
        teacher = ds.teacher[i] if ds.teacher is not None else None
        if ds.type == "scored":
            assert record.score is not None  # checked when the data was read
            scores = (float(teacher[0]),) if teacher is not None else None
            groups.append(Group(record.text, (record.pos[0],), (record.score,), scores))
            continue
        p = int(rng.integers(len(record.pos))) if len(record.pos) > 1 else 0
        negatives = _draw_negatives(len(record.neg), group_size - 1, rng)
        docs = (record.pos[p], *(record.neg[j] for j in negatives))
        labels = (1.0,) + (0.0,) * len(negatives)
        picked = None
        if teacher is not None:
            offset = len(record.pos)
            picked = (float(teacher[p]), *(float(teacher[offset + j]) for j in negatives))
        groups.append(Group(record.text, docs, labels, picked))
    return groups


def _draw_negatives(available: int, wanted: int, rng: np.random.Generator) -> list[int]:
    """``wanted`` negatives of ``available``: distinct when there are enough, else all of them and repeats."""
    if available >= wanted:
        return [int(j) for j in rng.choice(available, size=wanted, replace=False)]
    every = [int(j) for j in rng.permutation(available)]
    return every + [int(j) for j in rng.integers(available, size=wanted - available)]


# ------------------------------------------------------------------------------------------------ held out
def evaluation_groups(datasets: Sequence[TrainingDataset]) -> list[Group]:
    """Every triplet record as a group of its first positive and all its negatives."""
    groups: list[Group] = []
    for ds in datasets:
        if ds.type != "triplet":
            raise M3EError(f"{ds.source}: evaluation needs triplet records (a query, positives, negatives)")
        groups.extend(_evaluation_group(r) for r in ds.records)
    return groups


def _evaluation_group(record: Record) -> Group:
    return Group(record.text, (record.pos[0], *record.neg), (1.0,) + (0.0,) * len(record.neg))


def hold_out(datasets: list[RerankDataset], fraction: float, seed: int) -> tuple[list[RerankDataset], HeldOut]:
    """Set aside ``fraction`` of each triplet dataset's queries (every record of a query goes the same way, so no
    query is both trained on and evaluated), chosen by ``seed``; the rest is what the run trains on."""
    if not 0.0 < fraction < 1.0:
        raise M3EError(f"the held-out share must be between 0 and 1, not {fraction}")
    kept: list[RerankDataset] = []
    groups: list[Group] = []
    for d, ds in enumerate(datasets):
        if ds.type != "triplet":
            kept.append(ds)
            continue
        queries = sorted({r.text for r in ds.records})
        n_out = min(len(queries) - 1, max(1, round(len(queries) * fraction)))
        rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, d, 5]))
        out = {queries[int(i)] for i in rng.permutation(len(queries))[:n_out]}
        stay = [i for i, r in enumerate(ds.records) if r.text not in out]
        groups.extend(_evaluation_group(r) for r in ds.records if r.text in out)
        teacher = [ds.teacher[i] for i in stay] if ds.teacher is not None else None
        kept.append(_as_rerank(ds, [ds.records[i] for i in stay], teacher))
    if not groups:
        raise M3EError("nothing to hold out for evaluation: the held-out groups come from triplet records")
    names = ", ".join(ds.name for ds in datasets if ds.type == "triplet")
    return kept, HeldOut(groups, f"{len(groups)} held-out groups, {fraction:.0%} of the queries of {names}")
