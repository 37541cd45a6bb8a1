"""`m3e serve` as a process under size and volume: an 8 MB text costs what a 2 KB one does and leaves RSS
where it was; a soak of 10,000 requests does not grow it. RSS is the server process's own (/proc)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")]  # slow: an 8 MB request, a 10k-request soak

MB = 1024 * 1024
UNIT = "向量检索模型把句子表示成向量，用余弦相似度比较。The quick brown fox jumps. "


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str

    def rss(self) -> int:
        return _status_kb(self.proc.pid, "VmRSS") * 1024

    def peak_rss(self) -> int:
        return _status_kb(self.proc.pid, "VmHWM") * 1024

    def reset_peak(self) -> bool:
        """Start a new peak-RSS window (Linux clear_refs); False where that is not allowed."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(tiny_st_model_dir: Path) -> Iterator[Served]:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "m3e.cli", "serve", str(tiny_st_model_dir), "--port", str(port)]
    proc = subprocess.Popen([*command, "--threads", "1"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _healthy(url), "m3e serve to become ready", timeout=120)
        assert proc.poll() is None, f"m3e serve exited with {proc.returncode}"
        yield Served(proc, url)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _embed(client: httpx.Client, url: str, text: str) -> None:
    resp = client.post(url + "/v1/embeddings", json={"input": text}, timeout=120)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["x-m3e-truncated"] == ("1" if len(text) > 1000 else "0")


def test_an_8_mb_text_costs_what_a_2_kb_one_does(served: Served) -> None:
    small = (UNIT * 100)[:2048]
    big = (UNIT * 200_000)[:4_400_000]  # 8.5 MB of UTF-8
    assert len(big.encode()) > 8 * MB
    with httpx.Client() as client:
        for _ in range(5):
            _embed(client, served.url, small)
        base = served.rss()
        served.reset_peak()
        for _ in range(5):
            _embed(client, served.url, small)
        small_peak = served.peak_rss()
        served.reset_peak()
        _embed(client, served.url, big)
        big_peak = served.peak_rss()
        with ThreadPoolExecutor(3) as pool:  # three at once
            list(pool.map(lambda _: _embed(httpx.Client(), served.url, big), range(3)))
        burst_peak = served.peak_rss()
        after = served.rss()
    assert big_peak <= 2 * small_peak, (big_peak / MB, small_peak / MB)
    # The body and its decoded text are held; nothing proportional to tokenizing the whole text is.
    assert big_peak - base < 48 * MB, f"one 8 MB text took the server {(big_peak - base) / MB:.0f} MB up"
    assert burst_peak - base < 120 * MB, f"three took it {(burst_peak - base) / MB:.0f} MB up"
    assert after - base < 16 * MB, f"RSS stayed {(after - base) / MB:.0f} MB above where it was"


@pytest.mark.slow
def test_a_soak_of_10k_requests_does_not_grow_rss(served: Served) -> None:
    texts = [f"{UNIT[: 10 + i % 40]} {i}" for i in range(10_000)]

    def send(chunk: list[str]) -> None:
        with httpx.Client() as client:
            for text in chunk:
                resp = client.post(served.url + "/v1/embeddings", json={"input": text}, timeout=60)
                assert resp.status_code == 200, resp.text[:300]

    def run(part: list[str], clients: int = 8) -> None:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, [part[k::clients] for k in range(clients)]))

    run(texts[:1000])  # allocator and caches settle
    base = served.rss()
    run(texts[1000:])
    grown = served.rss() - base
    assert grown < 50 * MB, f"RSS grew {grown / MB:.1f} MB over 9,000 requests"
