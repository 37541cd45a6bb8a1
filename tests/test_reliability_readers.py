"""Property-based fuzzing of every reader: whatever the bytes, a reader yields records or raises one InputError
/ M3EError naming the file (never another exception, never a merged row); what a correct writer wrote comes
back exactly, row for row."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3e.errors import InputError, M3EError
from m3e.textio import LineReader, RecordReader

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Texts with the characters that break readers: quotes, delimiters, line ends, BOMs, CJK, surrogate-free unicode.
TEXT = st.text(alphabet=st.sampled_from(list('ab ,;"\'\t\r\n\\{}[]:\ufeff保险理赔é😀\x00')) | st.characters(
    blacklist_categories=("Cs",)), max_size=40)
RAW = st.binary(max_size=300) | st.lists(st.sampled_from(
    [b'"', b",", b"\n", b"\r\n", b"\t", b"{", b"}", b'"text"', b":", b"id", b"\xff", b"\xe4\xbd", b"\xa0", b"a",
     b"\xef\xbb\xbf", b"null", b"1"]), max_size=60).map(b"".join)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=RAW, fmt=st.sampled_from(["in.txt", "in.jsonl", "in.csv", "in.tsv"]))
def test_any_bytes_give_records_or_one_input_error(tmp_path_factory, data, fmt):
    path = _write(tmp_path_factory.mktemp("f"), fmt, data)
    try:
        records = list(RecordReader(path, id_field="id" if "csv" in fmt else None, max_chars=64))
    except InputError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc).strip()
        return
    assert records
    for r in records:
        assert isinstance(r.text, str) and len(r.text) <= 64
    if fmt == "in.txt":  # every line is a row, blank ones included
        assert len(records) == data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


@FUZZ
@given(rows=st.lists(st.tuples(st.integers(0, 10**6), TEXT), min_size=1, max_size=20),
       delimiter=st.sampled_from([",", "\t"]))
def test_csv_written_by_the_csv_module_reads_back_row_for_row(tmp_path_factory, rows, delimiter):
    # A lone "\r" is a line end to csv readers in either position, so texts are compared after newline=""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["id", "text"])
    for doc_id, text in rows:
        writer.writerow([doc_id, text])
    path = _write(tmp_path_factory.mktemp("c"), "in.tsv" if delimiter == "\t" else "in.csv",
                  buf.getvalue().encode("utf-8"))
    got = list(RecordReader(path, id_field="id", max_chars=None))
    assert [(r.id, r.text) for r in got] == [(str(i), t) for i, t in rows]


@FUZZ
@given(before=st.integers(0, 5), after=st.integers(1, 5), text=TEXT)
def test_an_unclosed_quote_is_an_error_at_the_row_where_it_starts(tmp_path_factory, before, after, text):
    lines = ["id,text", *[f"{i},row {i}" for i in range(before)], f'{before},"{text.replace(chr(34), "")}',
             *[f"{before + 1 + i},later {i}" for i in range(after)]]
    path = _write(tmp_path_factory.mktemp("q"), "in.csv", ("\n".join(lines) + "\n").encode("utf-8"))
    with pytest.raises(InputError) as info:
        list(RecordReader(path))
    # the row starts on line before + 2 (the header is line 1), whatever the swallowed text held
    assert f"in.csv:{before + 2}: a quoted field starting in this row is never closed" in str(info.value)


@FUZZ
@given(texts=st.lists(TEXT, min_size=1, max_size=15))
def test_jsonl_reads_back_and_txt_keeps_every_line(tmp_path_factory, texts):
    tmp = tmp_path_factory.mktemp("j")
    path = _write(tmp, "in.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts).encode("utf-8"))
    assert [r.text for r in RecordReader(path, max_chars=None)] == texts
    one_line = [t.replace("\r", " ").replace("\n", " ").lstrip("\ufeff") for t in texts]
    path = _write(tmp, "in.txt", "".join(t + "\n" for t in one_line).encode("utf-8"))
    assert [r.text for r in RecordReader(path, max_chars=None)] == one_line


@FUZZ
@given(prefix=st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), bad=st.sampled_from(
    [b"\xff", b"\xc3(", b"\xe4\xbd", b"\xed\xa0\x80"]), line=st.integers(0, 4))
def test_invalid_utf8_names_its_line_and_byte_offset(tmp_path_factory, prefix, bad, line):
    ok = "保险\n".encode() * line
    try:
        prefix.decode("utf-8")
    except UnicodeDecodeError:
        prefix = b"x"
    data = ok + prefix + bad + b"\n"
    path = _write(tmp_path_factory.mktemp("u"), "in.txt", data)
    with pytest.raises(InputError, match=rf"in\.txt:{line + 1}: not valid UTF-8 at byte {len(ok) + len(prefix)} "):
        list(RecordReader(path))


@FUZZ
@given(text=TEXT.filter(lambda t: "\n" not in t and "\r" not in t), size=st.integers(1, 50), block=st.integers(1, 7))
def test_long_lines_are_cut_at_max_chars_and_the_next_line_is_intact(text, size, block, monkeypatch):
    import m3e.textio as textio

    monkeypatch.setattr(textio, "_BLOCK", block)  # lines far longer than a block: the rest is read and dropped
    long = (text or "x") * 30
    stream = io.BytesIO(f"{long}\nnext\n".encode())
    lines = list(LineReader(stream, "s", max_chars=size))
    assert lines[0].text == long.lstrip("\ufeff")[:size]
    assert lines[0].truncated == (len(long.lstrip("\ufeff")) > size)
    assert (lines[1].number, lines[1].text, lines[1].truncated) == (2, "next"[:size], size < 4)


@FUZZ
@given(data=RAW)
def test_corpus_and_training_readers_never_raise_anything_else(tmp_path_factory, data):
    from m3e.index.corpus import CorpusReader
    from m3e.training.records import load_file

    tmp = tmp_path_factory.mktemp("r")
    for name in ("c.txt", "c.jsonl", "c.csv"):
        path = _write(tmp, name, data)
        try:
            docs = list(CorpusReader(path))
        except M3EError as exc:
            assert str(path) in str(exc)
        else:
            assert docs and all(d.id and isinstance(d.text, str) for d in docs)
    for name in ("t.jsonl", "t.json", "t.csv"):
        path = _write(tmp, name, data)
        try:
            load_file(path)
        except M3EError as exc:
            assert "\n" not in str(exc).strip()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000), flips=st.lists(st.integers(0, 10_000), max_size=4))
def test_truncated_or_bit_flipped_parquet_is_an_error_or_the_right_rows(tmp_path_factory, cut, flips):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from m3e.index.corpus import CorpusReader
    from m3e.training.records import load_file

    tmp = tmp_path_factory.mktemp("p")
    texts = [f"第{i}条 text {i}" for i in range(200)]
    good = tmp / "good.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(200)], "text": texts, "query": texts, "pos": texts}), good,
                   row_group_size=50)
    data = bytearray(good.read_bytes())
    data = data[: len(data) - cut % len(data)] if cut else data
    for f in flips:
        if data:
            data[f % len(data)] ^= 1 << (f % 8)
    path = _write(tmp, "bad.parquet", bytes(data))
    for read in (lambda: [d.text for d in CorpusReader(path)], lambda: [r.text for r in RecordReader(path)],
                 lambda: [r.text for r in load_file(path).records]):
        try:
            got = read()
        except M3EError as exc:
            assert "bad.parquet" in str(exc)
        else:  # a flip that parquet cannot see (in a value) changes a value, never the number of rows
            assert len(got) == len(texts)


def test_training_files_name_the_line_and_byte_of_a_bad_encoding_and_a_broken_parquet(tmp_path):
    from m3e.training.records import load_file

    bad = _write(tmp_path, "t.jsonl", b'{"text": "a", "text_pos": "b"}\n{"text": "caf\xe9", "text_pos": "b"}\n')
    with pytest.raises(InputError, match=r"t\.jsonl:2: not valid UTF-8 at byte 44 of the file \(training files"):
        load_file(bad)
    broken = _write(tmp_path, "t.parquet", b"PAR1 not really PAR1")
    with pytest.raises(InputError, match=r"t\.parquet: not a readable parquet file"):
        load_file(broken)
    with pytest.raises(InputError, match=r"e\.csv: no records"):
        load_file(_write(tmp_path, "e.csv", b"text,text_pos\n"))
