"""The core commands through a real subprocess, including the bad-input cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import m3e

pytestmark = pytest.mark.slow  # the CLI in subprocesses on the default model

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "m3e.cli", *args], input=stdin, capture_output=True, env=ENV, timeout=300
    )


def test_help_lists_every_command():
    from m3e.cli import COMMANDS

    out = run_cli("--help")
    assert out.returncode == 0
    text = out.stdout.decode()
    for name in COMMANDS:
        assert name in text


def test_encode_arguments_to_npy_matches_python(tiny_st_model_dir, tmp_path):
    out = tmp_path / "v.npy"
    res = run_cli("encode", "今天天气很好", "hello world", "-m", str(tiny_st_model_dir), "-o", str(out))
    assert res.returncode == 0, res.stderr.decode()
    vectors = np.load(out)
    expected = m3e.load(str(tiny_st_model_dir)).encode(["今天天气很好", "hello world"])
    assert np.abs(vectors - expected).max() <= 1e-6


def test_encode_stdin_and_jsonl(tiny_st_model_dir, tmp_path):
    res = run_cli("encode", "-m", str(tiny_st_model_dir), stdin="第一行\n\nsecond line\n".encode())
    assert res.returncode == 0, res.stderr.decode()
    rows = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["第一行", "", "second line"]  # a blank line is an empty text: rows stay aligned
    assert len(rows[0]["embedding"]) == 32

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "body": "保险理赔"}\n{"id": 2, "body": "car insurance"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    res = run_cli("encode", "-i", str(src), "--field", "body", "-m", str(tiny_st_model_dir), "-o", str(out), "--query")
    assert res.returncode == 0, res.stderr.decode()
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, ["-i", "{tmp}/missing.txt"], "no such file"),
        (b'{"text": "ok"}\n{"body": "x"}\n', ["-i", "{tmp}/f.jsonl"], "f.jsonl:2: no field 'text'"),
        (b'{"text": "ok"}\nnot json\n', ["-i", "{tmp}/f.jsonl"], "f.jsonl:2: invalid JSON"),
        (b"fine\n\xff\xfe broken\n", ["-i", "{tmp}/f.txt"], "f.txt:2: not valid UTF-8"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_st_model_dir, tmp_path, content, args, message):
    if content is not None:
        name = args[1].split("/")[-1]
        (tmp_path / name).write_bytes(content)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = run_cli("encode", *args, "-m", str(tiny_st_model_dir))
    err = res.stderr.decode()
    assert res.returncode == 2
    assert message in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err


def test_missing_model_path_exits_2():
    res = run_cli("info", "/no/such/model")
    assert res.returncode == 2
    assert "no model directory" in res.stderr.decode()
    assert "Traceback" not in res.stderr.decode()


def test_similarity_matrix_and_info(tiny_st_model_dir):
    res = run_cli("similarity", "今天天气很好", "今天是个晴天", "hello", "-m", str(tiny_st_model_dir))
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().splitlines()
    assert lines[1].startswith("[0] 今天天气很好")
    assert "1.000" in lines[1]
    res = run_cli("info", str(tiny_st_model_dir), "--json")
    info = json.loads(res.stdout)
    assert info["dim"] == 32 and info["max_length"] == 64 and info["pooling"] == "mean"
    assert info["parameters"] > 0


def test_default_model_runs_offline():
    res = run_cli("similarity", "The weather is nice today", "It is sunny outside", "Stocks fell sharply")
    assert res.returncode == 0, res.stderr.decode()
    matrix = [line.split()[-3:] for line in res.stdout.decode().splitlines()[1:4]]
    assert float(matrix[0][1]) > float(matrix[0][2])
