"""Training records: detection of pair / triplet / scored-pair / distill records from their columns.

A source is a .jsonl/.json/.csv/.tsv/.parquet file, a directory of them (one dataset per file, the M3E recipe),
a Hugging Face ``datasets`` object or a list of dicts. Files are read by m3e.textio's strict readers, in UTF-8 or
the ``encoding`` given (``--encoding``, any ASCII-compatible codec such as gb18030): text that does not decode
(with its byte offset), invalid JSON, a CSV quote left open, a broken parquet file and a record
with a missing or empty field raise :class:`m3e.errors.InputError` naming the file and line (or row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from m3e.errors import InputError, M3EError
from m3e.textio import (
    CSV_FIELD_LIMIT,
    MAX_JSON_LINE_BYTES,
    LineReader,
    check_encoding,
    json_objects,
    open_parquet,
    parquet_rows,
    strict_csv_rows,
)

RECORD_TYPES = ("pair", "triplet", "scored", "distill")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")

# Column aliases, most specific first. Each entry: (query column, positive column, negative column or None).
_CONTRASTIVE_ALIASES: tuple[tuple[str, str, str | None], ...] = (
    ("text", "text_pos", "text_neg"),
    ("query", "pos", "neg"),
    ("query", "positive", "negative"),
    ("anchor", "positive", "negative"),
    ("question", "answer", "negative"),
    ("query", "document", "negative"),
    ("sentence1", "sentence2", None),
    ("sentence", "positive", "negative"),
)
_SCORED_ALIASES: tuple[tuple[str, str, str], ...] = (
    ("sentence1", "sentence2", "score"),
    ("sentence1", "sentence2", "label"),
    ("sentence1", "sentence2", "similarity"),
    ("text1", "text2", "score"),
    ("text1", "text2", "label"),
    ("text_a", "text_b", "label"),
    ("text", "text_pos", "label"),
)
_DISTILL_ALIASES: tuple[tuple[str, str], ...] = (
    ("text", "embedding"),
    ("text", "teacher_embedding"),
    ("sentence", "embedding"),
)


@dataclass(frozen=True)
class Record:
    """One training example. ``pos``/``neg`` are lists (BGE style); pairs have ``neg == ()``.

    Scored pairs use ``text`` + ``pos[0]`` + ``score``; distill records use ``text`` + ``vector``.
    """

    text: str
    pos: tuple[str, ...] = ()
    neg: tuple[str, ...] = ()
    score: float | None = None
    vector: tuple[float, ...] | None = None

    def texts(self) -> tuple[str, ...]:
        return (self.text, *self.pos, *self.neg)


@dataclass
class TrainingDataset:
    """One dataset: a name (file stem), its record type and records. Each batch is drawn from one dataset."""

    name: str
    type: str
    records: list[Record]
    source: str = ""
    weight: float = 1.0
    columns: tuple[str, ...] = field(default_factory=tuple)
    side: str | None = None  # distill: "query" | "document", the prompt the teacher's vectors were made with
    encoding: str = "utf-8"  # how its file was decoded: a record's line is found again with it

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class Schema:
    type: str
    query: str
    pos: str
    neg: str | None = None  # negative column (contrastive) or score column (scored) or vector column (distill)


def detect_schema(columns: Iterable[str], forced: str | None = None) -> Schema:
    """Pick the record type and columns: scored pair, then triplet, then pair (uniem's order), then distill.

    ``forced`` restricts the choice to one type (e.g. pairs from triplet data: the negatives are ignored).
    """
    cols = set(columns)
    if forced is not None and forced not in RECORD_TYPES:
        raise M3EError(f"record type must be one of {', '.join(RECORD_TYPES)}, not {forced!r}")
    if forced in (None, "scored"):
        for q, p, s in _SCORED_ALIASES:
            if {q, p, s} <= cols:
                return Schema("scored", q, p, s)
    if forced in (None, "triplet", "pair"):
        for q, p, n in _CONTRASTIVE_ALIASES:
            if {q, p} <= cols:
                if n is not None and n in cols and forced != "pair":
                    return Schema("triplet", q, p, n)
                if forced == "triplet":
                    continue
                return Schema("pair", q, p, None)
    if forced in (None, "distill"):
        for q, v in _DISTILL_ALIASES:
            if {q, v} <= cols:
                return Schema("distill", q, q, v)
    want = {
        None: "text/text_pos[/text_neg], query/pos[/neg], anchor/positive[/negative], question/answer, "
        "sentence1/sentence2[/label|score] or text/embedding",
        "pair": "text/text_pos, query/pos, anchor/positive, question/answer or sentence1/sentence2",
        "triplet": "text/text_pos/text_neg, query/pos/neg or anchor/positive/negative",
        "scored": "sentence1/sentence2/score|label (or text1/text2/score)",
        "distill": "text/embedding",
    }[forced]
    raise M3EError(f"cannot tell the record type from columns {sorted(cols)}; expected {want}")


def _as_texts(value: Any, column: str, where: tuple[str, int | None]) -> tuple[str, ...]:
    items = list(value) if isinstance(value, list | tuple) else [value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays from parquet
        items = list(value.tolist())
    out: list[str] = []
    for item in items:
        if item is None or (isinstance(item, float) and math.isnan(item)):
            continue
        if not isinstance(item, str):
            raise InputError(f"field {column!r} must be text, got {type(item).__name__}", path=where[0], line=where[1])
        if item.strip():
            out.append(item)
    if not out:
        raise InputError(f"field {column!r} is missing or empty", path=where[0], line=where[1])
    return tuple(out)


def make_record(row: Mapping[str, Any], schema: Schema, where: tuple[str, int | None]) -> Record:
    """Validate one row against ``schema``; raise InputError with the file and line on a bad field."""
    for col in {schema.query, schema.pos} | ({schema.neg} if schema.neg else set()):
        if col not in row:
            raise InputError(f"missing field {col!r}", path=where[0], line=where[1])
    text = _as_texts(row[schema.query], schema.query, where)
    if len(text) != 1:
        raise InputError(f"field {schema.query!r} must be one text, got a list", path=where[0], line=where[1])
    if schema.type == "distill":
        assert schema.neg is not None  # a distill schema names its vector column
        vec = row[schema.neg]
        try:
            vector = tuple(float(x) for x in (vec.tolist() if hasattr(vec, "tolist") else vec))
        except (TypeError, ValueError):
            raise InputError(f"field {schema.neg!r} must be a list of numbers", path=where[0], line=where[1]) from None
        if not vector:
            raise InputError(f"field {schema.neg!r} is empty", path=where[0], line=where[1])
        return Record(text[0], vector=vector)
    pos = _as_texts(row[schema.pos], schema.pos, where)
    if schema.type == "scored":
        assert schema.neg is not None  # a scored schema names its score column
        raw = row[schema.neg]
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise InputError(f"field {schema.neg!r} must be a number, got {raw!r}", path=where[0], line=where[1]) from None
        if math.isnan(score):
            raise InputError(f"field {schema.neg!r} is missing or empty", path=where[0], line=where[1])
        if len(pos) != 1:
            raise InputError(f"field {schema.pos!r} must be one text", path=where[0], line=where[1])
        return Record(text[0], pos, score=score)
    neg = _as_texts(row[schema.neg], schema.neg, where) if schema.type == "triplet" and schema.neg else ()
    return Record(text[0], pos, neg)


# ---------------------------------------------------------------------------------------------- readers
def _hint(encoding: str) -> str:
    """What to do about a byte that does not decode."""
    if check_encoding(encoding) in ("utf-8", "utf-8-sig"):
        return _UTF8_HINT
    return f"training files are read as {encoding} here: choose the file's encoding with --encoding"


_UTF8_HINT = ("training files are read as UTF-8: choose another with --encoding (e.g. --encoding gb18030) or "
              "convert it, e.g. iconv -f GB18030 -t UTF-8")


def _iter_jsonl(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    with _open(path) as fh:
        lines = LineReader(fh, str(path), encoding=encoding, max_bytes=MAX_JSON_LINE_BYTES, hint=_hint(encoding))
        yield from json_objects(lines, str(path))


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise M3EError(f"cannot read {path}: {exc.strerror or exc}") from None


def _iter_json(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    with _open(path) as fh:
        head = fh.read(4096)
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):  # JSON lines with a .json name
        yield from _iter_jsonl(path, encoding)
        return
    raw = path.read_bytes()  # one JSON array is parsed whole
    codec = check_encoding(encoding)
    try:
        text = raw.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        label = "UTF-8" if codec in ("utf-8", "utf-8-sig") else encoding
        raise InputError(f"not valid {label} at byte {exc.start} of the file ({_hint(encoding)})", path=str(path),
                         line=line) from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", path=str(path), line=exc.lineno) from None
    if not isinstance(rows, list):
        raise InputError("expected a JSON array of objects", path=str(path))
    for i, obj in enumerate(rows, 1):
        if not isinstance(obj, dict):
            raise InputError(f"item {i} must be a JSON object", path=str(path))
        yield i, obj


def _iter_csv(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with _open(path) as fh:
        lines = LineReader(fh, str(path), encoding=encoding, keep_ends=True, max_bytes=4 * CSV_FIELD_LIMIT,
                           hint=_hint(encoding))
        for number, row in strict_csv_rows(lines, str(path), delimiter=delimiter):
            # number: the line where the row starts (the header is line 1)
            yield number, {k: (v if v != "" else None) for k, v in row.items()}


def _iter_parquet(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    # parquet stores its strings as UTF-8: there is no encoding to choose
    yield from parquet_rows(open_parquet(path, extra="train"), str(path))


def iter_rows(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row, record) of one training file; text files are decoded with ``encoding``."""
    suffix = path.suffix.lower()
    check_encoding(encoding)  # an unknown codec is named before the file is opened
    if suffix == ".jsonl":
        return _iter_jsonl(path, encoding)
    if suffix == ".json":
        return _iter_json(path, encoding)
    if suffix in (".csv", ".tsv"):
        return _iter_csv(path, encoding)
    if suffix == ".parquet":
        return _iter_parquet(path, encoding)
    raise M3EError(f"{path}: unsupported file type {suffix!r} (use {', '.join(FILE_SUFFIXES)})")


def _records(rows: Iterable[tuple[int | None, Mapping[str, Any]]], source: str,
             forced: str | None) -> Iterator[tuple[Schema, int | None, Record]]:
    """(schema, line, record) of parsed rows, the schema detected from the first row."""
    schema: Schema | None = None
    for lineno, row in rows:
        if schema is None:
            try:
                schema = detect_schema(row.keys(), forced)
            except M3EError as exc:
                raise InputError(str(exc), path=source, line=lineno) from None
        yield schema, lineno, make_record(row, schema, (source, lineno))
    if schema is None:
        raise InputError("no records", path=source)


def _load_rows(rows: Iterable[tuple[int | None, Mapping[str, Any]]], source: str, name: str, forced: str | None) -> TrainingDataset:
    found: Schema | None = None
    records: list[Record] = []
    for schema, _line, record in _records(rows, source, forced):
        found = schema
        records.append(record)
    assert found is not None  # _records raises "no records" otherwise
    schema = found
    return TrainingDataset(name, schema.type, records, source=source, columns=(schema.query, schema.pos, schema.neg or ""))


def training_files(source: str | Path) -> list[Path]:
    """The training files a path names: the file itself, or a directory's supported files sorted by name."""
    p = Path(source).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise M3EError(f"{p}: no {', '.join(FILE_SUFFIXES)} files in this directory")
        return files
    if not p.is_file():
        raise M3EError(f"{p}: no such file")
    return [p]


def stream_file(path: Path, record_type: str | None = None, *,
                encoding: str = "utf-8") -> Iterator[tuple[str, int | None, Record]]:
    """(record type, line, record) of one training file, a record at a time: for passes over data that need
    not be held (mining); the file's errors are those :func:`load_file` raises."""
    for schema, line, record in _records(iter_rows(path, encoding), str(path), record_type):
        yield schema.type, line, record


def load_file(path: str | Path, record_type: str | None = None, name: str | None = None, *,
              encoding: str = "utf-8") -> TrainingDataset:
    p = Path(path).expanduser()
    if not p.is_file():
        raise M3EError(f"{p}: no such file")
    ds = _load_rows(iter_rows(p, encoding), str(p), name or p.stem, record_type)
    ds.encoding = encoding
    return ds


def load_source(source: Any, record_type: str | None = None, name: str | None = None, *,
                encoding: str = "utf-8") -> list[TrainingDataset]:
    """One source -> datasets. A directory gives one dataset per supported file (sorted by name); text files
    are decoded with ``encoding``."""
    if isinstance(source, TrainingDataset):
        return [source]
    if isinstance(source, str | Path):
        p = Path(source).expanduser()
        if p.is_dir():
            return [load_file(f, record_type, encoding=encoding) for f in training_files(p)]
        return [load_file(p, record_type, name, encoding=encoding)]
    # Hugging Face datasets: a DatasetDict gives one dataset per split.
    if isinstance(source, Mapping) and source and all(hasattr(v, "column_names") for v in source.values()):
        out: list[TrainingDataset] = []
        for split, ds in source.items():
            out.extend(load_source(ds, record_type, f"{name or 'dataset'}-{split}"))
        return out
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):
        label = name or getattr(getattr(source, "info", None), "dataset_name", None) or "dataset"
        return [_load_rows(((i, row) for i, row in enumerate(source, 1)), f"<{label}>", label, record_type)]
    if isinstance(source, Sequence) and not isinstance(source, str):
        rows = list(source)
        if rows and isinstance(rows[0], Mapping):
            return [_load_rows(enumerate(rows, 1), f"<{name or 'records'}>", name or "records", record_type)]
        if rows and all(isinstance(r, TrainingDataset) for r in rows):
            return list(rows)
        out = []
        for item in rows:
            out.extend(load_source(item, record_type, encoding=encoding))
        return out
    raise M3EError(f"cannot read training data from a {type(source).__name__}")


