"""Load test for `m3e serve` on loopback, compared in the same run with offline `encode` and with
infinity-emb serving the same model directory.

    .venv/bin/python bench/serve_load.py [--model DIR] [--no-infinity] [--json out.json]

1. offline: ``model.encode(texts)`` throughput on the texts the servers will get;
2. starts ``m3e serve`` in a subprocess (``--default-side none``: the texts go in as they are, as
   infinity embeds them) and waits for /health;
3. closed loop: 1, 16 and 64 concurrent clients, each sending one text per request and the
   next request as soon as the answer is in (bounded in requests and seconds per level);
   throughput, p50 / p99 latency, the server's mean batch size, and every vector checked
   against the offline one;
4. open loop at 2x the measured 64-client throughput for a few seconds: counts of 200, 429,
   other 4xx, 5xx and lost requests (no answer), latencies of the answered ones, and for each
   429 its Retry-After against the real wait (until every request admitted before it was answered);
5. the same against infinity-emb (``infinity_emb v2 --engine torch --device cpu``), installed by this
   script in its own venv (``--infinity-venv``; the torch of this interpreter is copied in, so no
   multi-GB CUDA build is downloaded). If it cannot be installed or started, the script says so and
   goes on with m3e alone;
6. offline again (the machine is shared: the two offline numbers show the drift).

The load generator speaks HTTP/1.1 with keep-alive over asyncio streams itself: a general
HTTP client costs about as much CPU per request as the server does, and it shares the cores.
Everything stops by itself: each level has a request cap and a time cap.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As `m3e serve` does, so that offline encode and the server run under the same OpenMP policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EN = (
    "the model maps each sentence to a vector so that similar meanings land close together and a search "
    "engine can find relevant documents for a user query in milliseconds weather today is sunny and warm "
    "insurance claims need an invoice a receipt and the policy number before the deadline students buy a "
    "laptop with a long battery life for reading and writing papers the stock market fell sharply after "
    "the announcement while investors waited for more news about interest rates"
).split()
_ZH = (
    "今天天气很好我们去公园散步吧向量检索模型把句子表示成向量用余弦相似度比较"
    "保险理赔需要哪些材料北京和上海是中国最大的城市学生想买一台笔记本电脑"
)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Queries and passages, English and Chinese, 70% short (5-20 words), 30% longer (30-90)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = int(rng.integers(5, 21)) if rng.random() < 0.7 else int(rng.integers(30, 91))
        if rng.random() < 0.5:
            start = int(rng.integers(0, len(_EN)))
            text = " ".join(_EN[(start + k) % len(_EN)] for k in range(words))
        else:
            start = int(rng.integers(0, len(_ZH)))
            text = "".join(_ZH[(start + k) % len(_ZH)] for k in range(int(words * 1.5)))
        out.append(f"{text} #{i}")
    return out


# ---------------------------------------------------------------------- a minimal HTTP/1.1 client


class Conn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# ---------------------------------------------------------------------- measurements


@dataclass
class Level:
    name: str
    concurrency: int
    sent: int = 0
    ok: int = 0
    status: dict[int, int] = field(default_factory=dict)
    lost: int = 0
    wrong: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    batch_mean: float = 0.0
    max_diff: float = 0.0
    # (sent, answered, status, Retry-After or None) per request of an open loop
    events: list[tuple[float, float, int, float | None]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.array([np.nan])
        return {
            "level": self.name,
            "concurrency": self.concurrency,
            "requests": self.sent,
            "ok": self.ok,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "lost": self.lost,
            "wrong_vectors": self.wrong,
            "seconds": round(self.seconds, 2),
            "texts_per_s": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "mean_batch": round(self.batch_mean, 1),
            "max_abs_diff": float(f"{self.max_diff:.2e}"),
            **self.answered_latency(),
            **self.retry_after_accuracy(),
        }

    def answered_latency(self) -> dict[str, Any]:
        """Open loop: latency of the requests answered 200 (429s come back at once)."""
        ok = np.array([done - sent for sent, done, status, _ in self.events if status == 200]) * 1000
        if not ok.size:
            return {}
        p50, p99 = float(np.percentile(ok, 50)), float(np.percentile(ok, 99))
        return {
            "ok_p50_ms": round(p50, 1),
            "ok_p99_ms": round(p99, 1),
            "ok_p99_over_p50": round(p99 / p50, 2),
        }

    def retry_after_accuracy(self) -> dict[str, Any]:
        """Each 429's Retry-After over its real wait: the time until every request admitted before it
        was answered (the queued work it was told to wait out)."""
        admitted = sorted((sent, done) for sent, done, status, _ in self.events if status == 200)
        ratios = []
        for sent, done, status, retry in self.events:
            if status != 429 or retry is None:
                continue
            before = [d for s, d in admitted if s < sent]
            if before and max(before) > done:
                ratios.append(retry / (max(before) - done))
        if not ratios:
            return {}
        r = np.array(ratios)
        return {
            "retry_after_over_real_wait_median": round(float(np.median(r)), 2),
            "retry_after_within_50pct": round(float(np.mean((r >= 0.5) & (r <= 1.5))), 3),
        }


def _body(model: str, text: str) -> bytes:
    return json.dumps(
        {"model": model, "input": text, "encoding_format": "base64"}, ensure_ascii=False
    ).encode()


def _check(level: Level, data: bytes, expected: np.ndarray) -> None:
    emb = json.loads(data)["data"][0]["embedding"]
    vec = np.frombuffer(base64.b64decode(emb), dtype="<f4") if isinstance(emb, str) else np.asarray(emb)
    diff = float(np.abs(vec - expected).max())
    level.max_diff = max(level.max_diff, diff)
    if diff > 1e-4:
        level.wrong += 1


async def closed_loop(
    host: str,
    port: int,
    model: str,
    texts: list[str],
    ref: np.ndarray,
    concurrency: int,
    max_requests: int,
    max_s: float,
    path: str = "/v1/embeddings",
) -> Level:
    level = Level(f"{concurrency} client{'s' if concurrency > 1 else ''}", concurrency)
    next_i = 0
    deadline = time.perf_counter() + max_s

    async def client() -> None:
        nonlocal next_i
        conn = Conn(host, port)
        while next_i < max_requests and time.perf_counter() < deadline:
            i = next_i
            next_i += 1
            k = i % len(texts)
            level.sent += 1
            t0 = time.perf_counter()
            try:
                status, _, data = await asyncio.wait_for(
                    conn.request("POST", path, _body(model, texts[k])), 60
                )
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                level.lost += 1
                conn.close()
                continue
            level.latencies.append(time.perf_counter() - t0)
            level.status[status] = level.status.get(status, 0) + 1
            if status == 200:
                level.ok += 1
                _check(level, data, ref[k])
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    level.seconds = time.perf_counter() - start
    return level


async def open_loop(
    host: str,
    port: int,
    model: str,
    texts: list[str],
    rate: float,
    seconds: float,
    max_connections: int,
    path: str = "/v1/embeddings",
) -> Level:
    """Requests at a fixed rate whatever the answers; a request that finds every connection busy waits."""
    level = Level(f"open loop {rate:.0f} req/s", max_connections)
    idle: list[Conn] = []
    opened = 0
    free = asyncio.Condition()
    tasks = []

    async def one(k: int) -> None:
        nonlocal opened
        async with free:
            while not idle and opened >= max_connections:
                await free.wait()
            if idle:
                conn = idle.pop()
            else:
                conn = Conn(host, port)
                opened += 1
        t0 = time.perf_counter()
        try:
            status, headers, _ = await asyncio.wait_for(
                conn.request("POST", path, _body(model, texts[k])), 120
            )
            t1 = time.perf_counter()
            level.latencies.append(t1 - t0)
            level.status[status] = level.status.get(status, 0) + 1
            level.ok += status == 200
            retry = headers.get("retry-after")
            level.events.append((t0, t1, status, float(retry) if retry else None))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            level.lost += 1
            conn.close()
        async with free:
            idle.append(conn)
            free.notify()

    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        level.sent += 1
        tasks.append(asyncio.create_task(one(i % len(texts))))
    await asyncio.gather(*tasks)
    level.seconds = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return level


async def _metric_sums(host: str, port: int) -> tuple[float, float]:
    conn = Conn(host, port)
    try:
        _, _, data = await conn.request("GET", "/metrics")
    finally:
        conn.close()
    text = data.decode()
    total = sum(float(m) for m in re.findall(r"^m3e_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    count = sum(float(m) for m in re.findall(r"^m3e_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    return total, count


def offline(model: Any, texts: list[str], repeats: int = 1) -> tuple[float, np.ndarray]:
    """Best of ``repeats`` runs of encode (default batch size, no prompt), texts per second."""
    best = 0.0
    vectors = np.zeros((0, 0), dtype=np.float32)
    for _ in range(repeats):
        t0 = time.perf_counter()
        vectors = model.encode(texts, prompt="")
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best, vectors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server under test: its process, where it answers, and the name and path requests use."""

    label: str
    proc: subprocess.Popen[bytes]
    port: int
    model: str
    path: str
    health: str = "/health"
    metrics: bool = False  # m3e's /metrics (mean batch size)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before it was ready")
        try:
            status, _, _ = asyncio.run(Conn("127.0.0.1", port).request("GET", path))
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")


