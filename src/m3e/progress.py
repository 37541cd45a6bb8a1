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
