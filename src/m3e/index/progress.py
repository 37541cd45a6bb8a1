"""A one-line progress report with rate and ETA for streaming index builds."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from m3e.deprecation import renamed_attributes


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class IndexProgress:
    """An index write's progress: documents, chunks, share of the corpus read, rate and ETA.

    ``update(docs, chunks, fraction)`` redraws at most twice a second. ``fraction`` is the share of the
    corpus file read; the ETA extrapolates the time spent on the part read in this run (a resumed build
    starts from its own fraction).
    """

    def __init__(
        self, enabled: bool | None = None, stream: TextIO | None = None, label: str = "indexed"
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.start = time.monotonic()
        self.start_fraction: float | None = None
        self.last = 0.0
        self.docs = 0
        self.chunks = 0
        self.fraction = 0.0

    def update(self, docs: int, chunks: int, fraction: float, force: bool = False) -> None:
        self.docs, self.chunks, self.fraction = docs, chunks, fraction
        if self.start_fraction is None:
            self.start_fraction = fraction
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        self.stream.write("\r" + self.line(now) + " ")
        self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.docs / elapsed if elapsed > 0 else 0.0
        done = self.fraction - (self.start_fraction or 0.0)
        left = 1.0 - self.fraction
        eta = _clock(elapsed * left / done) if done > 0 else "?"
        return (f"{self.label} {self.docs} docs, {self.chunks} chunks, {100 * self.fraction:.1f}%, "
                f"{rate:.1f} docs/s, elapsed {_clock(elapsed)}, ETA {eta}")

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()


__getattr__ = renamed_attributes(__name__, {"Progress": "IndexProgress"}, globals())
