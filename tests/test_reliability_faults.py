"""Faults: a disk that fills during `m3e encode -o`, `m3e index add|build` and a training checkpoint; damaged
checkpoints and index files. Each case checks the one-line message, the exit status, and that nothing that was
reported saved is lost (the old output, the committed index, the newest saved checkpoint).

The full disk is real where the tests may mount a filesystem (a small tmpfs, as root: CI runs as root) and is
a per-process file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so a write fails with EFBIG) everywhere; both
kinds run where both are possible, so no case is skipped.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE / tmpfs")]

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ROOM = 16 * 1024  # what the full disk still takes: less than any output below


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    import tempfile

    probe = tempfile.mkdtemp()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True).returncode
        if ok == 0:
            subprocess.run(["umount", probe], check=True)
        return ok == 0
    finally:
        os.rmdir(probe)


DISKS = ["rlimit", *(["tmpfs"] if _can_mount() else [])]


class SmallDisk:
    """A directory whose disk can be made (nearly) full: ``fill()`` leaves ROOM bytes, ``free()`` undoes it.

    tmpfs: the directory is a tmpfs mount, resized to what it holds + ROOM. rlimit: the m3e subprocesses get
    RLIMIT_FSIZE = ROOM (a file may not grow past it: the same failure for every output of these tests).
    """

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path, self.full = kind, path, False
        path.mkdir(parents=True)
        if kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path)], check=True)

    def fill(self) -> None:
        self.full = True
        if self.kind == "tmpfs":
            st = os.statvfs(self.path)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            subprocess.run(["mount", "-o", f"remount,size={used + ROOM}", str(self.path)], check=True)

    def free(self) -> None:
        self.full = False
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=256m", str(self.path)], check=True)

    def _limit(self) -> None:  # runs in the child before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (ROOM, ROOM))

    def m3e(self, *args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        limited = self.full and self.kind == "rlimit"
        return subprocess.run([sys.executable, "-m", "m3e.cli", *map(str, args)], env=ENV, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=self._limit if limited else None)

    def close(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture(params=DISKS)
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmallDisk]:
    d = SmallDisk(request.param, tmp_path / "disk")
    yield d
    d.close()


def _one_line_fault(res: subprocess.CompletedProcess[str], command: str) -> str:
    err = res.stderr.strip()
    assert res.returncode == 1, (res.returncode, err[-3000:])
    assert "Traceback" not in err and "\n" not in err, err[-3000:]
    assert err.startswith(f"m3e {command}: error: ") and ("space" in err.lower()), err
    return err


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob(".*") if ".tmp" in p.name or ".old-" in p.name]


def _corpus(path: Path, n: int, prefix: str = "d") -> Path:
    rows = [{"id": f"{prefix}{i}", "text": f"第{i}个文档：保险理赔需要哪些材料，办理流程是怎样的。" * 6} for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- disk full
def test_disk_full_during_encode_keeps_the_old_output(disk, tmp_path, tiny_st_model_dir):
    src = tmp_path / "texts.txt"
    src.write_text("".join(f"第{i}行 text {i}\n" for i in range(3000)), encoding="utf-8")
    out = disk.path / "vectors.npy"
    np.save(out, np.arange(6, dtype=np.float32).reshape(2, 3))
    before = out.read_bytes()
    disk.fill()
    res = disk.m3e("encode", "-i", src, "-o", out, "-m", tiny_st_model_dir, "-q")
    err = _one_line_fault(res, "encode")
    assert f"nothing written: {out} left as it was" in err
    assert out.read_bytes() == before and not _leftovers(disk.path)
    disk.free()
    assert disk.m3e("encode", "-i", src, "-o", out, "-m", tiny_st_model_dir, "-q").returncode == 0
    assert np.load(out).shape == (3000, 32)


def test_disk_full_during_index_add_keeps_the_committed_index(disk, tmp_path, tiny_st_model_dir):
    from m3e.index import Index

    index_dir = disk.path / "idx"
    assert disk.m3e("index", "build", _corpus(tmp_path / "c.jsonl", 20), "--out", index_dir, "-m",
                    tiny_st_model_dir, "--no-progress").returncode == 0
    meta_before = (index_dir / "index.json").read_bytes()
    disk.fill()
    res = disk.m3e("index", "add", index_dir, _corpus(tmp_path / "x.jsonl", 300, "x"), "--batch-chunks", "32",
                   "--no-progress")
    err = _one_line_fault(res, "index")
    assert f"nothing was added: {index_dir} holds 20 documents" in err
    assert (index_dir / "index.json").read_bytes() == meta_before  # the commit point never moved
    disk.free()
    with Index.open(index_dir) as index:
        assert index.store.count_docs() == 20 and not index.store.existing_docs(["x0", "x299"])
        assert index.search("保险理赔", k=3, mode="dense")
    res = disk.m3e("index", "add", index_dir, tmp_path / "x.jsonl", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "now holds 320 documents" in res.stdout


def test_disk_full_during_a_new_index_build_removes_it(disk, tmp_path, tiny_st_model_dir):
    index_dir = disk.path / "new"
    disk.fill()
    res = disk.m3e("index", "build", _corpus(tmp_path / "c.jsonl", 300), "--out", index_dir, "-m",
                   tiny_st_model_dir, "--batch-chunks", "32", "--no-progress")
    err = _one_line_fault(res, "index")
    assert f"the failed build was not kept: {index_dir} was removed" in err
    assert not index_dir.exists()
    disk.free()
    res = disk.m3e("index", "build", tmp_path / "c.jsonl", "--out", index_dir, "-m", tiny_st_model_dir,
                   "--no-progress")
    assert res.returncode == 0 and "300 documents" in res.stdout, res.stderr[-2000:]


def _pairs(path: Path, n: int) -> Path:
    words = "天气 很好 我们 公园 北京 上海 城市 旅游 吃饭 喝茶 咖啡 读书 模型 向量 检索 问题 答案 保险".split()
    rows = [{"text": words[i % 18] + words[(i * 7) % 18] + str(i), "text_pos": words[(i * 5) % 18] + str(i)}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _checkpoints(root: Path) -> Path:
    found = sorted(root.rglob("checkpoints"))
    assert found, f"no checkpoints under {root}"
    return found[0]


def test_disk_full_at_a_checkpoint_keeps_the_newest_saved_one(disk, tmp_path, tiny_st_model_dir):
    from m3e.training.checkpoints import damage

    data = _pairs(tmp_path / "pairs.jsonl", 160)
    out = disk.path / "run"
    cmd = ["finetune", tiny_st_model_dir, data, "--output", out, "--batch-size", "16", "--epochs", "2",
           "--save-steps", "6"]
    # a first run stopped by SIGTERM after its first checkpoint: the saved state the full disk must not lose
    proc = subprocess.Popen([sys.executable, "-m", "m3e.cli", *map(str, cmd), "--no-progress"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # a line every 2 of the 20 steps; step 6 wrote a checkpoint
        if line.startswith("step 8/"):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM, rest[-2000:]
    root = _checkpoints(disk.path)
    saved = (root / "LATEST").read_text().strip()
    files_before = {p: p.read_bytes() for p in (root / saved).rglob("*") if p.is_file()}

    disk.fill()
    res = disk.m3e(*cmd, "--resume", "--no-progress")
    err = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "space" in err.lower(), res.stderr[-3000:]
    assert "was not written; the newest saved checkpoint is" in err and err.endswith(saved), err
    assert {p: p.read_bytes() for p in (root / saved).rglob("*") if p.is_file()} == files_before
    assert damage(root / saved) is None and not _leftovers(root)

    disk.free()
    res = disk.m3e(*cmd, "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {root / saved}" in res.stderr


# ---------------------------------------------------------------------------------------------- damaged files
def _stopped_run(tiny_st_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A fine-tuning run interrupted at step 5 with checkpoints at steps 2 and 4 (kept: both)."""
    import m3e
    import m3e.training.trainer as trainer_mod

    data = _pairs(tmp_path / "pairs.jsonl", 64)
    real = trainer_mod.forward_backward
    calls = [0]

    def stop_at_five(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "forward_backward", stop_at_five)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
            output_dir=out, batch_size=8, save_steps=2, progress=False)
    monkeypatch.setattr(trainer_mod, "forward_backward", real)
    return out, data


