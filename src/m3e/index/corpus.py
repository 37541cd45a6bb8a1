"""Stream documents (id, text, metadata) from .txt, .jsonl, .csv or .parquet files.

Readers yield one document at a time, so building an index over a corpus of any size
keeps only the current batch in memory. They are m3e.textio's strict readers: a broken record
(bad encoding with its byte offset, invalid JSON, a CSV quote left open, a missing id) raises
:class:`InputError` naming the file and line (row number for .parquet), and a corpus without
records is an error. Each reader also reports how far through the file it is, for the ETA.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from m3e.errors import InputError, M3EError
from m3e.textio import (
    CSV_FIELD_LIMIT,
    MAX_JSON_LINE_BYTES,
    LineReader,
    check_encoding,
    json_objects,
    open_parquet,
    parquet_rows,
    record_id,
    strict_csv_rows,
)

FORMATS = ("txt", "jsonl", "csv", "parquet")


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0


def corpus_format(path: Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise M3EError(f"unknown corpus format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    kinds = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
             ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in kinds:
        raise M3EError(f"{path}: cannot tell the corpus format from {suffix or 'no suffix'!r}; use --format")
    return kinds[suffix]


class CorpusReader:
    """Iterate over the documents of one corpus file.

    ``id_field`` / ``text_field`` name the columns of .jsonl, .csv and .parquet records;
    ``metadata_fields`` keeps only those other fields (``None``: all other fields). A .txt
    corpus has one document per non-blank line and ids ``<line number>``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        id_field: str = "id",
        text_field: str = "text",
        metadata_fields: Sequence[str] | None = None,
        fmt: str | None = None,
        encoding: str = "utf-8",
    ):
        self.path = Path(path)
        self.encoding = check_encoding(encoding)
        if self.path.is_dir():
            raise M3EError(f"{self.path} is a directory, expected a corpus file")
        if not self.path.exists():
            raise M3EError(f"no such corpus file: {self.path}")
        self.format = corpus_format(self.path, fmt)
        self.id_field = id_field
        self.text_field = text_field
        self.metadata_fields = list(metadata_fields) if metadata_fields is not None else None
        self._size = max(self.path.stat().st_size, 1)
        self._fraction = 0.0

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this corpus file for a resumed build."""
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    @property
    def fraction(self) -> float:
        """Share of the file read so far, in [0, 1]."""
        return self._fraction

    def __iter__(self) -> Iterator[Document]:
        readers = {"txt": self._txt, "jsonl": self._jsonl, "csv": self._csv, "parquet": self._parquet}
        count = 0
        for doc in readers[self.format]():
            count += 1
            yield doc
        if count == 0:
            raise InputError("no records", path=str(self.path))
        self._fraction = 1.0

    # ------------------------------------------------------------------ formats
    def _lines(self, handle: BinaryIO, **kw: Any) -> LineReader:
        return LineReader(handle, str(self.path), encoding=self.encoding, **kw)

    def _progress(self, lines: LineReader) -> None:
        self._fraction = min(lines.offset / self._size, 1.0)

    def _txt(self) -> Iterator[Document]:
        with self.path.open("rb") as handle:
            lines = self._lines(handle)
            for line in lines:
                self._progress(lines)
                if line.text.strip():
                    yield Document(str(line.number), line.text, {}, line.number)

    def _jsonl(self) -> Iterator[Document]:
        with self.path.open("rb") as handle:
            lines = self._lines(handle, max_bytes=MAX_JSON_LINE_BYTES)
            for number, record in json_objects(lines, str(self.path), on_line=lambda: self._progress(lines)):
                yield self._document(record, number)

    def _csv(self) -> Iterator[Document]:
        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        with self.path.open("rb") as handle:
            lines = self._lines(handle, keep_ends=True, max_bytes=4 * CSV_FIELD_LIMIT)
            for number, record in strict_csv_rows(lines, str(self.path), delimiter=delimiter):
                self._progress(lines)
                yield self._document(dict(record), number)

    def _parquet(self) -> Iterator[Document]:
        pf = open_parquet(self.path)
        total = max(pf.metadata.num_rows, 1)
        names = pf.schema_arrow.names
        for name in (self.id_field, self.text_field):
            if name not in names:
                raise InputError(f"no column {name!r} (columns: {', '.join(names)})", path=str(self.path))
        for row, record in parquet_rows(pf, str(self.path)):
            self._fraction = row / total
            yield self._document(record, row)

    # ------------------------------------------------------------------ records
    def _error(self, message: str, line: int) -> InputError:
        return InputError(message, path=str(self.path), line=line)

    def _document(self, record: dict[str, Any], line: int) -> Document:
        text = self._text_of(record, line)  # checked first: a record without its text is the likelier mistake
        return Document(self._id_of(record, line), text, self._metadata_of(record, line), line)

    def _text_of(self, record: dict[str, Any], line: int) -> str:
        if self.text_field not in record:
            fields = ", ".join(map(str, record)) or "none"
            raise self._error(f"no field {self.text_field!r} (fields: {fields})", line)
        text = record[self.text_field]
        if not isinstance(text, str):
            raise self._error(f"field {self.text_field!r} is {type(text).__name__}, expected a string", line)
        return text

    def _id_of(self, record: dict[str, Any], line: int) -> str:
        return record_id(record, self.id_field, str(self.path), line)

    def _metadata_of(self, record: dict[str, Any], line: int) -> dict[str, Any]:
        keep = self.metadata_fields
        if keep is not None:
            missing = [k for k in keep if k not in record]
            if missing:
                raise self._error(f"no metadata field {missing[0]!r}", line)
        return {
            k: v for k, v in record.items()
            if k not in (self.id_field, self.text_field) and (keep is None or k in keep)
        }
