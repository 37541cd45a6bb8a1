"""Errors a client can handle: unencodable text, shutdown with requests in flight, slow bodies, clients that
leave, oversized bodies and overload, each in OpenAI's error body (never a plain-text 500 or a reset)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import m3e
from m3e.serving import ServeConfig, ServerThread, create_app
from tests.waiting import wait_until

ERROR_KEYS = {"message", "type", "param", "code"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def model(tiny_st_model_dir: Path) -> Any:
    return m3e.load(str(tiny_st_model_dir))


@pytest.fixture(scope="module")
def server(model: Any):
    config = ServeConfig(max_request_bytes=4000, body_timeout_s=1.0, warmup=False)
    with ServerThread(create_app({"tiny": model}, config)) as srv:
        yield srv


class Gated:
    """Wraps a model so that its forwards wait for a gate: the test decides when the worker is busy."""

    def __init__(self, model: Any):
        self.model = model
        self.dim = model.dim
        self.entered = threading.Event()
        self.gate = threading.Event()

    def embed_token_ids(self, batch: Any, normalize: bool = True, prompt_length: int = 0) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.model.embed_token_ids(batch, normalize=normalize, prompt_length=prompt_length)


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    return dict(body["error"])


def _send_and_leave(url: str, request: bytes) -> None:
    """Send bytes on a fresh connection and close it without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)


def _raw(url: str, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send bytes on a fresh connection and read the answer until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _metric(url: str, prefix: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------------- unencodable text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"input": "ab\\ud800cd"}', "input"),
        ('{"input": ["ok", "\\udfff"]}', "input"),
        ('{"input": "ok", "model": "tiny\\ud800"}', "model"),
        ('{"input": "ok", "prompt_name": "\\ud83d"}', "prompt_name"),
        ('{"input": "ok", "user": "\\ud800"}', "user"),
    ],
)
def test_lone_surrogates_are_400_in_openai_body(server: ServerThread, body: str, param: str) -> None:
    resp = httpx.post(server.url + "/v1/embeddings", content=body, headers=JSON)
    err = _error(resp, 400)
    assert err["param"] == param and err["code"] == "invalid_value"
    assert "surrogate" in err["message"]
    paired = httpx.post(server.url + "/v1/embeddings", content='{"input": "\\ud83d\\ude00 ok"}', headers=JSON)
    assert paired.status_code == 200  # a surrogate pair is one character (an emoji)


def test_an_unexpected_exception_is_a_500_in_openai_body(model: Any) -> None:
    app = create_app({"tiny": model}, ServeConfig(warmup=False))

    def broken(name: str) -> dict[str, object]:
        raise RuntimeError("boom")

    app.state.service.model_details = broken
    with ServerThread(app) as srv:
        err = _error(httpx.get(srv.url + "/v1/models"), 500)
        assert err["type"] == "server_error" and "RuntimeError" in err["message"]


# ---------------------------------------------------------------------- bodies: too large, too slow


def test_an_oversized_body_gets_its_413_not_a_reset(server: ServerThread) -> None:
    big = json.dumps({"input": ["hello world"] * 800_000}).encode()  # 12 MB against a 4000-byte limit
    resp = httpx.post(server.url + "/v1/embeddings", content=big, headers=JSON)
    err = _error(resp, 413)
    assert err["code"] == "request_too_large" and "4000" in err["message"]
    # The connection stays usable: the body was read to its end, not left in the socket.
    with httpx.Client() as client:
        assert client.post(server.url + "/v1/embeddings", content=big, headers=JSON).status_code == 413
        assert client.post(server.url + "/v1/embeddings", json={"input": "ok"}).status_code == 200


def test_a_client_expecting_100_continue_gets_413_before_sending(server: ServerThread) -> None:
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, body = _raw(server.url, head.encode())
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_a_slow_body_is_dropped_without_holding_the_server(server: ServerThread) -> None:
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    answer: dict[str, Any] = {}
    slow = threading.Thread(target=lambda: answer.update(r=_raw(server.url, head.encode() + b'{"input": "a')))
    slow.start()
    wait_until(
        lambda: _metric(server.url, "m3e_requests_in_flight") >= 1 or not slow.is_alive(), "the slow body"
    )
    # Meanwhile the server answers others.
    assert httpx.post(server.url + "/v1/embeddings", json={"input": "ok"}).status_code == 200
    slow.join(60)
    status, headers, body = answer["r"]
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    wait_until(lambda: _metric(server.url, "m3e_requests_in_flight") == 0, "the slow request to leave")


# ---------------------------------------------------------------------- clients that leave


