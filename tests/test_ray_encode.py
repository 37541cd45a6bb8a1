"""Encoding on a real two-node Ray cluster started here on loopback (`ray start --head` on 127.0.0.2 and a
second `ray start` on 127.0.0.3, one CPU each): 20k texts equal to one process's vectors row for row, a
worker killed mid-run still yields every row exactly once, a re-run after an interrupted run encodes only
the missing shards, Ray Data users' encode_dataset, and an index built from what the cluster wrote."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from m3e.errors import M3EError

# The ray extra (in dev): a missing Ray fails the suite instead of skipping. Ray itself is imported by the
# cluster fixture, after it has set the authentication Ray reads when it is first imported.
assert importlib.util.find_spec("ray") is not None, "ray (the ray extra, in dev) must be installed"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL, ray start")]

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
_WORDS = ["今天", "天气", "很好", "保险", "理赔", "北京", "上海", "城市", "模型", "向量", "检索", "句子", "笔记本",
          "电脑", "价格", "the", "weather", "is", "nice", "cat", "sits", "on", "mat", "stock", "market", "search"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with log.open("wb") as out:
        return subprocess.Popen([ray_bin, "start", "--block", "--num-cpus=1", "--object-store-memory=200000000",
                                 "--disable-usage-stats", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the nodes by process id: each `ray start --block` and every process it started."""
    family: list[psutil.Process] = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _gone, alive = psutil.wait_procs(family, timeout=5)
    for p in alive:  # Ray's GCS server takes its time over SIGTERM
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    for proc in procs:
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A head node and a worker node on two loopback addresses; the test process joins as the driver."""
    root = Path(tempfile.mkdtemp(prefix="m3eray", dir="/tmp"))  # short: Ray's socket paths live under it
    port = _free_port()
    # Token authentication with a token of this test's own (the nodes listen on every interface), given to the
    # nodes, this process (the driver) and the `m3e encode` processes the tests start.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    procs = []
    try:
        procs.append(_ray_start(["--head", f"--node-ip-address={HEAD_IP}", f"--port={port}",
                                 f"--ray-client-server-port={_free_port()}", "--include-dashboard=false",
                                 f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={root}/h"],
                                root / "head.log", env))
        address = f"{HEAD_IP}:{port}"
        deadline = time.monotonic() + 90
        while True:  # the head's GCS answers before the second node may join
            try:
                socket.create_connection((HEAD_IP, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    pytest.fail("the Ray head did not start: " + (root / "head.log").read_text()[-2000:])
                time.sleep(0.5)
        procs.append(_ray_start([f"--address={address}", f"--node-ip-address={WORKER_IP}",
                                 f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={root}/w"],
                                root / "worker.log", env))
        import ray

        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.monotonic() > deadline:
                pytest.fail("the second Ray node did not join: " + (root / "worker.log").read_text()[-2000:])
            time.sleep(0.5)
        yield address
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        _stop(procs)
        shutil.rmtree(root, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 12)))) + f" {i}" for i in range(n)]


def _write_shards(folder: Path, texts: list[str], per_shard: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, len(texts), per_shard)):
        path = folder / f"shard{s:03d}.jsonl"
        path.write_text("".join(json.dumps({"id": f"t{i}", "text": texts[i], "n": i % 7}, ensure_ascii=False) + "\n"
                                for i in range(start, min(start + per_shard, len(texts)))), encoding="utf-8")
        paths.append(path)
    return paths


def _read_parts(out: Path) -> tuple[list[str], np.ndarray, list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(), dtype=np.float32)
    return (table.column("id").to_pylist(), vectors.reshape(table.num_rows, -1),
            [json.loads(m) for m in table.column("metadata").to_pylist()])


def _encode_cli(inputs: Path, out: Path, model_dir: Path, address: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "m3e.cli", "encode", "-i", str(inputs / "*.jsonl"), "-o", str(out), "--ray", address,
         "--model", str(model_dir), "--backend", "torch", "--keep", "n", "--no-progress"],
        env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _actor_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any("ShardEncoder" in part for part in (p.info["cmdline"] or [])):
            found.append(p)
    return found


def _wait_for_parts(out: Path, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(out.glob("part-*.parquet"))) < n:
        if proc.poll() is not None:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {n} parts after {timeout_s:.0f} s")
        time.sleep(0.05)


@pytest.mark.usefixtures("single_thread")
def test_20k_texts_on_two_nodes_equal_one_process(ray_cluster, tiny_st_model_dir, tmp_path):
    import m3e
    from m3e.distributed import EncodeSpec, encode_shards

    texts = _texts(20_000)
    _write_shards(tmp_path / "in", texts, 1000)
    spec = EncodeSpec(model=str(tiny_st_model_dir), backend="torch", metadata_fields=("n",))
    seen: list[dict] = []
    report = encode_shards(str(tmp_path / "in" / "*.jsonl"), tmp_path / "out", spec, address=ray_cluster,
                           actors=2, progress=lambda row, rep, pending: seen.append(dict(row)))
    assert (report.shards, report.encoded, report.skipped, report.rows) == (20, 20, 0, 20_000)
    assert {row["node"] for row in seen} == {HEAD_IP, WORKER_IP}  # both nodes did shards
    ids, vectors, metadata = _read_parts(tmp_path / "out")
    assert len(ids) == len(set(ids)) == 20_000
    order = [int(i[1:]) for i in ids]
    single = np.asarray(m3e.load(str(tiny_st_model_dir)).encode(texts, show_progress=False), dtype=np.float32)
    np.testing.assert_allclose(vectors, single[order], rtol=0, atol=1e-5)
    assert [m["n"] for m in metadata] == [i % 7 for i in order]  # passthrough fields
    # Parts written with other settings are not mixed with new ones.
    with pytest.raises(M3EError, match=r"other settings \(normalize\)"):
        encode_shards(str(tmp_path / "in" / "*.jsonl"), tmp_path / "out",
                      EncodeSpec(model=str(tiny_st_model_dir), backend="torch", metadata_fields=("n",),
                                 normalize=False), address=ray_cluster)


def test_bad_input_on_the_cluster_is_one_line_with_file_and_line(ray_cluster, tiny_st_model_dir, tmp_path, capsys):
    from m3e.cli import main

    _write_shards(tmp_path / "in", _texts(10), 5)
    (tmp_path / "in" / "shard999.jsonl").write_text('{"id": "a", "text": "好"}\n{broken\n', encoding="utf-8")
    args = ["encode", "-i", str(tmp_path / "in" / "*.jsonl"), "-o", str(tmp_path / "out"), "--ray", ray_cluster,
            "--model", str(tiny_st_model_dir), "--backend", "torch", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("shard999.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes at "
                        "column 2)"), err
    assert not list((tmp_path / "out").glob("*shard999*"))  # the broken shard has no part; fixed, it runs again
    assert main(["encode", "x", "--ray"]) == 2 and "--ray reads files" in capsys.readouterr().err
    assert main(["encode", "-i", "in/*.jsonl", "--ray", "-o", "v.npy"]) == 2
    assert "output directory" in capsys.readouterr().err


@pytest.mark.usefixtures("single_thread")
def test_encode_dataset_for_ray_data_users(ray_cluster, tiny_st_model_dir):
    import ray.data

    import m3e
    from m3e.distributed import encode_dataset

    texts = _texts(2000, seed=1)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=8)
    rows = encode_dataset(ds, str(tiny_st_model_dir), actors=2, batch_rows=256, backend="torch").take_all()
    assert sorted(r["id"] for r in rows) == list(range(2000))
    single = np.asarray(m3e.load(str(tiny_st_model_dir)).encode(texts, show_progress=False))
    got = np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])
    np.testing.assert_allclose(got, single[[r["id"] for r in rows]], rtol=0, atol=1e-5)


def test_an_interrupted_run_resumes_with_the_missing_shards_and_survives_a_killed_worker(
    ray_cluster, tiny_st_model_dir, tmp_path
):
    texts = _texts(20_000, seed=2)
    _write_shards(tmp_path / "in", texts, 500)
    out = tmp_path / "out"
    first = _encode_cli(tmp_path / "in", out, tiny_st_model_dir, ray_cluster)
    try:
        _wait_for_parts(out, 3, first)
        assert first.poll() is None, "the run ended before it could be interrupted"
        first.send_signal(signal.SIGKILL)  # the driver dies; Ray then ends its actors
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    deadline = time.monotonic() + 60
    while _actor_processes():
        assert time.monotonic() < deadline, "the interrupted run's actors did not end"
        time.sleep(0.2)
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 3 <= len(done) < 40

    # The re-run: one of its workers is killed (SIGKILL) once it is encoding shards.
    again = _encode_cli(tmp_path / "in", out, tiny_st_model_dir, ray_cluster)
    try:
        _wait_for_parts(out, len(done) + 1, again)
        actors = _actor_processes()
        assert again.poll() is None and actors, "the re-run ended before a worker could be killed"
        actors[0].send_signal(signal.SIGKILL)
        _, err = again.communicate(timeout=300)
    finally:
        if again.poll() is None:
            again.kill()
            again.wait(timeout=30)
    assert again.returncode == 0, err.decode()[-2000:]
    summary = re.search(r"encoded (\d+) shards \((\d+) rows\).*; (\d+) of (\d+) shards were already done",
                        err.decode())
    assert summary, err.decode()[-2000:]
    encoded, rows, skipped, total = map(int, summary.groups())
    assert (skipped, total, encoded, rows) == (len(done), 40, 40 - len(done), (40 - len(done)) * 500)
    assert all(p.stat().st_mtime_ns == done[p.name] for p in out.glob("part-*.parquet") if p.name in done)
    assert len(list(out.glob("part-*.parquet"))) == 40 and not list(out.glob(".part-*"))
    ids, vectors, _ = _read_parts(out)
    assert sorted(ids) == sorted(f"t{i}" for i in range(20_000))  # every row, exactly once
    assert np.isfinite(vectors).all()


def test_index_built_on_the_cluster_searches_as_a_local_build(ray_cluster, tiny_st_model_dir, tmp_path, capsys):
    import m3e
    from m3e.cli import main
    from m3e.index import Index, build_index
    from tests.test_index_store import corpus_records, write_jsonl

    records = corpus_records()
    for s in range(3):
        write_jsonl(tmp_path / f"c{s}.jsonl", records[s::3])
    assert main(["index", "build", str(tmp_path / "c*.jsonl"), "--ray", ray_cluster, "--model", str(tiny_st_model_dir),
                 "--backend", "torch", "--out", str(tmp_path / "idx"), "--chunk-size", "60", "--overlap", "10",
                 "--no-progress"]) == 0
    assert "(3 shards encoded on the cluster, 0 already done;" in capsys.readouterr().out
    assert len(list((tmp_path / "idx.parts").glob("part-*.parquet"))) == 3
    model = m3e.load(str(tiny_st_model_dir))
    local, _ = build_index(write_jsonl(tmp_path / "all.jsonl", [r for s in range(3) for r in records[s::3]]),
                           tmp_path / "local", model, model_source=str(tiny_st_model_dir), progress=False,
                           chunk_size=60, overlap=10)
    with Index.open(tmp_path / "idx") as index:
        assert index.status == "ready" and index.meta["state"]["docs"] == len(records)
        assert index.meta["state"]["chunks"] == local.meta["state"]["chunks"]
        for query in ("保险理赔", "insurance", "天气很好"):
            for mode in ("dense", "sparse", "hybrid"):
                got, want = index.search(query, k=5, mode=mode), local.search(query, k=5, mode=mode)
                assert [h.chunk_id for h in got] == [h.chunk_id for h in want], (query, mode)
                assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    local.close()
