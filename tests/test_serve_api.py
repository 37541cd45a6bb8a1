"""`m3e serve` over real HTTP on 127.0.0.1: the OpenAI contract, errors, concurrency, back-pressure.

Servers run in background threads (uvicorn on a pre-bound free port) with the tiny test models;
the official `openai` client and raw httpx requests talk to them.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

import m3e
from m3e.serving import ServeConfig, ServerThread, create_app

TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "The weather is nice today.",
    "向量检索模型把句子表示成向量。" * 3,
    "hello",
    "北京和上海 Beijing and Shanghai",
    "保险理赔需要哪些材料？",
]
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def models(tiny_st_model_dir: Path, tiny_cls_model_dir: Path) -> dict[str, Any]:
    return {"tiny": m3e.load(str(tiny_st_model_dir)), "tiny-cls": m3e.load(str(tiny_cls_model_dir))}


@pytest.fixture(scope="module")
def server(models: dict[str, Any]):
    config = ServeConfig(max_batch_size=16, max_batch_tokens=2048, token_ids="model")  # the models' own ids
    with ServerThread(create_app(models, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict_server(models: dict[str, Any]):
    config = ServeConfig(
        api_key="sekret",
        max_request_bytes=4000,
        on_long_input="reject",
        cors_origins=["http://app.example"],
        token_ids="model",
    )
    with ServerThread(create_app({"tiny": models["tiny"]}, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerThread):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _assert_error(
    resp: Any, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["type"], str)
    assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming what was awaited if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def _health_status(url: str) -> int | None:
    """GET /health's status, or None while the server does not accept connections yet."""
    try:
        return httpx.get(url + "/health").status_code
    except httpx.HTTPError:
        return None


def _close(a: Any, b: Any) -> None:
    assert float(np.max(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)))) <= 1e-5


# ---------------------------------------------------------------------- the OpenAI contract


@pytest.mark.parametrize("fmt", ["float", None])  # None: the client asks for base64 and decodes it
def test_openai_client_text_inputs_match_encode(client: Any, models: dict[str, Any], fmt: str | None) -> None:
    kw = {"encoding_format": fmt} if fmt else {}
    expected = models["tiny"].encode(TEXTS)
    resp = client.embeddings.create(model="tiny", input=TEXTS, **kw)
    assert resp.object == "list" and resp.model == "tiny"
    assert [d.index for d in resp.data] == list(range(len(TEXTS)))
    for d, e in zip(resp.data, expected, strict=True):
        assert d.object == "embedding"
        _close(d.embedding, e)
    n_tokens = sum(len(x) for x in models["tiny"].tokenize(TEXTS))
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == n_tokens

    single = client.embeddings.create(model="tiny", input=TEXTS[0], **kw)
    assert len(single.data) == 1
    _close(single.data[0].embedding, expected[0])


@pytest.mark.parametrize("fmt", ["float", None])
def test_openai_client_token_id_inputs_match_encode(
    client: Any, models: dict[str, Any], fmt: str | None
) -> None:
    kw = {"encoding_format": fmt} if fmt else {}
    tok = models["tiny"].tokenizer
    content = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    expected = models["tiny"].encode(TEXTS)
    many = client.embeddings.create(model="tiny", input=content, **kw)
    for d, e in zip(many.data, expected, strict=True):
        _close(d.embedding, e)
    assert many.usage.prompt_tokens == sum(len(x) for x in models["tiny"].tokenize(TEXTS))
    one = client.embeddings.create(model="tiny", input=content[1], **kw)
    _close(one.data[0].embedding, expected[1])