def load_datasets(sources: Any, record_type: str | None = None, *, encoding: str = "utf-8") -> list[TrainingDataset]:
    """Many sources (paths, directories, HF datasets, lists of dicts) -> a flat list of datasets, names unique;
    text files are decoded with ``encoding``."""
    single = isinstance(sources, str | Path | TrainingDataset) or hasattr(sources, "column_names")
    if single or (isinstance(sources, list) and sources and isinstance(sources[0], Mapping)):
        sources = [sources]
    datasets: list[TrainingDataset] = []
    for src in sources:
        datasets.extend(load_source(src, record_type, encoding=encoding))
    if not datasets:
        raise M3EError("no training data given")
    return unique_names(datasets)


def unique_names(datasets: list[TrainingDataset]) -> list[TrainingDataset]:
    """Suffix repeated dataset names (-1, -2, ...): batches and loss curves are keyed by name."""
    seen: dict[str, int] = {}
    for ds in datasets:
        if ds.name in seen:
            seen[ds.name] += 1
            ds.name = f"{ds.name}-{seen[ds.name]}"
        else:
            seen[ds.name] = 0
    return datasets


def attach_teacher_vectors(ds: TrainingDataset, vectors: Any, side: str | None = None) -> TrainingDataset:
    """Turn a dataset of texts into a distill dataset with cached teacher vectors (one row per record);
    ``side`` (query | document) is the prompt the teacher used, and the student gets the same one."""
    import numpy as np

    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(ds.records):
        raise M3EError(f"{ds.source}: {len(ds.records)} records but teacher vectors have shape {tuple(vecs.shape)}")
    recs = [Record(r.text, vector=tuple(float(x) for x in v)) for r, v in zip(ds.records, vecs, strict=True)]
    if side not in (None, "query", "document"):
        raise M3EError(f"{ds.source}: side must be query or document, not {side!r}")
    return TrainingDataset(ds.name, "distill", recs, source=ds.source, weight=ds.weight, side=side,
                           encoding=ds.encoding)
