"""`m3e serve --reranker`: /v1/rerank as Cohere's SDK (v1 and v2) and Jina's API send it, TEI's /rerank, scores
equal to in-process ``Reranker.predict``, the same batching, limits, errors, auth and metrics as embeddings."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import pytest

import m3e
from m3e.loading import load_reranker
from m3e.serving import ServeConfig, ServerThread, create_app
from m3e.serving.batcher import Batcher
from tests.test_reranker import _bert_cross_encoder

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "保险理赔需要什么材料"
DOCS = [
    "理赔需要保单和事故证明。",
    "今天天气很好",
    "保险 理赔 材料 清单 保单 发票",
    "北京和上海 Beijing and Shanghai",
    "保险公司的理赔流程",
]
# Longer than the tiny reranker's 64 tokens: scored by windows.
LONG = "天气 " * 50 + "保险 理赔 材料"


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bert_cross_encoder(tmp_path_factory.mktemp("rr") / "bert-rr")


@pytest.fixture(scope="module")
def reranker(reranker_dir: Path) -> Any:
    return load_reranker(str(reranker_dir))


@pytest.fixture(scope="module")
def server(tiny_st_model_dir: Path, reranker: Any):
    config = ServeConfig(api_key=KEY, aliases={"rr-alias": "rr"}, max_rerank_documents=40, token_ids="model")
    app = create_app({"tiny": m3e.load(str(tiny_st_model_dir))}, config, rerankers={"rr": reranker})
    with ServerThread(app) as srv:
        yield srv


def _post(server: ServerThread, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=kw.pop("headers", AUTH), timeout=60, **kw)


def _expected(reranker: Any, docs: Sequence[str], **kw: Any) -> np.ndarray:
    return np.asarray(reranker.predict([(QUERY, d) for d in docs], **kw))


def _assert_error(resp: httpx.Response, status: int, param: str | None, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


# ---------------------------------------------------------------------- the clients


def test_cohere_client_v1(server: ServerThread, reranker: Any) -> None:
    co = cohere.Client(api_key=KEY, base_url=server.url, timeout=60)
    docs = [*DOCS, LONG]
    resp = co.rerank(model="rr", query=QUERY, documents=docs, top_n=4, return_documents=True)
    expected = _expected(reranker, docs)
    order = list(np.argsort(-expected, kind="stable"))[:4]
    assert [r.index for r in resp.results] == order
    for r in resp.results:
        assert abs(r.relevance_score - float(expected[r.index])) <= 1e-6
        assert r.document is not None and r.document.text == docs[r.index]
    assert resp.id and resp.meta is not None and resp.meta.api_version is not None


def test_cohere_client_v2_and_documents_as_objects(server: ServerThread, reranker: Any) -> None:
    co = cohere.ClientV2(api_key=KEY, base_url=server.url, timeout=60)
    resp = co.rerank(model="rr-alias", query=QUERY, documents=DOCS, top_n=2)
    expected = _expected(reranker, DOCS)
    assert [r.index for r in resp.results] == list(np.argsort(-expected, kind="stable"))[:2]
    assert all(abs(r.relevance_score - float(expected[r.index])) <= 1e-6 for r in resp.results)
    # Cohere v1 object documents: the text is scored, every field comes back.
    objects = [{"text": d, "id": f"doc-{i}"} for i, d in enumerate(DOCS)]
    v1 = cohere.Client(api_key=KEY, base_url=server.url).rerank(
        query=QUERY, documents=objects, return_documents=True
    )
    assert {r.index: r.document.id for r in v1.results if r.document} == {i: f"doc-{i}" for i in range(5)}  # type: ignore[attr-defined]


def test_jina_request_body(server: ServerThread, reranker: Any) -> None:
    """The body Jina's API documents (and Dify's / FastGPT's Cohere-compatible providers send)."""
    body = {
        "model": "rr",
        "query": QUERY,
        "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]],
        "top_n": 2,
        "return_documents": True,
    }
    resp = _post(server, "/v1/rerank", body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    expected = _expected(reranker, DOCS[:3])
    assert [r["index"] for r in data["results"]] == list(np.argsort(-expected, kind="stable"))[:2]
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in data["results"])
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] > 0
    assert data["model"] == "rr"
    # FastGPT's minimal body at Dify's URL (endpoint + /rerank): no model, no top_n; every document ranked.
    short = _post(server, "/rerank", {"query": QUERY, "documents": DOCS}).json()
    assert sorted(r["index"] for r in short["results"]) == list(range(len(DOCS)))
    assert _post(server, "/v1/rerank", {**body, "return_documents": False}).json()["results"][0].keys() == {
        "index",
        "relevance_score",
    }