@pytest.mark.parametrize("fmt", ["float", None])
def test_dimensions_truncate_and_renormalise(client: Any, models: dict[str, Any], fmt: str | None) -> None:
    kw = {"encoding_format": fmt} if fmt else {}
    full = models["tiny"].encode(TEXTS)[:, :8]
    expected = full / np.linalg.norm(full, axis=1, keepdims=True)
    resp = client.embeddings.create(model="tiny", input=TEXTS, dimensions=8, **kw)
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert got.shape == (len(TEXTS), 8)
    _close(got, expected)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_model_field_selects_the_model_and_models_are_listed(
    client: Any, server: ServerThread, models: dict[str, Any]
) -> None:
    resp = client.embeddings.create(model="tiny-cls", input=TEXTS[:2], encoding_format="float")
    assert resp.model == "tiny-cls"
    for d, e in zip(resp.data, models["tiny-cls"].encode(TEXTS[:2]), strict=True):
        _close(d.embedding, e)
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-cls"]
    assert client.models.retrieve("tiny-cls").id == "tiny-cls"
    for path in ("/v1/models", "/models"):
        body = httpx.get(server.url + path).json()
        assert body["object"] == "list"
        assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
            ("tiny", "model", "m3e"),
            ("tiny-cls", "model", "m3e"),
        ]


def test_raw_base64_is_little_endian_float32_and_plain_path_works(
    server: ServerThread, models: dict[str, Any]
) -> None:
    resp = httpx.post(
        server.url + "/embeddings", json={"model": "tiny", "input": TEXTS[:3], "encoding_format": "base64"}
    )
    assert resp.status_code == 200
    assert resp.headers["x-m3e-truncated"] == "0"
    body = resp.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    _close(got, models["tiny"].encode(TEXTS[:3]))


def test_missing_model_uses_the_first_served(server: ServerThread) -> None:
    resp = httpx.post(server.url + "/v1/embeddings", json={"input": "hello"})
    assert resp.status_code == 200 and resp.json()["model"] == "tiny"


