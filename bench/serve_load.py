"""Load test for `m3e serve` on loopback, compared in the same run with offline `encode`.

    .venv/bin/python bench/serve_load.py [--model PATH] [--json out.json]

1. offline: ``model.encode(texts)`` throughput on the texts the server will get;
2. starts ``m3e serve`` in a subprocess and waits for /health;
3. closed loop: 1, 16 and 64 concurrent clients, each sending one text per request and the
   next request as soon as the answer is in (bounded in requests and seconds per level);
   throughput, p50 / p99 latency, the server's mean batch size, and every vector checked
   against the offline one;
4. open loop at 2x the measured 64-client throughput for a few seconds: counts of 200, 429,
   other 4xx, 5xx and lost requests (no answer);
5. offline again (the machine is shared: the two offline numbers show the drift), SIGTERM.

The load generator speaks HTTP/1.1 with keep-alive over asyncio streams itself: a general
HTTP client costs about as much CPU per request as the server does, and it shares the cores.
Everything stops by itself: each level has a request cap and a time cap.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
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
_ZH = "今天天气很好我们去公园散步吧向量检索模型把句子表示成向量用余弦相似度比较保险理赔需要哪些材料北京和上海是中国最大的城市学生想买一台笔记本电脑"


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
        }


def _body(model: str, text: str) -> bytes:
    return json.dumps({"model": model, "input": text, "encoding_format": "base64"}, ensure_ascii=False).encode()


def _check(level: Level, data: bytes, expected: np.ndarray) -> None:
    emb = json.loads(data)["data"][0]["embedding"]
    vec = np.frombuffer(base64.b64decode(emb), dtype="<f4")
    diff = float(np.abs(vec - expected).max())
    level.max_diff = max(level.max_diff, diff)
    if diff > 1e-4:
        level.wrong += 1


async def closed_loop(
    host: str, port: int, model: str, texts: list[str], ref: np.ndarray, concurrency: int, max_requests: int, max_s: float
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
                status, _, data = await asyncio.wait_for(conn.request("POST", "/v1/embeddings", _body(model, texts[k])), 60)
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
    host: str, port: int, model: str, texts: list[str], rate: float, seconds: float, max_connections: int
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
            status, _, _ = await asyncio.wait_for(conn.request("POST", "/v1/embeddings", _body(model, texts[k])), 120)
            level.latencies.append(time.perf_counter() - t0)
            level.status[status] = level.status.get(status, 0) + 1
            level.ok += status == 200
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
    """Best of ``repeats`` runs of encode (default batch size 32), texts per second."""
    best = 0.0
    vectors = np.zeros((0, 0), dtype=np.float32)
    for _ in range(repeats):
        t0 = time.perf_counter()
        vectors = model.encode(texts)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best, vectors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model_path: str | None, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "m3e.cli", "serve", *([model_path] if model_path else []), "--port", str(port)]
    cmd += ["--max-queue", str(args.max_queue), "--threads", str(args.threads), *args.server_arg]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"m3e serve exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            status, _, _ = asyncio.run(Conn("127.0.0.1", port).request("GET", "/health"))
            if status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("m3e serve did not become ready in 180 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path (default: m3e's default model)")
    parser.add_argument("--texts", type=int, default=1500, help="distinct texts (default 1500)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads, server and offline")
    parser.add_argument("--max-queue", type=int, default=128, help="the server's queue limit in texts (default 128: two full batches)")
    parser.add_argument("--level-seconds", type=float, default=25.0, help="time cap per closed-loop level")
    parser.add_argument("--saturation-seconds", type=float, default=12.0, help="length of the 2x open-loop run")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for m3e serve (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    import m3e

    torch.set_num_threads(args.threads)
    model = m3e.load(args.model)
    name = model.name
    texts = make_texts(args.texts)
    tokens = [len(x) for x in model.tokenize(texts)]
    print(f"model {name}, {len(texts)} texts, mean {np.mean(tokens):.1f} tokens (max {max(tokens)}), "
          f"{args.threads} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}", flush=True)
    offline_before, ref = offline(model, texts)
    print(f"offline encode: {offline_before:.1f} texts/s", flush=True)
    del model

    port = _free_port()
    proc = start_server(args.model, port, args)
    levels: list[Level] = []
    try:
        plan = [(1, 150, min(args.level_seconds, 15.0)), (16, len(texts), args.level_seconds), (64, len(texts), args.level_seconds)]
        for concurrency, n, seconds in plan:
            before = asyncio.run(_metric_sums("127.0.0.1", port))
            level = asyncio.run(closed_loop("127.0.0.1", port, name, texts, ref, concurrency, n, seconds))
            after = asyncio.run(_metric_sums("127.0.0.1", port))
            level.batch_mean = (after[0] - before[0]) / max(after[1] - before[1], 1)
            levels.append(level)
            print(json.dumps(level.row()), flush=True)
        rate = 2 * levels[-1].ok / levels[-1].seconds
        sat = asyncio.run(open_loop("127.0.0.1", port, name, texts, rate, args.saturation_seconds, 256))
        levels.append(sat)
        print(json.dumps(sat.row()), flush=True)
        status, _, _ = asyncio.run(Conn("127.0.0.1", port).request("GET", "/health"))
        print(f"health after saturation: {status}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    print(f"server exit status after SIGTERM: {code}", flush=True)

    torch.set_num_threads(args.threads)
    offline_after, _ = offline(m3e.load(args.model), texts)
    print(f"offline encode again: {offline_after:.1f} texts/s", flush=True)
    offline_tput = (offline_before + offline_after) / 2
    top = levels[2].ok / levels[2].seconds
    print(f"64 clients / offline: {top / offline_tput:.2f} ({top:.1f} vs {offline_tput:.1f} texts/s)")
    sat_row = levels[-1].row()
    five = sum(v for k, v in levels[-1].status.items() if k >= 500)
    print(f"2x saturation: {sat_row['status']} 5xx={five} lost={levels[-1].lost}")
    if args.json:
        out = {
            "model": name,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {args.threads} torch threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
            "load_average_at_end": os.getloadavg()[0],
            "texts": len(texts),
            "mean_tokens": float(np.mean(tokens)),
            "offline_texts_per_s": [round(offline_before, 1), round(offline_after, 1)],
            "levels": [lv.row() for lv in levels],
            "ratio_64_to_offline": round(top / offline_tput, 3),
        }
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
