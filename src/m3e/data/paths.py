"""Where m3e keeps raw downloads and built data (the layout contract with `m3e eval`).

``<root>/sources/<id>/`` holds a source's verified download and its extracted files;
``<root>/data/`` holds the built benchmark tasks and training pairs. The root is
``$M3E_HOME`` or ``~/.cache/m3e``.
"""

from __future__ import annotations

import os
from pathlib import Path

from m3e.paths import cache_root

__all__ = ["DATA_PREFIX", "cache_root", "data_dir", "distill_path", "resolve", "sources_dir", "task_path", "train_path"]


def data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The built-data directory ``<root>/data`` (tasks/, train/, manifest.json)."""
    return cache_root(root) / "data"


def sources_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Raw downloads: ``<root>/sources/<id>/<file>``."""
    return cache_root(root) / "sources"


def task_path(data: Path, task: str, profile: str) -> Path:
    return data / "tasks" / task / f"{profile}.json"


def train_path(data: Path, name: str) -> Path:
    return data / "train" / f"{name}.jsonl"


def distill_path(data: Path, name: str) -> Path:
    return data / "distill" / f"{name}.jsonl"


DATA_PREFIX = "data:"


def resolve(value: str, base: str | os.PathLike[str] | None = None) -> Path:
    """A path as recipes and commands write it: ``data:train/x.jsonl`` is inside m3e's data directory,
    a relative path is against ``base`` (the current directory when None)."""
    if value.startswith(DATA_PREFIX):
        return data_dir() / value[len(DATA_PREFIX):]
    p = Path(value).expanduser()
    return p if p.is_absolute() or base is None else Path(base) / p
