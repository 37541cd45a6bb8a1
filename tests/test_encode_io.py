"""`m3e encode` in and out: every input format, every output format, row i = record i, streamed in chunks,
bounded per record, and the error contract (one line, exit 2, nothing written)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from m3e.cli import main

TEXTS = ["今天天气很好", "", "The weather is nice today.", "保险理赔需要哪些材料？", "hello, \"world\"", "笔记本电脑"]


@pytest.fixture(scope="module")
def model(tiny_st_model_dir):
    import m3e

    return m3e.load(str(tiny_st_model_dir))


def _encode(args, tiny_st_model_dir):
    return main(["encode", *map(str, args), "-m", str(tiny_st_model_dir), "-q"])


def test_txt_blank_lines_are_rows_and_npy_is_streamed_in_chunks(tmp_path, tiny_st_model_dir, model, monkeypatch,
                                                                  single_thread):
    import m3e.cli.encode as encode

    monkeypatch.setattr(encode, "CHUNK_RECORDS", 2)  # several chunks: the .npy header is written last
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    assert _encode(["-i", src, "-o", out], tiny_st_model_dir) == 0
    vectors = np.load(out, mmap_mode="r")
    assert vectors.shape == (len(TEXTS), model.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, model.encode(TEXTS), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_csv_ids_and_kept_fields_to_jsonl_and_parquet(tmp_path, tiny_st_model_dir, model, single_thread):
    src = tmp_path / "in.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["doc", "body", "lang"])
        for i, text in enumerate(TEXTS):
            writer.writerow([f"d{i}", text + ("\n第二行" if i == 3 else ""), "zh" if i % 2 else "en"])
    expected = model.encode([t + ("\n第二行" if i == 3 else "") for i, t in enumerate(TEXTS)])

    out = tmp_path / "out.jsonl"
    args = ["-i", src, "--field", "body", "--id-field", "doc", "--keep", "lang"]
    assert _encode([*args, "-o", out], tiny_st_model_dir) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(len(TEXTS))]
    assert [set(r) for r in rows] == [{"id", "lang", "embedding"}] * len(TEXTS)
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    pout = tmp_path / "out.parquet"
    assert _encode([*args, "-o", pout], tiny_st_model_dir) == 0
    assert pq.read_schema(pout).field("embedding").type == pa.list_(pa.float32())
    frame = pd.read_parquet(pout)
    assert list(frame["id"]) == [f"d{i}" for i in range(len(TEXTS))] and list(frame["lang"])[:2] == ["en", "zh"]
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()), expected, atol=1e-6)

    import lancedb

    table = lancedb.connect(tmp_path / "db").create_table("t", data=pq.read_table(pout))
    assert table.count_rows() == len(TEXTS)


def test_parquet_and_jsonl_inputs(tmp_path, tiny_st_model_dir, model, single_thread):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), src, row_group_size=2)
    out = tmp_path / "p.npy"
    assert _encode(["-i", src, "--id-field", "id", "-o", out], tiny_st_model_dir) == 0
    np.testing.assert_allclose(np.load(out), model.encode(TEXTS), atol=1e-6)

    jsrc = tmp_path / "in.jsonl"
    jsrc.write_text("".join(json.dumps({"t": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "j.npy"
    assert _encode(["-i", jsrc, "--field", "t", "-o", out], tiny_st_model_dir) == 0
    np.testing.assert_allclose(np.load(out), model.encode(TEXTS), atol=1e-6)


def test_encoding_option_and_byte_offset(tmp_path, tiny_st_model_dir, model, capsys, single_thread):
    src = tmp_path / "gbk.txt"
    src.write_bytes("第一行\n保险理赔\n".encode("gb18030"))
    out = tmp_path / "g.npy"
    assert _encode(["-i", src, "-o", out], tiny_st_model_dir) == 2
    err = capsys.readouterr().err
    assert "gbk.txt:1: not valid UTF-8 at byte 0 of the file" in err and "--encoding" in err
    assert not out.exists()
    assert _encode(["-i", src, "--encoding", "gb18030", "-o", out], tiny_st_model_dir) == 0
    np.testing.assert_allclose(np.load(out), model.encode(["第一行", "保险理赔"]), atol=1e-6)


def test_a_huge_line_is_read_up_to_max_chars(tmp_path, tiny_st_model_dir, model, capsys, single_thread):
    src = tmp_path / "huge.txt"
    line = "保险理赔需要哪些材料" * 300_000  # 3 million characters on one line, then a short one
    src.write_text(line + "\nshort\n", encoding="utf-8")
    out = tmp_path / "h.npy"
    assert main(["encode", "-i", str(src), "-o", str(out), "-m", str(tiny_st_model_dir), "--max-chars",
                 "100000"]) == 0
    assert "1 texts longer than 100000 characters" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(out), model.encode([line[:100_000], "short"]), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("empty.txt", b"", [], "empty.txt: no records"),
        ("blank.jsonl", b"\n\n", [], "blank.jsonl: no records"),
        ("open.csv", b'id,text\n1,"never closed\n2,two\n3,three\n', [], "open.csv:2: a quoted field starting"),
        ("wide.csv", b"id,text\n1,a\n2,b,c\n", [], "wide.csv:3: more values than header columns"),
        ("noid.jsonl", b'{"text": "a", "id": 1}\n{"text": "b"}\n', ["--id-field", "id"], "noid.jsonl:2: no id field"),
        ("nulltext.jsonl", b'{"text": null}\n', [], "nulltext.jsonl:1: field 'text' is null"),
        ("bad.parquet", b"PAR1 this is not parquet PAR1", [], "bad.parquet: not a readable parquet file"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', [], "bad.jsonl:2: invalid JSON"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_the_old_output_stays(tmp_path, tiny_st_model_dir, capsys, name, content,
                                                               extra, message):
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / "out.npy"
    np.save(out, np.ones((1, 2), dtype=np.float32))
    before = out.read_bytes()
    assert _encode(["-i", src, "-o", out, *extra], tiny_st_model_dir) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and "\n" not in err, err
    assert f"nothing written to {out}" in err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.npy"])


def test_verbose_adds_the_traceback(tmp_path, tiny_st_model_dir, capsys):
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    assert main(["-v", "encode", "-i", str(src), "-m", str(tiny_st_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("m3e encode: error: ")