@pytest.mark.parametrize("harm", ["truncate-weights", "flip-state", "flip-weights", "drop-file"])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_resumes(harm, tmp_path, tiny_st_model_dir, monkeypatch,
                                                                    capsys, single_thread):
    import m3e

    out, data = _stopped_run(tiny_st_model_dir, tmp_path, monkeypatch)
    root = _checkpoints(tmp_path)
    names = sorted(p.name for p in root.glob("step-*"))
    assert names == ["step-00000002", "step-00000004"]
    newest = root / names[-1]
    weights = next(newest.rglob("model.safetensors"))
    if harm == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif harm == "drop-file":
        weights.unlink()
    else:
        target = newest / "state.pt" if harm == "flip-state" else weights
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x04
        target.write_bytes(bytes(raw))
    capsys.readouterr()
    m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
        output_dir=out, batch_size=8, save_steps=2, progress=False, resume=True)
    err = capsys.readouterr().err
    assert f"checkpoint {names[-1]} is damaged (" in err and f"resuming from {names[0]}, the newest intact one" in err
    assert "step 2 of" in err  # resumed from step 2
    m3e.load(str(out)).encode(["天气很好"])


def test_only_damaged_checkpoints_is_an_error_not_a_silent_restart(tmp_path, tiny_st_model_dir, monkeypatch,
                                                                   single_thread):
    from m3e.cli import main

    out, data = _stopped_run(tiny_st_model_dir, tmp_path, monkeypatch)
    root = _checkpoints(tmp_path)
    for step in root.glob("step-*"):
        (step / "state.pt").write_bytes(b"")
    rc = main(["finetune", str(tiny_st_model_dir), str(data), "--output", str(out), "--batch-size", "8",
               "--save-steps", "2", "--resume", "--no-progress"])
    assert rc == 2


@pytest.mark.parametrize("harm", ["truncate-meta", "truncate-data", "truncate-manifests", "garbage-meta"])
def test_damaged_index_files_are_one_line_exit_2(harm, tmp_path, tiny_st_model_dir):
    from m3e.cli import main

    index_dir = tmp_path / "idx"
    assert main(["index", "build", str(_corpus(tmp_path / "c.jsonl", 20)), "--out", str(index_dir), "-m",
                 str(tiny_st_model_dir), "--no-progress"]) == 0
    table = index_dir / "lance" / "chunks.lance"
    if harm == "truncate-meta":
        meta = index_dir / "index.json"
        meta.write_bytes(meta.read_bytes()[:100])
    elif harm == "garbage-meta":
        (index_dir / "index.json").write_bytes(b"\xff\x00" * 50)
    else:
        for f in (table / ("data" if harm == "truncate-data" else "_versions")).iterdir():
            f.write_bytes(f.read_bytes()[:40])
    res = subprocess.run([sys.executable, "-m", "m3e.cli", "search", str(index_dir), "保险理赔", "--mode", "dense"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    err = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert err.startswith("m3e search: error: ") and str(index_dir) in err, err
