"""Waiting in tests: on the condition itself, with a deadline that fails the test naming what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0, poll: float = 0.01) -> None:
    """Return as soon as ``condition()`` holds; fail with "timed out ... waiting for <what>" after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