def test_a_client_that_disconnects_is_no_server_error(model: Any) -> None:
    app = create_app({"tiny": model}, ServeConfig(warmup=False))
    gated = Gated(model)
    app.state.batcher.models["tiny"] = gated
    with ServerThread(app) as srv:
        busy = threading.Thread(
            target=lambda: httpx.post(srv.url + "/v1/embeddings", json={"input": "a"}, timeout=60)
        )
        busy.start()
        assert gated.entered.wait(30)
        body = json.dumps({"input": ["left before the answer"] * 3}).encode()
        head = (
            "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        _send_and_leave(srv.url, head.encode() + body)
        _send_and_leave(srv.url, head.encode() + body[:10])  # in the middle of its body
        wait_until(
            lambda: _metric(srv.url, 'm3e_requests_total{endpoint="embeddings",status="499"}') == 2, "499s"
        )
        gated.gate.set()
        busy.join(60)
        wait_until(lambda: app.state.batcher.queued_texts == 0, "the queue to empty")
        metrics = httpx.get(srv.url + "/metrics").text
    assert 'status="5' not in metrics
    assert 'm3e_texts_total{model="tiny"} 1.0' in metrics  # the texts of the client that left were dropped


# ---------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("finish", [True, False], ids=["finish-in-grace", "grace-runs-out"])
def test_shutdown_with_requests_in_flight(model: Any, finish: bool) -> None:
    app = create_app({"tiny": model}, ServeConfig(warmup=False, shutdown_grace_s=0.5))
    gated = Gated(model)
    app.state.batcher.models["tiny"] = gated
    service = app.state.service
    srv = ServerThread(app).start()
    answers: dict[int, httpx.Response] = {}

    def post(k: int) -> None:
        answers[k] = httpx.post(srv.url + "/v1/embeddings", json={"input": [f"text {k}"]}, timeout=60)

    clients = [threading.Thread(target=post, args=(k,)) for k in range(3)]
    try:
        clients[0].start()
        assert gated.entered.wait(30)  # one in the forward pass, two queued behind it
        for c in clients[1:]:
            c.start()
        wait_until(lambda: app.state.batcher.queued_texts == 2, "two requests in the queue")
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        wait_until(lambda: service.draining, "the shutdown to start")
        if not finish:
            wait_until(service._grace_over.is_set, "the grace to run out")
            for c in clients:
                c.join(60)
        gated.gate.set()
        for c in clients:
            c.join(60)
        stopper.join(60)
    finally:
        gated.gate.set()
        srv.stop()
    if finish:
        assert [answers[k].status_code for k in range(3)] == [200, 200, 200]
    else:
        for k in range(3):
            err = _error(answers[k], 503)
            assert err["code"] == "shutting_down" and err["type"] == "server_error"
    assert not srv.thread.is_alive()


# ---------------------------------------------------------------------- overload


def test_429_when_the_queued_work_would_take_too_long(model: Any) -> None:
    app = create_app({"tiny": model}, ServeConfig(warmup=False, max_queue_seconds=2.0))
    gated = Gated(model)
    batcher = app.state.batcher
    batcher.models["tiny"] = gated
    batcher.seed_throughput("tiny", 10, 1.0)  # 10 tokens/s, as if measured
    answers: dict[str, httpx.Response] = {}
    threads: list[threading.Thread] = []
    with ServerThread(app) as srv:
        url = srv.url + "/v1/embeddings"

        def post(key: str, text: str) -> None:
            thread = threading.Thread(
                target=lambda: answers.update({key: httpx.post(url, json={"input": text}, timeout=60)})
            )
            thread.start()
            threads.append(thread)

        try:
            post("busy", "a")  # 3 tokens in the forward pass: 0.3 s
            assert gated.entered.wait(30)
            post("queued", "hello world")  # 4 tokens queued: 0.4 s, 0.7 s in all
            wait_until(lambda: batcher.queued_texts == 1, "the second request in the queue")
            assert batcher.queued_seconds() == pytest.approx(0.7)
            err = _error(
                httpx.post(url, json={"input": "北京上海广州深圳城市旅游"}), 429
            )  # 14 tokens: 1.4 s more
            assert err["code"] == "rate_limit_exceeded" and "about 1 s of work" in err["message"]
            refused = httpx.post(url, json={"input": "北京上海广州深圳城市旅游"})
            assert refused.headers["retry-after"] == "1"  # ceil(0.7 s)
            post("fits", "ok")  # 3 tokens, 0.3 s more: within 2 s
            wait_until(lambda: batcher.queued_texts == 2, "the small request in the queue")
        finally:
            gated.gate.set()
            for thread in threads:
                thread.join(60)
    assert [answers[k].status_code for k in ("busy", "queued", "fits")] == [200, 200, 200]
