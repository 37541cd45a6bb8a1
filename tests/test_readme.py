"""The README's Python blocks run as written, in order, in one namespace, in a fresh directory.

Blocks right after a ``<!-- not run by the tests: REASON -->`` line need something this machine cannot have
(a model from the Hugging Face Hub); the Serve section's blocks need a running server and are run against one
by tests/test_serve_models.py. The directory holds what the README's prose says the user has: a few training
pairs (``train.jsonl``) and an index (``my-index``, built by ``m3e index build`` as the README shows).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3e.cli import main

pytestmark = pytest.mark.slow  # the default model on every backend, a fine-tuning run, an index build

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->\s*$")


def readme_blocks() -> list[tuple[int, str, str | None]]:
    """(line, code, why it is not run) of every Python block outside the Serve section."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks: list[tuple[int, str, str | None]] = []
    section = ""
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i]
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            marker = NOT_RUN.match(lines[start - 2]) if start >= 2 else None
            why = marker.group(1) if marker else ("run against a server by test_serve_models" if "Serve" in section
                                                  else None)
            blocks.append((start + 1, "\n".join(body) + "\n", why))
        i += 1
    return blocks


def test_every_python_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("M3E_HOME", str(tmp_path / "home"))
    pairs = [{"text": f"问题{i}：保险怎么理赔？", "text_pos": f"答案{i}：提交保单和事故证明。"} for i in range(16)]
    Path("train.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    corpus = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(
        ["车险理赔需要保单、驾驶证和事故证明。", "今天天气很好，适合出门。", "医疗保险可以报销部分门诊费用。"])]
    Path("corpus.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in corpus),
                                    encoding="utf-8")
    assert main(["index", "build", "corpus.jsonl", "--out", "my-index", "--no-progress"]) == 0

    namespace: dict[str, Any] = {}
    ran = []
    for line, code, why in readme_blocks():
        if why is None:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
            ran.append(line)
    assert len(ran) >= 5, ran  # quickstart, sentence-transformers, fine-tuning, search, backends
    assert np.asarray(namespace["vectors"]).shape == (2, 384)
    assert (tmp_path / "my-model" / "modules.json").is_file()
    assert (tmp_path / "my-finetuned-model" / "modules.json").is_file()
    assert "doc-0" in capsys.readouterr().out  # the search block printed the matching document


def test_blocks_left_out_say_why() -> None:
    left_out = [(line, why) for line, _, why in readme_blocks() if why is not None]
    assert left_out and all(why for _, why in left_out)
