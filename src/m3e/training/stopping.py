"""Stopping a training run on request: SIGTERM or Ctrl-C ends it at the next step boundary, checkpointed.

Without this, a signal lands in the middle of a step and every step since the last periodic checkpoint is lost
(up to ``save_steps`` of them: an hour on a small CPU). With it, the first signal is only noted
(:class:`StopRequest`); the trainer finishes the step it is in, writes a checkpoint and raises
:class:`TrainingStopped`, so ``--resume`` continues from exactly there. A second signal acts as it would have
without us (a hard stop), for a run that must end now.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from m3e.errors import M3EError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(M3EError):
    """A run stopped on request after saving a checkpoint; the CLI exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """Notes the first stop signal; the training loop polls :attr:`signum` between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.restore()  # the next signal gets the old behaviour: a run that must end now can still be ended

    def install(self) -> StopRequest:
        """Take over SIGTERM and SIGINT (from the main thread only: Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            return self  # a run in another thread stops as it did before
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue  # e.g. SIGINT in a background job: whoever ignored it meant it
            self._previous[sig] = previous
            signal.signal(sig, self._note)
        return self

    def restore(self) -> None:
        """Give the signals back to their previous handlers."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
