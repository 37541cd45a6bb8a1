"""`m3e encode`: texts -> vectors, row i of the output for record i of the input.

Inputs: arguments, stdin, .txt (one text per line; a blank line is an empty text), .jsonl, .csv/.tsv (a
header row; ``--field``, ``--id-field``) or .parquet. Outputs: .npy (float32 [n, dim]), .jsonl (id or text,
the ``--keep`` fields, embedding) or .parquet (the same columns, ``embedding`` as list<float32>), or JSON
lines on stdout. Records are read, encoded and written a chunk at a time, so memory does not grow with the
input; a file output is written under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from m3e.cli._common import (
    add_io_options,
    add_model_options,
    load_model_from_args,
    load_text_model,
    write_fault,
)
from m3e.cli.ray_commands import add_ray_options, run_encode_ray
from m3e.cli.remote import add_server_options, remote_model
from m3e.errors import InputError, M3EError
from m3e.textio import MAX_RECORD_CHARS, RecordReader, TextRecord

if TYPE_CHECKING:
    import numpy as np

    from m3e.model import EmbeddingModel

OUTPUTS = (".npy", ".jsonl", ".parquet")
CHUNK_RECORDS = 1024  # records encoded and written at a time ...
CHUNK_CHARS = 4 << 20  # ... or fewer, when their texts add up to this many characters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="texts to embed (default: read --input, or stdin)")
    parser.add_argument("-i", "--input", default=None,
                        help="a .txt (one text per line), .jsonl, .csv/.tsv or .parquet file; - for stdin")
    parser.add_argument("-o", "--output", default=None,
                        help="output .npy, .jsonl or .parquet file (default: JSON lines on stdout)")
    add_io_options(parser, text_field="text")
    parser.add_argument("--keep", default=None,
                        help="comma-separated input fields to copy into a .jsonl / .parquet output")
    parser.add_argument("--max-chars", type=int, default=MAX_RECORD_CHARS,
                        help=f"characters of a text read at most (default {MAX_RECORD_CHARS}; the model itself "
                             "reads about max_length x 16 in truncate mode)")
    add_model_options(parser)
    add_server_options(parser)
    add_ray_options(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="texts per batch (default: 32; 16 for int8)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="cap padded tokens per batch")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--query", action="store_true", help="texts are search queries: apply the model's query prompt")
    side.add_argument("--document", action="store_true", help="texts are documents: apply the model's document prompt")
    side.add_argument("--prompt", default=None, help="a literal prefix to put before every text")
    parser.add_argument("--no-normalize", action="store_true", help="keep raw pooled vectors (not unit length)")
    parser.add_argument("--long-text", choices=["truncate", "windows"], default="truncate",
                        help="texts longer than the maximum: truncate, or average windows weighted by tokens")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show progress (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    progress.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary line")


def run(args: argparse.Namespace) -> int:
    if args.ray is not None:  # --input is a glob of files, --output a directory of parquet parts
        return run_encode_ray(args)
    if args.texts and args.input:
        raise M3EError("give texts as arguments or --input, not both")
    if args.batch_size is not None and args.batch_size < 1:
        raise M3EError("--batch-size must be >= 1")
    if args.max_chars < 1:
        raise M3EError("--max-chars must be >= 1")
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in OUTPUTS:
        raise M3EError(f"--output must end in {', '.join(OUTPUTS)}, not {output.suffix or 'nothing'}")
    keep = [f.strip() for f in (args.keep or "").split(",") if f.strip()]
    reader: RecordReader | None = None
    if args.texts:
        records: Iterable[TextRecord] = [TextRecord(i, t) for i, t in enumerate(args.texts, 1)]
    else:
        reader = RecordReader(args.input, fmt=args.format, field=args.field, id_field=args.id_field, keep=keep,
                              encoding=args.encoding, max_chars=args.max_chars)
        records = reader
    if args.server:
        model = remote_model(args)
    elif args.texts and args.long_text == "truncate":  # a few texts: a recorded compiled model starts fastest
        model = load_text_model(args)
    else:
        model = load_model_from_args(args)
    show = False if args.quiet else args.progress
    progress = EncodeProgress(show, reader)
    if output is None:
        written = _encode_to(JsonlWriter(sys.stdout, id_field=args.id_field), records, model, args, progress)
    else:
        written = _encode_to_file(output, records, model, args, progress, reader)
    if not args.quiet and output is not None:
        cut = ""
        if reader is not None and reader.truncated:
            cut = f"; {reader.truncated} texts longer than {args.max_chars} characters were read up to there"
        print(f"wrote {written} x {model.dim} vectors to {output}{cut}", file=sys.stderr)
    return 0


def _encode_to_file(output: Path, records: Iterable[TextRecord], model: EmbeddingModel,
                    args: argparse.Namespace, progress: EncodeProgress, reader: RecordReader | None) -> int:
    from m3e.atomic import atomic_output

    existed = output.exists()
    try:
        with atomic_output(output) as tmp:
            writer = make_writer(output.suffix.lower(), tmp, dim=model.dim, id_field=args.id_field)
            try:
                return _encode_to(writer, records, model, args, progress)
            finally:
                writer.close()
    except InputError as exc:
        exc.args = (f"{exc}; nothing written to {output}",)
        raise
    except OSError as exc:
        raise write_fault(exc, output, existed) from exc


def _encode_to(writer: Writer, records: Iterable[TextRecord], model: EmbeddingModel, args: argparse.Namespace,
               progress: EncodeProgress) -> int:
    kwargs: dict[str, Any] = {
        "batch_size": args.batch_size,
        "normalize": not args.no_normalize,
        "show_progress": False,
        "long_text": args.long_text,
        "max_batch_tokens": args.max_batch_tokens,
    }
    written = 0
    try:
        for chunk in chunked(records):
            texts = [r.text for r in chunk]
            if args.query:
                vectors = model.encode_queries(texts, **kwargs)
            elif args.document:
                vectors = model.encode_documents(texts, **kwargs)
            else:
                vectors = model.encode(texts, prompt=args.prompt, **kwargs)
            writer.write(chunk, vectors)
            written += len(chunk)
            progress.update(written)
        writer.finish(written)
    finally:
        progress.close()
    return written


def chunked(records: Iterable[TextRecord]) -> Iterator[list[TextRecord]]:
    """Records in lists of at most CHUNK_RECORDS records or CHUNK_CHARS characters (at least one record)."""
    chunk: list[TextRecord] = []
    chars = 0
    for record in records:
        chunk.append(record)
        chars += len(record.text)
        if len(chunk) >= CHUNK_RECORDS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------- progress
class EncodeProgress:
    """Records encoded, rate, share of the input read and ETA on one stderr line, at most twice a second;
    on only when asked or when stderr is a terminal."""

    def __init__(self, show: bool | None, reader: RecordReader | None, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if show is None else show
        self.reader = reader
        self.start = time.monotonic()
        self.last = 0.0
        self.records = 0

    def update(self, records: int) -> None:
        self.records = records
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.5:
            self.last = now
            self.stream.write("\r" + self.line(now) + " ")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.records / elapsed if elapsed > 0 else 0.0
        text = f"encoded {self.records} texts, {rate:.1f} texts/s, elapsed {_clock(elapsed)}"
        fraction = self.reader.fraction if self.reader is not None else 0.0
        if fraction > 0:
            text += f", {100 * fraction:.1f}% read, ETA {_clock(elapsed * (1 - fraction) / fraction)}"
        return text

    def close(self) -> None:
        if self.enabled and self.records:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# ---------------------------------------------------------------------------------------------- writers
class Writer:
    """Rows out, in input order: ``write`` a chunk of records with their vectors, ``finish`` after the last
    (the total number of rows), ``close`` always."""

    def write(self, records: list[TextRecord], vectors: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass


def _row_head(record: TextRecord, id_field: str | None) -> dict[str, Any]:
    """What identifies a row: its id with --id-field, else its text (as read)."""
    head: dict[str, Any] = {"id": record.id} if id_field else {"text": record.text}
    head.update(record.fields)
    return head


class JsonlWriter(Writer):
    def __init__(self, stream: IO[str], *, id_field: str | None) -> None:
        self.stream = stream
        self.id_field = id_field

    def write(self, records: list[TextRecord], vectors: np.ndarray) -> None:
        for record, vec in zip(records, vectors, strict=True):
            row = _row_head(record, self.id_field)
            row["embedding"] = [round(float(x), 7) for x in vec]
            self.stream.write(json.dumps(row, ensure_ascii=False, default=str))
            self.stream.write("\n")


class JsonlFileWriter(JsonlWriter):
    def __init__(self, path: Path, *, id_field: str | None) -> None:
        super().__init__(path.open("w", encoding="utf-8"), id_field=id_field)

    def close(self) -> None:
        self.stream.close()


NPY_HEADER_BYTES = 128  # room for any shape; the header is written last, when the row count is known


def npy_header(rows: int, dim: int) -> bytes:
    """A .npy (version 1.0) header for float32 [rows, dim], padded to NPY_HEADER_BYTES."""
    body = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    length = NPY_HEADER_BYTES - 10
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (body.ljust(length - 1) + "\n").encode("latin1")


class NpyWriter(Writer):
    """Float32 rows appended after a reserved header, which gets the real shape at the end: the output of an
    input of unknown length is never held in memory."""

    def __init__(self, path: Path, *, dim: int) -> None:
        self.handle = path.open("wb")
        self.dim = dim
        self.handle.write(npy_header(0, dim))

    def write(self, records: list[TextRecord], vectors: np.ndarray) -> None:
        import numpy as np

        self.handle.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())

    def finish(self, rows: int) -> None:
        self.handle.seek(0)
        self.handle.write(npy_header(rows, self.dim))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


class ParquetWriter(Writer):
    """id or text, the kept fields, and ``embedding`` as an Arrow list<float32> column (read by pandas,
    DuckDB, LanceDB); one row group per chunk."""

    def __init__(self, path: Path, *, dim: int, id_field: str | None) -> None:
        from m3e.extras import require

        self.pa = require("pyarrow", purpose="writing .parquet", extra="index")
        self.pq = require("pyarrow.parquet", purpose="writing .parquet", extra="index", package="pyarrow")
        self.path = path
        self.id_field = id_field
        self.dim = dim
        self.writer: Any = None
        self.schema: Any = None

    def write(self, records: list[TextRecord], vectors: np.ndarray) -> None:
        import numpy as np

        pa = self.pa
        heads = [_row_head(r, self.id_field) for r in records]
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
        offsets = pa.array(np.arange(0, (len(records) + 1) * self.dim, self.dim, dtype=np.int32))
        columns = {name: [h[name] for h in heads] for name in heads[0]}
        try:
            arrays = {name: pa.array(values) for name, values in columns.items()}
            table = pa.table({**arrays, "embedding": pa.ListArray.from_arrays(offsets, flat)})
            if self.writer is None:
                self.writer = self.pq.ParquetWriter(self.path, table.schema)
                self.schema = table.schema
            elif table.schema != self.schema:
                table = table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"the kept fields of the records from this one on do not fit one parquet column "
                             f"each ({exc})", path="input", line=records[0].line) from None
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def make_writer(suffix: str, path: Path, *, dim: int, id_field: str | None) -> Writer:
    if suffix == ".npy":
        return NpyWriter(path, dim=dim)
    if suffix == ".parquet":
        return ParquetWriter(path, dim=dim, id_field=id_field)
    return JsonlFileWriter(path, id_field=id_field)
