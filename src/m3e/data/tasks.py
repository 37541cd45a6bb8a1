"""Deprecated name of :mod:`m3e.data.task_builders` (the builders of the benchmark task files)."""

from __future__ import annotations

import warnings

from m3e.data.task_builders import *  # noqa: F403

warnings.warn(
    "m3e.data.tasks is deprecated; import m3e.data.task_builders instead", DeprecationWarning, stacklevel=2
)
