"""mteb tasks built from m3e task files, so the metrics and protocols are mteb's own.

Each class subclasses one of mteb's ``AbsTask*`` classes and only replaces data loading: the
records come from a local task file (``m3e.evaluation.taskfile``), never from the hub.
Metadata is set per instance, so these classes never enter mteb's task registry.

Protocols (mteb's, as C-MTEB runs them): classification trains a logistic regression on 32
samples per label, 10 experiments, and reports test accuracy; retrieval reports nDCG@10 over
the full corpus; bitext mining matches every sentence1 to its nearest sentence2 (f1 /
accuracy); pair classification reports the best average precision over similarity functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mteb.abstasks import (
    AbsTask,
    AbsTaskBitextMining,
    AbsTaskClassification,
    AbsTaskPairClassification,
    AbsTaskRetrieval,
)
from mteb.abstasks.task_metadata import TaskMetadata

from m3e.evaluation.taskfile import TaskFile, TaskType

SEED = 42  # mteb's default; fixes the classification undersampling and the logistic regressions


def task_metadata(spec: TaskFile) -> TaskMetadata:
    return TaskMetadata(
        name=spec.name,
        description=spec.description,
        dataset={"path": f"m3e-offline/{spec.name}", "revision": spec.revision},
        type=spec.type,
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=list(spec.languages),
        main_score=spec.main_score,
        bibtex_citation="",
    )


class _FromTaskFile(AbsTask):
    """Base of the offline tasks: metadata from the task file and data loaded from it (no hub, no datasets
    cache). Comes first in each task's bases, before the mteb task type it loads data for."""

    spec: TaskFile

    def __init__(self, spec: TaskFile, seed: int = SEED, **kwargs: Any) -> None:
        self.spec = spec
        self.metadata = task_metadata(spec)
        super().__init__(seed=seed, **kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = self._build_dataset()
        self.data_loaded = True

    def _build_dataset(self) -> Any:
        raise NotImplementedError


class OfflineClassification(_FromTaskFile, AbsTaskClassification):
    samples_per_label = 32
    n_experiments = 10

    def _build_dataset(self) -> Any:
        from datasets import Dataset, DatasetDict

        recs = self.spec.records
        # Labels become ints in a fixed (sorted) order so that runs are comparable.
        names = sorted({str(r["label"]) for split in ("train", "test") for r in recs[split]})
        index = {n: i for i, n in enumerate(names)}
        self.label_names = names
        splits = {
            split: Dataset.from_dict(
                {
                    "text": [r["text"] for r in recs[split]],
                    "label": [index[str(r["label"])] for r in recs[split]],
                }
            )
            for split in ("train", "test")
        }
        return {"default": DatasetDict(splits)}

    def _calculate_scores(self, y_test: Any, y_pred: Any) -> Any:
        # mteb hands sklearn the lazy datasets column, which sklearn's checks iterate row by row
        # many times (seconds per task on a small CPU); the same labels as one array.
        return super()._calculate_scores(np.asarray(list(y_test)), y_pred)


class OfflineRetrieval(_FromTaskFile, AbsTaskRetrieval):
    def _build_dataset(self) -> Any:
        from datasets import Dataset

        recs = self.spec.records
        queries = Dataset.from_dict(
            {"id": [str(q["id"]) for q in recs["queries"]], "text": [q["text"] for q in recs["queries"]]}
        )
        corpus = Dataset.from_dict(
            {
                "id": [str(d["id"]) for d in recs["corpus"]],
                "text": [d["text"] for d in recs["corpus"]],
                "title": [str(d.get("title") or "") for d in recs["corpus"]],
            }
        )
        qrels = {q: dict(docs) for q, docs in recs["qrels"].items()}
        split = {"queries": queries, "corpus": corpus, "relevant_docs": qrels, "top_ranked": None}
        return {"default": {"test": split}}


class OfflineBitextMining(_FromTaskFile, AbsTaskBitextMining):
    def _build_dataset(self) -> Any:
        from datasets import Dataset

        pairs = self.spec.records["pairs"]
        return {
            "default": {
                "test": Dataset.from_dict(
                    {
                        "sentence1": [p["sentence1"] for p in pairs],
                        "sentence2": [p["sentence2"] for p in pairs],
                    }
                )
            }
        }


class OfflinePairClassification(_FromTaskFile, AbsTaskPairClassification):
    def _build_dataset(self) -> Any:
        from datasets import Dataset

        pairs = self.spec.records["pairs"]
        return {
            "default": {
                "test": Dataset.from_dict(
                    {
                        "sentence1": [p["sentence1"] for p in pairs],
                        "sentence2": [p["sentence2"] for p in pairs],
                        "labels": [int(p["label"]) for p in pairs],
                    }
                )
            }
        }


_CLASSES: dict[TaskType, type[_FromTaskFile]] = {
    "Classification": OfflineClassification,
    "Retrieval": OfflineRetrieval,
    "BitextMining": OfflineBitextMining,
    "PairClassification": OfflinePairClassification,
}


def make_task(spec: TaskFile, seed: int = SEED) -> AbsTask:
    """An mteb task (an ``AbsTask``) for one task file, with its data loaded."""
    task = _CLASSES[spec.type](spec, seed=seed)
    task.load_data()
    return task
