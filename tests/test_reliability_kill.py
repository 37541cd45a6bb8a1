"""kill -9 at random points of `m3e index add`, `m3e finetune` and `m3e data build`: what was reported saved
(the committed index, a complete checkpoint, a written task file) survives whole, and the next run completes.
The points are drawn from a seeded generator (printed on failure), so a failing trial can be replayed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_index_crash import _versions

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
SEED = int(os.environ.get("M3E_KILL_SEED", "23"))


def _kill(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL ``proc``; whether it was still running."""
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return alive


def _jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_kill9_at_random_points_of_index_add(tmp_path, tiny_st_model_dir):
    from m3e.cli import main
    from m3e.index import Index

    rng = random.Random(SEED)
    out = tmp_path / "idx"
    base = _jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": f"第{i}个文档，关于医疗和保险。"} for i in range(30)])
    assert main(["index", "build", str(base), "-m", str(tiny_st_model_dir), "--out", str(out), "--no-progress"]) == 0
    extra = _jsonl(tmp_path / "x.jsonl", [{"id": f"x{i}", "text": f"第{i}个新文档，保险理赔。"} for i in range(600)])
    expected_docs = 30
    trials = []
    for trial in range(3):
        before = json.loads((out / "index.json").read_text())["state"]
        versions = _versions(out)
        target = versions + rng.randint(1, 12)  # a random table version of this add
        proc = subprocess.Popen([sys.executable, "-m", "m3e.cli", "index", "add", str(out), str(extra),
                                 "--batch-chunks", "8", "--no-progress"], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while _versions(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        killed = _kill(proc)
        trials.append((trial, target - versions, killed))
        with Index.open(out) as index:
            state = index.meta["state"]
            if killed and state == before:  # the commit point was not reached: nothing of the add is visible
                assert not index.store.existing_docs(["x0", "x599"]), trials
            else:  # the add committed before the kill: all of it
                expected_docs = 630
                assert state["docs"] == 630 and index.store.existing_docs(["x0", "x599"]) == {"x0", "x599"}
            assert index.store.count_docs() == state["docs"] == expected_docs, (trials, SEED)
            assert index.search("保险理赔", k=3, mode="dense")
        if expected_docs == 630:
            break
    if expected_docs == 30:  # the next add starts from the committed version and completes
        assert main(["index", "add", str(out), str(extra), "--no-progress"]) == 0
    with Index.open(out) as index:
        assert index.store.count_docs() == 630 == index.meta["state"]["docs"]
        assert {h.doc_id for h in index.search("第5个新文档", k=630, mode="sparse")} >= {"x5"}


def test_kill9_at_random_points_of_finetune(tmp_path, tiny_st_model_dir):
    import m3e
    from m3e.training.checkpoints import damage

    rng = random.Random(SEED + 1)
    words = "天气 很好 公园 北京 上海 城市 旅游 喝茶 咖啡 读书 模型 向量 检索 问题 答案 保险".split()
    data = _jsonl(tmp_path / "pairs.jsonl", [{"text": words[i % 16] + words[i * 7 % 16] + str(i),
                                               "text_pos": words[i * 5 % 16] + str(i)} for i in range(240)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "m3e.cli", "finetune", str(tiny_st_model_dir), str(data), "--output", str(out),
           "--batch-size", "16", "--epochs", "2", "--save-steps", "3", "--no-progress"]
    points = []
    finished = False
    for trial in range(2):
        proc = subprocess.Popen(cmd + (["--resume"] if trial else []), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:  # training is under way: then a random moment (steps, a checkpoint write)
            if line.startswith("step "):
                break
        delay = rng.uniform(0.0, 1.5)
        points.append(delay)
        time.sleep(delay)
        _kill(proc)
        # on a quiet machine a run can finish (final model saved, checkpoints removed) before the random moment
        finished = (out / "modules.json").is_file() and (out / "loss.csv").is_file()
        for checkpoint in sorted(tmp_path.rglob("checkpoints/step-*")):
            if not checkpoint.name.startswith("."):
                assert damage(checkpoint) is None, (checkpoint, points, SEED)  # every complete one is intact
        if finished:
            break
    if not finished:
        done = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (points, done.stderr[-3000:])
    steps = [int(r.split(",")[0]) for r in (out / "loss.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 31)), (points, SEED)
    m3e.load(str(out)).encode(["天气很好"])


_BUILD = """
import dataclasses, hashlib, importlib.util, shutil, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("m3e_synthetic", sys.argv[1])
synthetic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(synthetic)
from m3e.data import build, sources
base = Path(sys.argv[2])
by_source = synthetic.write_archives(base / "archives")  # the same bytes every time: source name -> archive
for name, path in by_source.items():
    sources.SOURCES[name] = dataclasses.replace(sources.SOURCES[name],
                                                sha256=hashlib.sha256(path.read_bytes()).hexdigest())
if sys.argv[4] == "fetch":
    def download(source, dest):
        target = dest / by_source[source.name].name
        shutil.copy(by_source[source.name], target)
        return target
    sources.fetch(None, base / "root", downloader=download)
else:
    print("ready", flush=True)
    build.build(Path(sys.argv[3]), base / "root")
"""


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)}


def test_kill9_at_random_points_of_data_build(tmp_path):
    synthetic_py = Path(__file__).parent / "fixtures" / "data" / "synthetic.py"

    def driver(out: Path, step: str) -> list[str]:
        return [sys.executable, "-c", _BUILD, str(synthetic_py), str(tmp_path), str(out), step]

    subprocess.run(driver(tmp_path / "unused", "fetch"), env=ENV, check=True, timeout=300)
    reference = tmp_path / "reference"
    subprocess.run(driver(reference, "build"), env=ENV, check=True, timeout=300, stdout=subprocess.DEVNULL)
    want = _files(reference)
    assert "manifest.json" in want

    rng = random.Random(SEED + 2)
    out = tmp_path / "out"
    outcomes = []
    for _ in range(5):
        proc = subprocess.Popen(driver(out, "build"), env=ENV, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        delay = rng.uniform(0.0, 1.2)
        time.sleep(delay)
        outcomes.append((round(delay, 3), _kill(proc)))
        got = _files(out) if out.exists() else {}
        # every file a killed build left is whole: byte-identical to the clean build's
        assert {k: v for k, v in got.items() if want.get(k) != v} == {}, (outcomes, SEED)
    subprocess.run(driver(out, "build"), env=ENV, check=True, timeout=300, stdout=subprocess.DEVNULL)
    assert _files(out) == want, outcomes
    assert any(killed for _, killed in outcomes), outcomes  # at least one build was cut short
