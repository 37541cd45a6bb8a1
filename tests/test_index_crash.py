"""A `m3e index add` killed with SIGKILL mid-write leaves the index as it was before (or after), on both the dense
and the sparse side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_index_store import corpus_records, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]  # slow: kill -9 of a subprocess mid-write


def _versions(index_dir: Path) -> int:
    return len(list((index_dir / "lance" / "chunks.lance" / "_versions").glob("*.manifest")))


def _wait_for_versions(proc: subprocess.Popen[bytes], index_dir: Path, target: int, timeout_s: float) -> None:
    """Return once the table has ``target`` versions or ``proc`` has exited; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while _versions(index_dir) < target:
        if time.monotonic() > deadline:
            pytest.fail(f"{_versions(index_dir)} table versions after {timeout_s:.0f} s, expected {target}")
        try:
            proc.wait(timeout=0.02)  # ends the wait as soon as the process exits
        except subprocess.TimeoutExpired:
            continue
        return


def test_sigkill_during_add_leaves_a_consistent_index(tmp_path, tiny_st_model_dir):
    from m3e.cli import main
    from m3e.index import Index

    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_records())
    out = tmp_path / "idx"
    assert main(["index", "build", str(corpus), "--model", str(tiny_st_model_dir), "--out", str(out),
                 "--no-progress"]) == 0
    before = json.loads((out / "index.json").read_text())["state"]
    versions_before = _versions(out)

    extra = write_jsonl(tmp_path / "extra.jsonl",
                        [{"id": f"x{i}", "text": f"第{i}个新文档，关于保险和理赔。"} for i in range(4000)])
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "m3e.cli", "index", "add", str(out), str(extra), "--batch-chunks", "8",
         "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        # Kill once the add has committed several table versions of its own, but not the index.
        _wait_for_versions(proc, out, versions_before + 5, timeout_s=120)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed, "the add finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    assert _versions(out) > versions_before  # it had written to the table

    with Index.open(out) as index:
        state = index.meta["state"]
        assert state == before  # the commit point was never reached
        assert index.store.count() == before["chunks"]
        assert not index.store.existing_docs([f"x{i}" for i in range(4000)])
        assert index.search("保险", k=3)
        # The sparse side shows the same committed state: none of the killed add's words.
        assert index.meta["sparse"]["kind"] == "bm25"
        assert not any(h.doc_id.startswith("x") for h in index.search("新文档 保险 理赔", k=100, mode="sparse"))
        assert not any(h.doc_id.startswith("x") for h in index.search("第1个新文档", k=100, mode="dense"))
    # The next add starts from the committed version and completes.
    small = write_jsonl(tmp_path / "small.jsonl", [{"id": "x1", "text": "一个新文档"}])
    assert main(["index", "add", str(out), str(small), "--no-progress"]) == 0
    with Index.open(out) as index:
        assert index.meta["state"]["docs"] == before["docs"] + 1
        assert index.store.count() == before["chunks"] + 1
        found = [h.doc_id for h in index.search("一个新文档", k=100, mode="sparse")]
        assert "x1" in found and not any(d.startswith("x") and d != "x1" for d in found)
