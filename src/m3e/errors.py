"""Errors that m3e reports to a person: one clear line, no traceback on the CLI."""

from __future__ import annotations


class M3EError(Exception):
    """A user-facing error: bad input, a missing model or file, an unsupported option.

    The CLI prints ``m3e <command>: error: <message>`` and exits with status 2.
    """


class InputError(M3EError, ValueError):
    """A broken input record; the message names the file and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class ModelNotFoundError(M3EError, FileNotFoundError):
    """A model name or path that cannot be resolved to a model directory."""