def test_long_inputs_are_truncated_and_reported(server: ServerThread, models: dict[str, Any]) -> None:
    long_text = "北京上海广州深圳城市旅游" * 20  # far over the tiny model's 64 tokens
    resp = httpx.post(
        server.url + "/v1/embeddings", json={"model": "tiny", "input": [long_text, "hello", long_text]}
    )
    assert resp.status_code == 200
    assert resp.headers["x-m3e-truncated"] == "2"
    got = [d["embedding"] for d in resp.json()["data"]]
    _close(got, models["tiny"].encode([long_text, "hello", long_text]))
    assert resp.json()["usage"]["prompt_tokens"] == 64 + len(models["tiny"].tokenize(["hello"])[0]) + 64
    ids = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": [[10] * 200, [11, 12]]})
    assert ids.status_code == 200 and ids.headers["x-m3e-truncated"] == "1"


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "tiny", "input": ""}, "input", "invalid_value"),
        ({"model": "tiny", "input": ["ok", ""]}, "input", "invalid_value"),
        ({"model": "tiny", "input": []}, "input", "invalid_value"),
        ({"model": "tiny", "input": ["x"] * 2049}, "input", "invalid_value"),
        ({"model": "tiny", "input": [[]]}, "input", "invalid_value"),
        ({"model": "tiny", "input": ["text", 5]}, "input", None),
        ({"model": "tiny", "input": [1, "a"]}, "input", None),
        ({"model": "tiny", "input": [[1, 2], [3.5]]}, "input", None),
        ({"model": "tiny", "input": [True, False]}, "input", None),
        ({"model": "tiny", "input": {"text": "x"}}, "input", None),
        ({"model": "tiny", "input": 42}, "input", None),
        ({"model": "tiny", "input": [10**9]}, "input", "invalid_value"),
        ({"model": "tiny", "input": [-1, 5]}, "input", "invalid_value"),
        ({"model": "tiny"}, "input", "missing_required_parameter"),
        ({"model": "tiny", "input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
        ({"model": "tiny", "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
        ({"model": "tiny", "input": "x", "dimensions": "8"}, "dimensions", "invalid_value"),
        ({"model": "tiny", "input": "x", "dimensions": 33}, "dimensions", "invalid_value"),  # tiny has 32
        ({"model": 3, "input": "x"}, "model", None),
        (["not", "an", "object"], None, None),
    ],
)
def test_bad_requests_are_400_with_openai_body(
    server: ServerThread, body: Any, param: str | None, code: str | None
) -> None:
    err = _assert_error(httpx.post(server.url + "/v1/embeddings", json=body), 400, param, code)
    assert err["type"] == "invalid_request_error"


def test_invalid_json_is_400(server: ServerThread) -> None:
    resp = httpx.post(
        server.url + "/v1/embeddings", content=b'{"input": "x"', headers={"content-type": "application/json"}
    )
    _assert_error(resp, 400, None)


def test_unknown_model_is_404(server: ServerThread, client: Any) -> None:
    err = _assert_error(
        httpx.post(server.url + "/v1/embeddings", json={"model": "gpt-x", "input": "x"}),
        404,
        "model",
        "model_not_found",
    )
    assert "gpt-x" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    _assert_error(httpx.get(server.url + "/v1/models/nope"), 404, "model", "model_not_found")
    _assert_error(httpx.get(server.url + "/v2/whatever"), 404, None, "not_found")
    _assert_error(httpx.get(server.url + "/v1/embeddings"), 405, None, "method_not_allowed")


def test_api_key_is_required_when_set(strict_server: ServerThread) -> None:
    url = strict_server.url + "/v1/embeddings"
    _assert_error(httpx.post(url, json={"input": "x"}), 401, None, "invalid_api_key")
    _assert_error(
        httpx.post(url, json={"input": "x"}, headers={"Authorization": "Bearer wrong"}),
        401,
        None,
        "invalid_api_key",
    )
    _assert_error(httpx.get(strict_server.url + "/v1/models"), 401, None, "invalid_api_key")
    ok = httpx.post(url, json={"input": "x"}, headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200
    keyed = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="sekret", max_retries=0)
    assert len(keyed.embeddings.create(model="tiny", input=["a", "b"]).data) == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict_server.url + "/v1", api_key="bad", max_retries=0).embeddings.create(
            model="tiny", input="a"
        )
    assert httpx.get(strict_server.url + "/health").status_code == 200  # probes need no key


def test_body_too_large_is_413(strict_server: ServerThread) -> None:
    headers = {"Authorization": "Bearer sekret"}
    resp = httpx.post(
        strict_server.url + "/v1/embeddings", json={"input": ["hello world"] * 400}, headers=headers
    )
    _assert_error(resp, 413, None, "request_too_large")

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(10):
            yield b" " * 1000

    resp = httpx.post(
        strict_server.url + "/v1/embeddings",
        content=chunks(),
        headers={**headers, "content-type": "application/json"},
    )
    _assert_error(resp, 413, None, "request_too_large")


def test_reject_mode_refuses_long_inputs(strict_server: ServerThread) -> None:
    headers = {"Authorization": "Bearer sekret"}
    url = strict_server.url + "/v1/embeddings"
    err = _assert_error(
        httpx.post(url, json={"input": ["ok", "城市旅游" * 40]}, headers=headers),
        400,
        "input",
        "context_length_exceeded",
    )
    assert "input[1]" in err["message"]
    _assert_error(
        httpx.post(url, json={"input": [[5] * 100]}, headers=headers), 400, "input", "context_length_exceeded"
    )


def test_cors_preflight_and_exposed_headers(strict_server: ServerThread) -> None:
    pre = httpx.options(
        strict_server.url + "/v1/embeddings",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://app.example"
    resp = httpx.post(
        strict_server.url + "/v1/embeddings",
        json={"input": "x"},
        headers={"Origin": "http://app.example", "Authorization": "Bearer sekret"},
    )
    assert resp.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-m3e-truncated" in resp.headers["access-control-expose-headers"].lower()


class _GatedModel:
    """Wraps a model so that forwards wait for a gate: the test decides when the worker is busy."""

    def __init__(self, model: Any):
        self.model = model
        self.dim = model.dim
        self.entered = threading.Event()
        self.gate = threading.Event()

    def embed_token_ids(self, batch: Any, normalize: bool = True, prompt_length: int = 0) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        return self.model.embed_token_ids(batch, normalize=normalize, prompt_length=prompt_length)


def test_full_queue_is_429_with_retry_after(models: dict[str, Any]) -> None:
    app = create_app({"tiny": models["tiny"]}, ServeConfig(max_queue=4, warmup=False))
    gated = _GatedModel(models["tiny"])
    app.state.batcher.models["tiny"] = gated
    with ServerThread(app) as srv:
        url = srv.url + "/v1/embeddings"
        answers: dict[str, Any] = {}

        def post(key: str, texts: list[str]) -> threading.Thread:
            t = threading.Thread(
                target=lambda: answers.setdefault(key, httpx.post(url, json={"input": texts}, timeout=60))
            )
            t.start()
            return t

        busy = post("busy", ["a"])  # occupies the inference thread until the gate opens
        assert gated.entered.wait(30)
        queued = post("queued", ["b", "c", "d"])  # waits in the queue: 3 of 4 places
        _wait_until(lambda: app.state.batcher.queued_texts == 3, "the second request to wait in the queue")
        try:
            resp = httpx.post(url, json={"input": ["e", "f"]})
            err = _assert_error(resp, 429, None, "rate_limit_exceeded")
            assert err["type"] == "requests"
            assert int(resp.headers["retry-after"]) >= 1
            assert "overloaded" in err["message"]
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0).embeddings.create(
                    model="tiny", input=["e", "f"]
                )
        finally:
            gated.gate.set()
            busy.join(60)
            queued.join(60)
        assert answers["busy"].status_code == 200  # what was admitted is still answered
        assert answers["queued"].status_code == 200
        assert httpx.post(url, json={"input": ["e", "f"]}, timeout=30).status_code == 200
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'm3e_requests_total{endpoint="embeddings",status="429"} 2.0' in metrics


# ---------------------------------------------------------------------- concurrency, health, metrics


def test_32_concurrent_clients_get_their_own_results_in_order(
    server: ServerThread, models: dict[str, Any]
) -> None:
    rng = np.random.default_rng(0)
    pool = [*TEXTS, "短", "a much longer English sentence about vector search and embeddings " * 3]
    requests = []
    for _ in range(64):
        k = int(rng.integers(1, 9))
        requests.append([pool[int(i)] + f" {int(rng.integers(1000))}" for i in rng.integers(0, len(pool), k)])
    unique = sorted({t for r in requests for t in r})
    reference = dict(zip(unique, models["tiny"].encode(unique), strict=True))

    def call(texts: list[str]) -> list[list[float]]:
        with httpx.Client(timeout=60) as http:
            resp = http.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": texts})
            assert resp.status_code == 200, resp.text
            data = resp.json()["data"]
            assert [d["index"] for d in data] == list(range(len(texts)))
            return [d["embedding"] for d in data]

    with ThreadPoolExecutor(max_workers=32) as pool_exec:
        results = list(pool_exec.map(call, requests))
    for texts, vectors in zip(requests, results, strict=True):
        _close(vectors, [reference[t] for t in texts])


def test_health_and_metrics(server: ServerThread) -> None:
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": ["x", "y"]})
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "m3e_requests_total",
        "m3e_request_errors_total",
        "m3e_queue_depth",
        "m3e_batch_size_bucket",
        "m3e_batch_tokens_bucket",
        "m3e_tokens_total",
        "m3e_request_latency_seconds_bucket",
        "m3e_forward_seconds_bucket",
        "m3e_ready 1.0",
    ):
        assert name in text, name
    assert 'm3e_requests_total{endpoint="embeddings",status="200"}' in text


def test_health_is_503_until_warm_up_is_done(models: dict[str, Any]) -> None:
    gate = threading.Event()
    app = create_app({"tiny": models["tiny"]}, ServeConfig())
    batcher = app.state.batcher
    real_warmup = batcher._warmup
    batcher._warmup = lambda: (gate.wait(30), real_warmup())
    srv = ServerThread(app)
    srv.thread.start()
    try:
        _wait_until(lambda: _health_status(srv.url) is not None, "the server to accept connections")
        assert _health_status(srv.url) == 503
        assert httpx.get(srv.url + "/health").json() == {"status": "loading"}
        gate.set()
        assert batcher.ready.wait(30), "warm-up did not finish"
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        gate.set()
        srv.stop()


def test_error_body_is_plain_json(server: ServerThread) -> None:
    raw = httpx.post(server.url + "/v1/embeddings", json={"input": ""}).content
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_openapi_schema_lists_the_routes(server: ServerThread) -> None:
    resp = httpx.get(server.url + "/openapi.json")
    assert resp.status_code == 200
    assert set(resp.json()["paths"]) == {
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/metrics",
    }
