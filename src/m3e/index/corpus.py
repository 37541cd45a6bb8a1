"""Stream documents (id, text, metadata) from .txt, .jsonl, .csv or .parquet files.

Readers yield one document at a time, so building an index over a corpus of any size
keeps only the current batch in memory. A broken record raises :class:`InputError` naming
the file and line (row number for .parquet). Each reader also reports how far through the
file it is, for the progress line's ETA.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from m3e.errors import InputError, M3EError

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
    ):
        self.path = Path(path)
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
        yield from readers[self.format]()
        self._fraction = 1.0

    # ------------------------------------------------------------------ formats
    def _lines(self, handle: BinaryIO) -> Iterator[tuple[int, str]]:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._error(f"not valid UTF-8 (byte {exc.start})", number) from exc
            if number == 1:
                line = line.removeprefix("\ufeff")
            self._fraction = handle.tell() / self._size
            yield number, line.rstrip("\r\n")

    def _txt(self) -> Iterator[Document]:
        with self.path.open("rb") as handle:
            for number, line in self._lines(handle):
                if line.strip():
                    yield Document(str(number), line, {}, number)

    def _jsonl(self) -> Iterator[Document]:
        with self.path.open("rb") as handle:
            for number, line in self._lines(handle):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"invalid JSON ({exc.msg})", path=str(self.path), line=number) from exc
                if not isinstance(record, dict):
                    raise InputError("expected a JSON object", path=str(self.path), line=number)
                yield self._document(record, number)

    def _csv(self) -> Iterator[Document]:
        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        with self.path.open("rb") as raw:
            import io

            # The byte handle gives progress; the text wrapper does the decoding.
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            reader = csv.DictReader(text, delimiter=delimiter)
            try:
                for record in reader:
                    self._fraction = raw.tell() / self._size
                    if None in record:
                        raise self._error("more values than header columns", reader.line_num)
                    yield self._document(record, reader.line_num)
            except UnicodeDecodeError as exc:
                raise InputError(f"not valid UTF-8 (byte {exc.start})", path=str(self.path),
                                 line=reader.line_num + 1) from exc
            except csv.Error as exc:
                raise InputError(f"bad CSV ({exc})", path=str(self.path), line=reader.line_num) from exc

    def _parquet(self) -> Iterator[Document]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise M3EError(f"{self.path}: not a readable parquet file ({exc})") from exc
        total = max(pf.metadata.num_rows, 1)
        names = pf.schema_arrow.names
        for name in (self.id_field, self.text_field):
            if name not in names:
                raise InputError(f"no column {name!r} (columns: {', '.join(names)})", path=str(self.path))
        row = 0
        for batch in pf.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
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
        if self.id_field not in record:
            raise self._error(f"no id field {self.id_field!r} (fields: {', '.join(map(str, record))}; "
                              "use --id-field)", line)
        raw_id = record[self.id_field]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            kind = type(raw_id).__name__
            raise self._error(f"id field {self.id_field!r} is {kind}, expected a string or integer", line)
        doc_id = str(raw_id)
        if not doc_id.strip():
            raise self._error(f"empty id in field {self.id_field!r}", line)
        return doc_id

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