def test_tei_rerank(server: ServerThread, reranker: Any) -> None:
    texts = [*DOCS, LONG]
    resp = _post(server, "/rerank", {"query": QUERY, "texts": texts, "raw_scores": True, "return_text": True})
    assert resp.status_code == 200, resp.text
    ranks = resp.json()
    logits = _expected(reranker, texts, activation="identity")
    assert [r["index"] for r in ranks] == list(np.argsort(-logits, kind="stable"))
    assert all(
        abs(r["score"] - float(logits[r["index"]])) <= 1e-5 and r["text"] == texts[r["index"]] for r in ranks
    )
    # truncate: the first window of a long text only (TEI's truncation), sigmoid scores, no text.
    plain = _post(server, "/rerank", {"query": QUERY, "texts": [LONG], "truncate": True}).json()
    first_window = np.asarray(load_reranker(str(reranker.source_dir), max_windows=1).predict([(QUERY, LONG)]))
    assert plain == [{"index": 0, "score": pytest.approx(float(first_window[0]), abs=1e-6)}]
    _assert_error(
        _post(server, "/rerank", {"query": QUERY, "texts": ["a"], "truncation_direction": "Left"}),
        400,
        "truncation_direction",
    )


def test_cohere_extras(server: ServerThread, reranker: Any) -> None:
    one = _post(server, "/v1/rerank", {"query": QUERY, "documents": [LONG], "max_chunks_per_doc": 1}).json()
    first_window = load_reranker(str(reranker.source_dir), max_windows=1).predict([(QUERY, LONG)])
    assert one["results"][0]["relevance_score"] == pytest.approx(float(first_window[0]), abs=1e-6)
    cut = _post(server, "/v2/rerank", {"query": QUERY, "documents": [LONG], "max_tokens_per_doc": 5}).json()
    tok = reranker.tokenizer(LONG, add_special_tokens=False, return_offsets_mapping=True)
    five = LONG[: tok["offset_mapping"][4][1]]
    assert cut["results"][0]["relevance_score"] == pytest.approx(
        float(_expected(reranker, [five])[0]), abs=1e-6
    )
    assert "document" not in cut["results"][0]  # v2 never returns documents
    fields = {
        "query": QUERY,
        "documents": [{"title": "保险", "body": "理赔"}],
        "rank_fields": ["title", "body"],
    }
    ranked = _post(server, "/v1/rerank", fields).json()["results"][0]
    assert ranked["relevance_score"] == pytest.approx(
        float(_expected(reranker, ["title: 保险\nbody: 理赔"])[0]), abs=1e-6
    )
    assert ranked["document"] == {"title": "保险", "body": "理赔"}


# ---------------------------------------------------------------------- contract


def test_errors_name_their_param(server: ServerThread) -> None:
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"documents": DOCS}, "query", "missing_required_parameter"),
        ({"query": "", "documents": DOCS}, "query", "invalid_value"),
        ({"query": QUERY}, "documents", "missing_required_parameter"),
        ({"query": QUERY, "documents": "a"}, "documents", None),
        ({"query": QUERY, "documents": []}, "documents", "invalid_value"),
        ({"query": QUERY, "documents": [3]}, "documents", None),
        ({"query": QUERY, "documents": [{"title": "x"}]}, "documents", None),
        ({"query": QUERY, "documents": ["a"] * 41}, "documents", "invalid_value"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n", "invalid_value"),
        ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, "return_documents", None),
        (
            {"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 65},
            "max_chunks_per_doc",
            "invalid_value",
        ),
        ({"query": QUERY, "documents": DOCS, "relevant_spans": {"mode": "on"}}, "relevant_spans", None),
    ]
    for body, param, code in cases:
        _assert_error(_post(server, "/v1/rerank", body), 400, param, code)
    surrogate = b'{"query": "q", "documents": ["\\ud800"]}'
    lone = httpx.post(
        server.url + "/v1/rerank", content=surrogate, headers={**AUTH, "Content-Type": "application/json"}
    )
    _assert_error(lone, 400, "documents", "invalid_value")
    message = _assert_error(
        _post(server, "/v1/rerank", {"model": "nope", "query": QUERY, "documents": DOCS}), 404, "model"
    )
    assert "rr" in message
    _assert_error(
        _post(server, "/v1/rerank", {"model": "tiny", "query": QUERY, "documents": DOCS}), 400, "model"
    )
    _assert_error(_post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS}, headers={}), 401, None)
    plain = httpx.post(
        server.url + "/v1/rerank", content=b"{}", headers={**AUTH, "Content-Type": "text/plain"}
    )
    _assert_error(plain, 415, None)


