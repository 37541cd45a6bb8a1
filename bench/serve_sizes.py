"""What one request's size costs `m3e serve`: time and server memory of an 8 MB text against a 2 KB one.

    .venv/bin/python bench/serve_sizes.py [--model DIR] [--repeats 5]

Starts ``m3e serve`` (loopback), then sends, one at a time: 2 KB texts, 8 MB texts, then three 8 MB texts at
once. For each: the median request time, and the server process's peak RSS over the phase (Linux VmHWM, reset
between phases through /proc/PID/clear_refs) against its RSS before; at the end, RSS after the burst.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MB = 1024 * 1024
UNIT = "向量检索模型把句子表示成向量，用余弦相似度比较。The quick brown fox jumps over the lazy dog. "


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _text_of(size: int) -> str:
    """Mixed Chinese and English text of ``size`` bytes of UTF-8 (whole characters)."""
    unit = UNIT.encode()
    data = (unit * (size // len(unit) + 1))[:size]
    return data.decode("utf-8", errors="ignore")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--repeats", type=int, default=5, help="requests per size (default 5)")
    args = parser.parse_args()

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "m3e.cli",
        "serve",
        *([args.model] if args.model else []),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen([*cmd, "--no-access-log"], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=300)
    try:
        while True:
            try:
                if client.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit("m3e serve exited")
            time.sleep(0.3)

        def post(text: str) -> float:
            start = time.perf_counter()
            resp = client.post(url + "/v1/embeddings", json={"input": text})
            assert resp.status_code == 200, resp.text[:200]
            return time.perf_counter() - start

        def phase(texts: list[str], together: int = 1) -> dict[str, float]:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            before = _status_kb(proc.pid, "VmRSS") / 1024
            if together > 1:
                with ThreadPoolExecutor(together) as pool:
                    times = list(
                        pool.map(
                            lambda t: httpx.post(
                                url + "/v1/embeddings", json={"input": t}, timeout=300
                            ).elapsed.total_seconds(),
                            texts,
                        )
                    )
            else:
                times = [post(t) for t in texts]
            peak = _status_kb(proc.pid, "VmHWM") / 1024
            return {
                "median_ms": round(statistics.median(times) * 1000, 1),
                "rss_before_mb": round(before, 1),
                "peak_over_before_mb": round(peak - before, 1),
            }

        small = _text_of(2 * 1024)
        big = _text_of(8 * MB)
        for _ in range(3):
            post(small)
        results = {
            "2 KB text": {"utf8_bytes": len(small.encode()), **phase([small] * args.repeats)},
            "8 MB text": {"utf8_bytes": len(big.encode()), **phase([big] * args.repeats)},
            "3 x 8 MB at once": {"utf8_bytes": 3 * len(big.encode()), **phase([big] * 3, together=3)},
        }
        time.sleep(1)
        base = results["2 KB text"]["rss_before_mb"]
        results["after"] = {"rss_mb": round(_status_kb(proc.pid, "VmRSS") / 1024, 1), "rss_before_mb": base}
        print(json.dumps(results, indent=2))
        ratio = results["8 MB text"]["median_ms"] / results["2 KB text"]["median_ms"]
        print(f"8 MB / 2 KB time: {ratio:.2f}; load average {os.getloadavg()[0]:.1f}")
    finally:
        proc.terminate()
        proc.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
