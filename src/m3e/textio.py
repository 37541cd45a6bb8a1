"""Reading texts for the CLI: arguments, stdin, .txt (one per line) or .jsonl (a chosen field).

Every broken record is reported with its file and line, so a user can fix it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from m3e.errors import InputError, M3EError


def _lines(path: Path | None) -> Iterator[tuple[int, str]]:
    """(line number, line without newline) of a file or stdin; bad UTF-8 names its line."""
    name = str(path) if path else "<stdin>"
    try:
        handle = path.open("rb") if path is not None else contextlib.nullcontext(sys.stdin.buffer)
    except OSError as exc:
        raise M3EError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"not valid UTF-8 (byte {exc.start})", path=name, line=number) from exc
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield number, line.rstrip("\r\n")


def read_texts(path: str | None, field: str = "text", fmt: str | None = None) -> list[str]:
    """Texts from a file (``path``), or from stdin when ``path`` is ``None`` or ``-``.

    ``fmt`` is ``txt`` or ``jsonl``; by default taken from the file's suffix (stdin: txt).
    Blank lines in a .txt file are skipped; in .jsonl every non-blank line is one record.
    """
    p = None if path in (None, "-") else Path(path)
    if p is not None and p.is_dir():
        raise M3EError(f"{p} is a directory, expected a .txt or .jsonl file")
    if p is not None and not p.exists():
        raise M3EError(f"no such file: {p}")
    kind = fmt or ("jsonl" if p is not None and p.suffix.lower() in (".jsonl", ".json", ".ndjson") else "txt")
    name = str(p) if p else "<stdin>"
    texts: list[str] = []
    for number, line in _lines(p):
        if not line.strip():
            continue
        if kind == "txt":
            texts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", path=name, line=number) from exc
        if not isinstance(record, dict):
            raise InputError("expected a JSON object", path=name, line=number)
        if field not in record:
            raise InputError(f"no field {field!r} (fields: {', '.join(record) or 'none'})", path=name, line=number)
        value = record[field]
        if not isinstance(value, str):
            raise InputError(f"field {field!r} is {type(value).__name__}, expected a string", path=name, line=number)
        texts.append(value)
    return texts
