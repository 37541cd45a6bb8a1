"""Strict, bounded readers of text records: arguments, stdin, .txt, .jsonl, .csv/.tsv and .parquet.

One contract for every reader (m3e encode, m3e index, training records, mining):

* a broken record raises :class:`InputError` naming the file, the line (the row's first line for a CSV row,
  the row number for parquet) and what is wrong: text that is not in the chosen encoding (with the byte
  offset in the file), invalid JSON, a CSV quote left open (it would otherwise swallow every later row), a
  field over the size limit, a missing or non-text field, a missing id;
* an input without records is an error ("no records"), never an empty output;
* memory does not grow with the input: files are read line by line (rows by batch for parquet), and a line
  of a .txt file is kept only up to ``max_chars`` characters (the rest is read, checked and dropped), so a
  50 MB one-line file costs about what a short one does.

Blank lines of a .txt file are records (empty texts): row ``i`` of an output is line ``i`` of the input.
In .jsonl and .csv a blank line is not a record and is skipped.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from m3e.errors import InputError, M3EError

TEXT_FORMATS = ("txt", "jsonl", "csv", "parquet")
SUFFIX_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                  ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Characters of one record kept by default. The model reads far fewer (max_length x 16 characters in truncate
# mode); windows mode embeds the windows of this prefix. Documented in docs/reliability.md.
MAX_RECORD_CHARS = 1 << 20
# Longest .jsonl line (a record must be parsed whole) and longest CSV field; longer ones are errors.
MAX_JSON_LINE_BYTES = 64 << 20
CSV_FIELD_LIMIT = 8 << 20
_BLOCK = 1 << 20  # bytes read at a time from a long line


def check_encoding(encoding: str) -> str:
    """The codec's name, or an error for an unknown codec or one where a newline is not the byte ``\\n``
    (UTF-16/32: lines could not be found without decoding the whole file)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise M3EError(f"unknown encoding {encoding!r}") from None
    if "\n".encode(info.name) != b"\n" or "a".encode(info.name) != b"a":
        raise M3EError(f"encoding {encoding!r} is not supported: use an ASCII-compatible encoding (utf-8, gb18030, "
                       "big5, latin-1, ...) or convert the file to UTF-8")
    return info.name


def _encoding_label(encoding: str) -> str:
    return "UTF-8" if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig") else encoding


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    text: str  # without its line ending (unless asked for), at most max_chars characters
    truncated: bool  # the line was longer than max_chars


class LineReader:
    """Lines of a binary stream, decoded strictly, with bounded memory per line.

    ``max_chars``: keep at most this many characters of a line and drop the rest after checking it decodes
    (``None``: keep everything). ``max_bytes``: a longer line is an error (for formats that need a line
    whole). ``offset`` (bytes consumed) drives progress bars.
    """

    def __init__(self, stream: IO[bytes], name: str, *, encoding: str = "utf-8", max_chars: int | None = None,
                 max_bytes: int | None = None, keep_ends: bool = False,
                 hint: str = "choose the encoding with --encoding") -> None:
        self.stream = stream
        self.name = name
        self.encoding = check_encoding(encoding)
        self.max_chars = max_chars
        self.max_bytes = max_bytes
        self.keep_ends = keep_ends
        self.hint = hint  # what to do about a byte that does not decode
        self.offset = 0
        self.number = 0
        self._decoder = codecs.getincrementaldecoder(self.encoding)

    def __iter__(self) -> Iterator[Line]:
        while True:
            line = self.read_line()
            if line is None:
                return
            yield line

    def _decode(self, decoder: codecs.IncrementalDecoder, raw: bytes, final: bool) -> str:
        pending = len(decoder.getstate()[0])  # bytes of a character split by the previous block
        try:
            return decoder.decode(raw, final=final)
        except UnicodeDecodeError as exc:
            at = self.offset - pending + exc.start
            raise InputError(f"not valid {_encoding_label(self.encoding)} at byte {at} of the file ({self.hint})",
                             path=self.name, line=self.number) from None

    def read_line(self) -> Line | None:
        raw = self.stream.readline(_BLOCK)
        if not raw:
            return None
        self.number += 1
        start = self.offset
        decoder = self._decoder("strict")
        parts: list[str] = []
        kept = 0
        truncated = False
        while True:
            ended = raw.endswith(b"\n")
            text = self._decode(decoder, raw, final=ended)
            self.offset += len(raw)
            if self.max_bytes is not None and self.offset - start > self.max_bytes:
                raise InputError(f"line longer than {self.max_bytes} bytes", path=self.name, line=self.number)
            if self.max_chars is None:
                parts.append(text)
            elif kept < self.max_chars:
                piece = text[: self.max_chars - kept]
                parts.append(piece)
                kept += len(piece)
                truncated = truncated or len(piece) < len(text.rstrip("\r\n"))
            elif text.rstrip("\r\n"):
                truncated = True
            if ended:
                break
            raw = self.stream.readline(_BLOCK)
            if not raw:
                self._decode(decoder, b"", final=True)  # a character cut by the end of the file
                break
        text = "".join(parts)
        if self.number == 1:
            text = text.removeprefix("\ufeff")
        if not self.keep_ends:
            text = text.removesuffix("\n").removesuffix("\r")
        return Line(self.number, text, truncated)


