"""Progress bars for long loops: shown on a terminal for large jobs (or when asked), silent otherwise."""

from __future__ import annotations

import os
from typing import Protocol


class ProgressBar(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, show: bool | None, *, unit: str, desc: str, auto_from: int = 2048) -> ProgressBar:
    """A tqdm bar over ``total`` items; ``show`` None: only when stderr is a terminal and ``total`` reaches
    ``auto_from``."""
    if show is None:
        show = total >= auto_from and os.isatty(2)
    if not show:
        return _Silent()
    from tqdm.auto import tqdm

    bar: ProgressBar = tqdm(total=total, unit=unit, desc=desc, mininterval=0.5, smoothing=0.1)
    return bar


def show_progress(show: bool | None) -> bool:
    """``show`` as asked; None: only when stderr is a terminal (a log file gets no bar)."""
    return os.isatty(2) if show is None else show


def byte_progress(total: int, show: bool | None, *, desc: str) -> ProgressBar:
    """A bar over ``total`` bytes (sizes as KB / MB, the rate and an ETA), or nothing; ``show`` as
    :func:`show_progress` reads it."""
    if not show_progress(show):
        return _Silent()
    from tqdm.auto import tqdm

    bar: ProgressBar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                            mininterval=0.5, smoothing=0.2, dynamic_ncols=True)
    return bar