def start_m3e(model_dir: str, name: str, args: argparse.Namespace) -> Server:
    port = _free_port()
    cmd = [sys.executable, "-m", "m3e.cli", "serve", f"{model_dir}={name}", "--port", str(port)]
    cmd += ["--threads", str(args.threads), "--default-side", "none", *args.server_arg]
    if args.max_queue:
        cmd += ["--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(proc, port, "/health", "m3e serve")
    return Server("m3e serve", proc, port, name, "/v1/embeddings", metrics=True)


# ---------------------------------------------------------------------- infinity-emb, in its own venv


def infinity_venv(venv: Path, version: str) -> Path:
    """The venv's infinity_emb command, installing infinity-emb[server,torch] there first if needed. This
    interpreter's torch (a CPU build) is copied into the venv, so pip keeps it instead of downloading one."""
    command = venv / "bin" / "infinity_emb"
    marker = venv / f".infinity-emb-{version}"
    if command.exists() and marker.exists():
        return command
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in [*ours.glob("torch"), *ours.glob("torchgen"), *ours.glob("torch-*.dist-info")]:
        shutil.copytree(entry, site / entry.name, symlinks=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        f"infinity-emb[server,torch]=={version}",
    ]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install infinity-emb failed: {done.stderr.strip()[-2000:]}")
    marker.touch()
    return command


def infinity_model_dir(model_dir: str, out: Path) -> Path:
    """The model directory as infinity's transformers 4 reads it: a tokenizer saved by transformers 5 names
    its class TokenizersBackend, which 4.x knows as PreTrainedTokenizerFast (same tokenizer.json)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def start_infinity(model_dir: str, name: str, args: argparse.Namespace) -> Server:
    command = infinity_venv(args.infinity_venv, args.infinity_version)
    served_dir = infinity_model_dir(model_dir, args.infinity_venv / "model")
    port = _free_port()
    cmd = [
        str(command),
        "v2",
        "--model-id",
        str(served_dir),
        "--served-model-name",
        name,
        "--port",
        str(port),
    ]
    cmd += ["--host", "127.0.0.1", "--engine", "torch", "--device", "cpu", "--dtype", "float32"]
    cmd += ["--batch-size", "64", "--no-compile"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _wait_ready(proc, port, "/health", "infinity_emb")
    return Server(f"infinity-emb {args.infinity_version}", proc, port, name, "/embeddings")


# ---------------------------------------------------------------------- the run


def load_levels(server: Server, texts: list[str], ref: np.ndarray, args: argparse.Namespace) -> list[Level]:
    """1, 16 and 64 clients in a closed loop, then an open loop at twice the 64-client throughput."""
    levels: list[Level] = []
    plan = [
        (1, 150, min(args.level_seconds, 15.0)),
        (16, len(texts), args.level_seconds),
        (64, len(texts), args.level_seconds),
    ]
    for concurrency, n, seconds in plan:
        before = asyncio.run(_metric_sums("127.0.0.1", server.port)) if server.metrics else (0.0, 0.0)
        level = asyncio.run(
            closed_loop(
                "127.0.0.1", server.port, server.model, texts, ref, concurrency, n, seconds, server.path
            )
        )
        after = asyncio.run(_metric_sums("127.0.0.1", server.port)) if server.metrics else (0.0, 0.0)
        level.batch_mean = (after[0] - before[0]) / max(after[1] - before[1], 1)
        levels.append(level)
        print(server.label, json.dumps(level.row()), flush=True)
    rate = 2 * levels[-1].ok / levels[-1].seconds
    sat = asyncio.run(
        open_loop(
            "127.0.0.1", server.port, server.model, texts, rate, args.saturation_seconds, 256, server.path
        )
    )
    levels.append(sat)
    print(server.label, json.dumps(sat.row()), flush=True)
    status, _, _ = asyncio.run(Conn("127.0.0.1", server.port).request("GET", server.health))
    print(f"{server.label}: health after saturation {status}", flush=True)
    return levels


def measure(
    start: Callable[[], Server], texts: list[str], ref: np.ndarray, args: argparse.Namespace
) -> tuple[Server, list[Level], int]:
    server = start()
    try:
        levels = load_levels(server, texts, ref, args)
    finally:
        code = server.stop()
    print(f"{server.label}: exit status after SIGTERM {code}", flush=True)
    return server, levels, code


def _tput(level: Level) -> float:
    return level.ok / level.seconds if level.seconds else 0.0


def comparison(ours: list[Level], theirs: list[Level]) -> list[dict[str, Any]]:
    """m3e over infinity per level: throughput, p50 and p99 latency."""
    rows = []
    for a, b in zip(ours[:3], theirs[:3], strict=True):
        ra, rb = a.row(), b.row()
        rows.append(
            {
                "level": a.name,
                "throughput_ratio": round(_tput(a) / _tput(b), 2) if _tput(b) else math.nan,
                "p50_ratio": round(ra["p50_ms"] / rb["p50_ms"], 2),
                "p99_ratio": round(ra["p99_ms"] / rb["p99_ms"], 2),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--texts", type=int, default=1500, help="distinct texts (default 1500)")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads, servers and offline"
    )
    parser.add_argument(
        "--max-queue", type=int, default=None, help="m3e's queue limit in texts (default: the server's)"
    )
    parser.add_argument("--level-seconds", type=float, default=20.0, help="time cap per closed-loop level")
    parser.add_argument(
        "--saturation-seconds", type=float, default=12.0, help="length of the 2x open-loop run"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra argument for m3e serve (repeatable)"
    )
    parser.add_argument(
        "--no-infinity", dest="infinity", action="store_false", help="measure m3e serve alone"
    )
    parser.add_argument(
        "--infinity-venv",
        type=Path,
        default=Path.home() / ".cache" / "m3e" / "bench" / "infinity-venv",
        help="where infinity-emb is installed (created if missing)",
    )
    parser.add_argument("--infinity-version", default="0.0.78", help="infinity-emb version (default 0.0.78)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    import m3e
    from m3e.paths import default_model_path

    model_dir = str(args.model or default_model_path())
    torch.set_num_threads(args.threads)
    model = m3e.load(model_dir)
    name = model.name
    texts = make_texts(args.texts)
    tokens = [len(x) for x in model.tokenize(texts)]
    print(
        f"model {name} ({model_dir}), {len(texts)} texts, "
        f"mean {np.mean(tokens):.1f} tokens (max {max(tokens)}), "
        f"{args.threads} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    offline_before, ref = offline(model, texts)  # no prompt: what both servers embed
    print(f"offline encode: {offline_before:.1f} texts/s", flush=True)
    del model

    _, ours, m3e_exit = measure(lambda: start_m3e(model_dir, name, args), texts, ref, args)
    theirs: list[Level] = []
    infinity_note = "not run (--no-infinity)"
    if args.infinity:
        try:
            server, theirs, _ = measure(lambda: start_infinity(model_dir, name, args), texts, ref, args)
            infinity_note = server.label
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            infinity_note = f"could not be measured here: {exc}"
            print(f"infinity-emb {infinity_note}; the results are m3e serve's alone", flush=True)

    torch.set_num_threads(args.threads)
    offline_after, _ = offline(m3e.load(model_dir), texts)
    print(f"offline encode again: {offline_after:.1f} texts/s", flush=True)
    offline_tput = (offline_before + offline_after) / 2
    top = _tput(ours[2])
    print(f"m3e 64 clients / offline: {top / offline_tput:.2f} ({top:.1f} vs {offline_tput:.1f} texts/s)")
    sat = ours[-1].row()
    five = sum(v for k, v in ours[-1].status.items() if k >= 500)
    print(
        f"m3e 2x saturation: {sat['status']} 5xx={five} lost={ours[-1].lost}; "
        f"answered p50 {sat.get('ok_p50_ms')} ms, p99 {sat.get('ok_p99_ms')} ms "
        f"(p99/p50 {sat.get('ok_p99_over_p50')}); Retry-After / real wait: median "
        f"{sat.get('retry_after_over_real_wait_median')}, within ±50%: {sat.get('retry_after_within_50pct')}"
    )
    ratios = comparison(ours, theirs) if theirs else []
    for r in ratios:
        print(
            f"m3e / infinity, {r['level']}: throughput x{r['throughput_ratio']}, p50 x{r['p50_ratio']}, "
            f"p99 x{r['p99_ratio']}"
        )
    if args.json:
        out = {
            "model": name,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {args.threads} torch threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
            "load_average_at_end": os.getloadavg()[0],
            "texts": len(texts),
            "mean_tokens": float(np.mean(tokens)),
            "offline_texts_per_s": [round(offline_before, 1), round(offline_after, 1)],
            "m3e": [lv.row() for lv in ours],
            "m3e_exit_status": m3e_exit,
            "infinity": infinity_note,
            "infinity_levels": [lv.row() for lv in theirs],
            "m3e_over_infinity": ratios,
            "ratio_64_to_offline": round(top / offline_tput, 3),
        }
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