@dataclass
class TextRecord:
    """One input record: its text, id and kept fields, and where it came from."""

    line: int  # line (txt, jsonl), first line of the row (csv), row number (parquet)
    text: str
    id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False


def text_format(path: Path | None, fmt: str | None = None) -> str:
    """``fmt``, or the format the file's suffix names (stdin: txt)."""
    if fmt:
        if fmt not in TEXT_FORMATS:
            raise M3EError(f"unknown input format {fmt!r}; choose one of {', '.join(TEXT_FORMATS)}")
        return fmt
    if path is None:
        return "txt"
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise M3EError(f"{path}: cannot tell the format from {suffix or 'no suffix'!r}; use --format")
    return SUFFIX_FORMATS[suffix]


class RecordReader:
    """Records of one input (a file, or stdin for ``None`` / ``-``), streamed.

    ``field``: the record field (jsonl, csv, parquet) holding the text. ``id_field``: a field every record
    must have (a non-empty string or integer), or ``None``. ``keep``: other fields carried through to the
    output; each must exist. ``max_chars``: characters of a text kept (``None``: all). ``blank``: what a
    blank .txt line is, "keep" (an empty text) or "skip".
    """

    def __init__(self, path: str | Path | None, *, fmt: str | None = None, field: str = "text",
                 id_field: str | None = None, keep: Sequence[str] = (), encoding: str = "utf-8",
                 max_chars: int | None = MAX_RECORD_CHARS, blank: str = "keep") -> None:
        self.path = Path(path) if path is not None and str(path) != "-" else None
        if self.path is not None:
            if self.path.is_dir():
                raise M3EError(f"{self.path} is a directory, expected a file")
            if not self.path.exists():
                raise M3EError(f"no such file: {self.path}")
        self.name = str(self.path) if self.path is not None else "<stdin>"
        self.format = text_format(self.path, fmt)
        if self.format == "parquet" and self.path is None:
            raise M3EError("parquet cannot be read from stdin; give the file with --input")
        self.field = field
        self.id_field = id_field
        self.keep = list(keep)
        self.encoding = check_encoding(encoding)
        self.max_chars = max_chars
        self.blank = blank
        self.truncated = 0  # records whose text was cut at max_chars
        self.count = 0
        self._size = max(self.path.stat().st_size, 1) if self.path is not None else 0
        self._done = 0.0

    @property
    def fraction(self) -> float:
        """Share of the input read so far (0 for stdin, whose size is unknown)."""
        return self._done

    def __iter__(self) -> Iterator[TextRecord]:
        readers = {"txt": self._txt, "jsonl": self._jsonl, "csv": self._csv, "parquet": self._parquet}
        for record in readers[self.format]():
            self.count += 1
            self.truncated += record.truncated
            yield record
        if self.count == 0:
            raise InputError("no records", path=self.name)
        self._done = 1.0

    # ------------------------------------------------------------------ line formats
    @contextlib.contextmanager
    def _open(self) -> Iterator[IO[bytes]]:
        if self.path is None:
            yield sys.stdin.buffer
            return
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise M3EError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        with handle:
            yield handle

    def _progress(self, lines: LineReader) -> None:
        if self._size:
            self._done = min(lines.offset / self._size, 1.0)

    def _txt(self) -> Iterator[TextRecord]:
        with self._open() as stream:
            lines = LineReader(stream, self.name, encoding=self.encoding, max_chars=self.max_chars)
            for line in lines:
                self._progress(lines)
                if self.blank == "skip" and not line.text.strip():
                    continue
                yield TextRecord(line.number, line.text, None, {}, line.truncated)

    def _jsonl(self) -> Iterator[TextRecord]:
        with self._open() as stream:
            lines = LineReader(stream, self.name, encoding=self.encoding, max_bytes=MAX_JSON_LINE_BYTES)
            for number, record in json_objects(lines, self.name, on_line=lambda: self._progress(lines)):
                yield self.record(record, number)

    def _csv(self) -> Iterator[TextRecord]:
        delimiter = "\t" if self.path is not None and self.path.suffix.lower() == ".tsv" else ","
        with self._open() as stream:
            lines = LineReader(stream, self.name, encoding=self.encoding, keep_ends=True,
                               max_bytes=4 * CSV_FIELD_LIMIT)
            for number, row in strict_csv_rows(lines, self.name, delimiter=delimiter):
                self._progress(lines)
                yield self.record(row, number)

    def _parquet(self) -> Iterator[TextRecord]:
        assert self.path is not None  # refused in __init__
        pf = open_parquet(self.path)
        total = max(pf.metadata.num_rows, 1)
        columns = [self.field, *([self.id_field] if self.id_field else []), *self.keep]
        for number, row in parquet_rows(pf, self.name, list(dict.fromkeys(columns))):
            yield self.record(row, number)
            self._done = number / total

    # ------------------------------------------------------------------ records
    def record(self, row: dict[str, Any], line: int) -> TextRecord:
        """Check one parsed row: its text, its id (when asked for) and the kept fields."""
        if self.field not in row:
            fields = ", ".join(map(str, row)) or "none"
            raise InputError(f"no field {self.field!r} (fields: {fields}; choose one with --field)",
                             path=self.name, line=line)
        text = row[self.field]
        if not isinstance(text, str):
            kind = "null" if text is None else type(text).__name__
            raise InputError(f"field {self.field!r} is {kind}, expected a string", path=self.name, line=line)
        truncated = self.max_chars is not None and len(text) > self.max_chars
        if truncated:
            text = text[: self.max_chars]
        doc_id = record_id(row, self.id_field, self.name, line) if self.id_field else None
        missing = [k for k in self.keep if k not in row]
        if missing:
            raise InputError(f"no field {missing[0]!r} to keep", path=self.name, line=line)
        return TextRecord(line, text, doc_id, {k: row[k] for k in self.keep}, truncated)


