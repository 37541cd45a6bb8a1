"""Errors that m3e reports to a person: one clear line, no traceback on the CLI.

Two kinds, two exit statuses: bad input (the person can fix the file or the option) exits 2; a fault while
writing (disk full, permission denied, a file too large) exits 1 and says what was and was not written.
"""

from __future__ import annotations

import errno
import os
import re


class M3EError(Exception):
    """A user-facing error: bad input, a missing model or file, an unsupported option.

    The CLI prints ``m3e <command>: error: <message>`` and exits with ``exit_status`` (2).
    """

    exit_status = 2


class InputError(M3EError, ValueError):
    """A broken input record; the message names the file and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class FaultError(M3EError):
    """A write that failed for a reason outside the input (no space, no permission, ...). The message says
    what was written and what was not; the CLI exits with status 1."""

    exit_status = 1


class ModelNotFoundError(M3EError, FileNotFoundError):
    """A model name or path that cannot be resolved to a model directory."""


_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what failed, on which file (``No space left on device: /data/out.npy``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in _SPACE and "space" not in reason.lower():
        reason = f"no space to write ({reason})"
    where = exc.filename if exc.filename is not None else None
    return f"{reason}: {where}" if where else reason


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _SPACE


_OS_ERROR = re.compile(r"\(os error (\d+)\)|os error (\d+)")


def as_os_error(exc: BaseException, filename: str | None = None) -> OSError | None:
    """``exc`` as the OSError it stands for, or None. Libraries written in Rust report a full disk in their own
    exception types with the errno in the text: safetensors' ``SafetensorError("... File too large (os error
    27)")``, LanceDB's ``RuntimeError("lance error: LanceError(IO): ... (os error 28)")``."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, M3EError):
        return None
    found = _OS_ERROR.search(str(exc))
    if found is None:
        return None
    number = int(found.group(1) or found.group(2))
    return OSError(number, os.strerror(number), filename)
