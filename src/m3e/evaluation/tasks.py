"""Deprecated: the mteb custom tasks live in :mod:`m3e.evaluation.mteb_tasks`."""

from __future__ import annotations

import warnings

from m3e.evaluation.mteb_tasks import (
    SEED,
    OfflineBitextMining,
    OfflineClassification,
    OfflinePairClassification,
    OfflineRetrieval,
    make_task,
    task_metadata,
)

__all__ = [
    "SEED",
    "OfflineBitextMining",
    "OfflineClassification",
    "OfflinePairClassification",
    "OfflineRetrieval",
    "make_task",
    "task_metadata",
]

warnings.warn(
    "m3e.evaluation.tasks is deprecated; use m3e.evaluation.mteb_tasks", DeprecationWarning, stacklevel=2
)