def test_access_log_line(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="m3e.access"):
        _post(server, "/v1/rerank", {"model": "rr-alias", "query": QUERY, "documents": DOCS})
    line = next(r.getMessage() for r in caplog.records if "/v1/rerank" in r.getMessage())
    assert '"POST /v1/rerank HTTP/1.1" 200' in line and "model=rr texts=5 tokens=" in line


def test_models_health_metrics(server: ServerThread) -> None:
    listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]}
    assert listed["tiny"]["type"] == "embedding"
    assert listed["rr"]["type"] == "reranker" and listed["rr"]["aliases"] == ["rr-alias"]
    assert listed["rr-alias"]["alias_of"] == "rr"
    assert httpx.get(server.url + "/v1/models/rr", headers=AUTH).json()["max_length"] == 64
    assert httpx.get(server.url + "/health").json()["rerankers"] == ["rr"]
    _post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS})
    metrics = httpx.get(server.url + "/metrics").text
    assert 'm3e_reranked_documents_total{model="rr"}' in metrics
    assert 'm3e_requests_total{endpoint="rerank",status="200"}' in metrics
    assert 'm3e_batch_size_count{model="rr"}' in metrics  # through the batcher
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank"} <= set(schema["paths"])
    from openapi_spec_validator import validate

    validate(schema)