def json_objects(
    lines: Iterable[Line], name: str, on_line: Callable[[], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank JSON line; anything else is an InputError naming file and line.
    ``on_line`` runs before each line (progress)."""
    for line in lines:
        if on_line is not None:
            on_line()
        if not line.text.strip():
            continue
        try:
            record = json.loads(line.text)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=name, line=line.number) from None
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", path=name, line=line.number)
        yield line.number, record


def record_id(row: dict[str, Any], id_field: str, name: str, line: int) -> str:
    """The record's id as a string: present, a string or integer, not blank."""
    if id_field not in row:
        fields = ", ".join(map(str, row)) or "none"
        raise InputError(f"no id field {id_field!r} (fields: {fields}; choose one with --id-field)", path=name,
                         line=line)
    raw = row[id_field]
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        kind = "null" if raw is None else type(raw).__name__
        raise InputError(f"id field {id_field!r} is {kind}, expected a string or integer", path=name, line=line)
    doc_id = str(raw)
    if not doc_id.strip():
        raise InputError(f"empty id in field {id_field!r}", path=name, line=line)
    return doc_id


def strict_csv_rows(lines: LineReader, name: str, *, delimiter: str = ",",
                    field_limit: int = CSV_FIELD_LIMIT) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line of the row, header -> value) of a CSV file with a header row, strictly: a quote left open
    (which would swallow the rest of the file into one field), a field over ``field_limit`` characters, stray
    quotes and rows with more or fewer values than the header are errors naming the row's first line."""
    previous = csv.field_size_limit(field_limit)  # process-wide; restored below
    try:
        reader = csv.reader((line.text for line in lines), delimiter=delimiter, strict=True)
        header: list[str] | None = None
        start = 1
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise InputError(_csv_problem(str(exc), field_limit), path=name, line=start) from None
            if not values:
                continue  # a blank line
            if header is None:
                header = [h.strip() for h in values]
                if len(set(header)) != len(header):
                    dup = next(h for h in header if header.count(h) > 1)
                    raise InputError(f"header repeats the column {dup!r}", path=name, line=start)
                continue
            if len(values) != len(header):
                more = "more" if len(values) > len(header) else "fewer"
                raise InputError(f"{more} values than header columns ({len(values)}, not {len(header)}; a stray "
                                 "delimiter or quote?)", path=name, line=start)
            yield start, dict(zip(header, values, strict=True))
    finally:
        csv.field_size_limit(previous)


def _csv_problem(message: str, field_limit: int) -> str:
    if "unexpected end of data" in message:
        return "a quoted field starting in this row is never closed (it runs to the end of the file)"
    if "field larger than field limit" in message:
        return (f"a field longer than {field_limit} characters starts in this row (an unclosed quote "
                "swallowing the following rows?)")
    return f"bad CSV ({message})"


def open_parquet(path: Path, extra: str = "index") -> Any:
    """A ``pyarrow.parquet.ParquetFile``, or an error naming the file when pyarrow cannot read it."""
    from m3e.extras import require

    pq = require("pyarrow.parquet", purpose="reading .parquet", extra=extra, package="pyarrow")
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
        raise InputError(f"not a readable parquet file ({_first_line(exc)})", path=str(path)) from None


def parquet_rows(pf: Any, name: str, columns: Sequence[str] | None = None,
                 batch_size: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, column -> value) of an open parquet file (:func:`open_parquet`), a batch at a
    time; a missing column and a broken page or row group are errors naming the file (and the rows)."""
    names = pf.schema_arrow.names
    if columns is not None:
        for column in columns:
            if column not in names:
                raise InputError(f"no column {column!r} (columns: {', '.join(names)})", path=name)
    row = 0
    batches = pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns is not None else None)
    while True:
        try:
            batch = next(batches)
            rows = batch.to_pylist()
        except StopIteration:
            break
        except Exception as exc:  # a corrupt page or row group
            raise InputError(f"unreadable data after row {row} ({_first_line(exc)})", path=name) from None
        for values in rows:
            row += 1
            yield row, values


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_texts(path: str | None, field: str = "text", fmt: str | None = None, *, encoding: str = "utf-8",
               blank: str = "skip") -> list[str]:
    """All texts of a file (or stdin for ``None`` / ``-``), for commands that need them at once (a few
    hundred texts to compare, mine or rerank). Blank .txt lines are skipped unless ``blank="keep"``."""
    reader = RecordReader(path, fmt=fmt, field=field, encoding=encoding, max_chars=None, blank=blank)
    return [record.text for record in reader]