def test_a_server_without_rerankers_says_so(tiny_st_model_dir: Path) -> None:
    with ServerThread(
        create_app({"tiny": m3e.load(str(tiny_st_model_dir))}, ServeConfig(warmup=False))
    ) as srv:
        resp = httpx.post(srv.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert "--reranker" in _assert_error(resp, 404, "model", "model_not_found")
        assert "/v1/rerank" not in httpx.get(srv.url + "/openapi.json").json()["paths"]


def test_concurrent_requests_share_forwards_and_scores_stay_exact(
    server: ServerThread, reranker: Any
) -> None:
    docs = [f"{d} {i}" for i in range(6) for d in DOCS]
    expected = _expected(reranker, docs)
    out: dict[int, list[dict[str, Any]]] = {}

    def one(k: int) -> None:
        part = docs[k * 5 : (k + 1) * 5]
        out[k] = _post(
            server, "/v1/rerank", {"query": QUERY, "documents": part, "return_documents": False}
        ).json()["results"]

    threads = [threading.Thread(target=one, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, results in out.items():
        for r in results:
            assert abs(r["relevance_score"] - float(expected[k * 5 + r["index"]])) <= 1e-6


def test_overload_is_429_with_retry_after(tiny_st_model_dir: Path, reranker: Any) -> None:
    config = ServeConfig(max_queue=8, max_batch_size=2, max_wait_ms=0)
    app = create_app({"tiny": m3e.load(str(tiny_st_model_dir))}, config, rerankers={"rr": reranker})
    served = app.state.service.rerankers["rr"]
    real = served.score_token_ids

    def slow(batch: Any, segments: Any) -> np.ndarray:
        time.sleep(0.2)
        return real(batch, segments)

    with ServerThread(app) as srv:
        served.score_token_ids = slow
        big = threading.Thread(
            target=lambda: httpx.post(
                srv.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS * 4}, timeout=60
            )
        )
        big.start()
        time.sleep(0.3)
        resp = httpx.post(srv.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS[:1]}, timeout=60)
        big.join()
    _assert_error(resp, 429, None, "rate_limit_exceeded")
    assert int(resp.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------------- the batcher


class _Embedder:
    dim = 2

    def embed_token_ids(
        self, batch: Sequence[Sequence[int]], normalize: bool = True, prompt_length: int = 0
    ) -> np.ndarray:
        return np.ones((len(batch), 2), dtype=np.float32)


class _Scorer:
    """Raw score = the pair's first id; records each forward."""

    dim = 1

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.batches: list[list[int]] = []

    def score_token_ids(
        self, batch: Sequence[Sequence[int]], segments: Sequence[Sequence[int]]
    ) -> np.ndarray:
        assert [len(s) for s in segments] == [len(x) for x in batch]
        self.batches.append([x[0] for x in batch])
        time.sleep(self.delay)
        return np.asarray([[x[0]] for x in batch], dtype=np.float32)


def test_batcher_batches_pairs_across_requests_and_takes_turns_with_embeddings() -> None:
    scorer = _Scorer(delay=0.01)
    batcher = Batcher(
        {"emb": _Embedder(), "rr": scorer}, max_batch_size=4, max_batch_tokens=1000, max_wait=0.0
    )
    pairs = lambda tag, n: ([[tag + i, 7, 7] for i in range(n)], [[0, 1, 1]] * n)  # noqa: E731
    first = batcher.submit("rr", pairs(100, 2)[0], segments=pairs(100, 2)[1])
    second = batcher.submit("rr", pairs(200, 2)[0], segments=pairs(200, 2)[1])
    big = batcher.submit("rr", pairs(300, 40)[0], segments=pairs(300, 40)[1])
    embedded = batcher.submit("emb", [[1, 2, 3]])
    batcher.start()
    try:
        np.testing.assert_array_equal(first.result(10)[:, 0], [100, 101])
        np.testing.assert_array_equal(second.result(10)[:, 0], [200, 201])
        embedded.result(10)
        assert not big.done()  # fair rounds: the embedding did not wait for all 40 pairs
        np.testing.assert_array_equal(big.result(10)[:, 0], np.arange(300, 340))
    finally:
        batcher.stop()
    assert any({x // 100 for x in b} >= {1, 2} for b in scorer.batches)  # two requests, one forward
    with pytest.raises(ValueError):
        batcher.submit("rr", [[1, 2]])  # a reranker's pairs need their segment ids


# ---------------------------------------------------------------------- m3e serve


def test_serve_flags_parse() -> None:
    import argparse

    from m3e.cli import serve
    from m3e.errors import M3EError

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(
        ["--reranker", "default", "--reranker", "/models/bge-rr=bge", "--index", "kb=/data/kb"]
    )
    assert serve._reranker_specs(args) == [(None, None), ("bge", "/models/bge-rr")]
    assert serve._index_specs(args) == {"kb": "/data/kb"}
    assert serve._aliases(parser.parse_args(["--alias", "rerank=bge"]), ["m3e", "bge"], "m3e") == {
        "rerank": "bge"
    }
    for bad in (["--index", "kb"], ["--index", "kb=a", "--index", "kb=b"]):
        with pytest.raises(M3EError):
            serve._index_specs(parser.parse_args(bad))


@pytest.mark.slow
def test_m3e_serve_with_a_reranker_and_an_index(
    tiny_st_model_dir: Path, reranker_dir: Path, tmp_path: Path
) -> None:
    """The command line end to end: the embedder, a reranker under a name and an alias, an index."""
    import os
    import subprocess
    import sys

    from m3e.index import build_index
    from tests.test_index_store import write_jsonl
    from tests.test_serve_models import _free_port, _healthy
    from tests.waiting import wait_until

    model = m3e.load(str(tiny_st_model_dir))
    docs = write_jsonl(tmp_path / "d.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)])
    build_index(docs, tmp_path / "kb", model, model_source=str(tiny_st_model_dir), progress=False)[0].close()
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "m3e.cli",
        "serve",
        str(tiny_st_model_dir),
        "--reranker",
        f"{reranker_dir}=rr",
    ]
    command += [
        "--alias",
        "rerank=rr",
        "--index",
        f"kb={tmp_path / 'kb'}",
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as err:
        proc = subprocess.Popen(command, env=env, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _healthy(url), "m3e serve to become ready", timeout=120)
        assert proc.poll() is None, log.read_text()
        listed = {m["id"]: m.get("type") for m in httpx.get(url + "/v1/models").json()["data"]}
        assert listed["rr"] == listed["rerank"] == "reranker"
        ranked = httpx.post(
            url + "/v1/rerank", json={"model": "rerank", "query": QUERY, "documents": DOCS}
        ).json()
        assert len(ranked["results"]) == len(DOCS)
        found = httpx.post(url + "/v1/search", json={"query": "保险理赔", "rerank": "rr"}).json()
        assert found["results"] and "rerank_score" in found["results"][0]
        assert httpx.get(url + "/search").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert "reranker rr, also as rerank" in log.read_text() and "index kb" in log.read_text()
