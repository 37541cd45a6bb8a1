"""`m3e serve --index NAME=DIR`: /v1/search answers what `m3e search --json` prints, in the embeddings' error,
limit and auth contract, reranks through the served reranker, and sees `m3e index add` without a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import m3e
from m3e.cli import main as m3e_main
from m3e.fusion import Fusion
from m3e.index import Index, build_index
from m3e.loading import load_reranker
from m3e.serving import ServeConfig, ServerThread, create_app
from tests.test_index_store import write_jsonl
from tests.test_reranker import _bert_cross_encoder

KEY = "sekret"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCS = [
    {"id": "ins", "text": "保险理赔需要保单和事故证明。理赔材料要齐全。", "kind": "faq"},
    {"id": "car", "text": "汽车保险包括交强险和商业险。", "kind": "faq"},
    {"id": "weather", "text": "今天天气很好，我们去公园散步吧。", "kind": "chat"},
    {"id": "city", "text": "北京和上海是中国最大的城市。Beijing and Shanghai.", "kind": "chat"},
    {"id": "long", "text": "保险条款说明。" * 40 + "理赔时效为三十天。", "kind": "faq"},
]


@pytest.fixture(scope="module")
def tiny(tiny_st_model_dir: Path) -> Any:
    return m3e.load(str(tiny_st_model_dir))


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, tiny: Any, tiny_st_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("served-index")
    index, _ = build_index(
        write_jsonl(root / "docs.jsonl", DOCS),
        root / "idx",
        tiny,
        model_source=str(tiny_st_model_dir),
        progress=False,
        chunk_size=60,
        overlap=10,
    )
    index.close()
    return root / "idx"


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_reranker(str(_bert_cross_encoder(tmp_path_factory.mktemp("rr") / "rr")))


@pytest.fixture(scope="module")
def server(tiny: Any, index_dir: Path, reranker: Any):
    config = ServeConfig(api_key=KEY, token_ids="model")
    app = create_app({"tiny": tiny}, config, rerankers={"rr": reranker}, indexes={"kb": index_dir})
    with ServerThread(app) as srv:
        yield srv


def _search(
    server: ServerThread, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/search", json=body, headers=AUTH if headers is None else headers, timeout=60
    )


def _cli_json(index_dir: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert m3e_main(["search", str(index_dir), *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(
    ("body", "cli"),
    [
        ({"query": "保险理赔"}, []),
        ({"query": "保险理赔", "mode": "sparse", "k": 2}, ["--mode", "sparse", "-k", "2"]),
        ({"query": "保险理赔", "mode": "dense", "group": False}, ["--mode", "dense", "--chunks"]),
        ({"query": "保险理赔", "filter": {"kind": "chat"}}, ["--filter", "kind=chat"]),
        ({"query": "保险 Beijing", "fusion": "rrf"}, ["--fusion", "rrf"]),
    ],
)
def test_results_are_what_m3e_search_json_prints(
    server: ServerThread,
    index_dir: Path,
    body: dict[str, Any],
    cli: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    resp = _search(server, {"index": "kb", **body})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["object"] == "search" and data["index"] == "kb" and data["query"] == body["query"]
    assert data["results"] == _cli_json(index_dir, body["query"], *cli, capsys=capsys)
    assert data["mode"] == body.get("mode", "hybrid")


def test_rerank_through_the_served_reranker(
    server: ServerThread, index_dir: Path, tiny: Any, reranker: Any
) -> None:
    for group in (True, False):
        data = _search(
            server, {"query": "理赔材料", "rerank": True, "candidates": 6, "k": 3, "group": group}
        ).json()
        with Index.open(index_dir, tiny) as index:
            hits = index.search("理赔材料", k=3, group=group, rerank=reranker, candidates=6, fusion=Fusion())
        expected = [h.to_dict() for h in hits]
        got = data["results"]
        assert [r["id"] for r in got] == [e["id"] for e in expected]
        for r, e in zip(got, expected, strict=True):
            assert r["rerank_score"] == pytest.approx(e["rerank_score"], abs=1e-6)
    assert _search(server, {"query": "理赔", "rerank": "rr"}).status_code == 200


def test_terms_are_the_sparse_sides_words(server: ServerThread) -> None:
    from m3e.lexical import lexical_terms

    data = _search(server, {"query": "保险理赔 Beijing 的"}).json()
    assert data["terms"] == list(dict.fromkeys(lexical_terms("保险理赔 Beijing 的")))
    assert "beijing" in data["terms"] and "的" not in data["terms"]


def test_errors_auth_and_listing(server: ServerThread) -> None:
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({}, 400, "query"),
        ({"query": " "}, 400, "query"),
        ({"query": "q", "k": 0}, 400, "k"),
        ({"query": "q", "k": 1001}, 400, "k"),
        ({"query": "q", "mode": "fuzzy"}, 400, "mode"),
        ({"query": "q", "filter": "kind=faq"}, 400, "filter"),
        ({"query": "q", "filter": {"kind": ["a"]}}, 400, "filter"),
        ({"query": "q", "candidates": 0}, 400, "candidates"),
        ({"query": "q", "dense_weight": 2}, 400, "dense_weight"),
        ({"query": "q", "group": "yes"}, 400, "group"),
        ({"query": "q", "rerank": 3}, 400, "rerank"),
        ({"query": "q", "rerank": "nope"}, 404, "rerank"),
        ({"query": "q", "rerank": "tiny"}, 400, "rerank"),
        ({"query": "q", "index": "nope"}, 404, "index"),
        ({"query": "q", "colbert": True}, 400, None),  # not a BGE-M3 index: the index says why
    ]
    for body, status, param in cases:
        resp = _search(server, body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["param"] == param, body
    assert _search(server, {"query": "q"}, headers={}).status_code == 401
    plain = httpx.post(
        server.url + "/v1/search", content=b"{}", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    assert httpx.get(server.url + "/v1/indexes").status_code == 401
    listed = httpx.get(server.url + "/v1/indexes", headers=AUTH).json()["data"]
    assert [(ix["id"], ix["docs"], ix["default_mode"]) for ix in listed] == [("kb", len(DOCS), "hybrid")]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'm3e_requests_total{endpoint="search",status="200"}' in metrics
    assert 'm3e_search_latency_seconds_count{index="kb"}' in metrics


def test_index_add_while_serving_is_seen_without_a_restart(
    tiny: Any, index_dir: Path, tmp_path: Path, reranker: Any
) -> None:
    import shutil

    own = tmp_path / "idx"
    shutil.copytree(index_dir, own)
    app = create_app({"tiny": tiny}, ServeConfig(warmup=False), indexes={"kb": own})
    with ServerThread(app) as srv:
        before = httpx.post(srv.url + "/v1/search", json={"query": "火星探测器轨道", "mode": "sparse"}).json()
        assert before["results"] == []
        extra = write_jsonl(
            tmp_path / "more.jsonl", [{"id": "mars", "text": "火星探测器的轨道参数已经公布。"}]
        )
        assert m3e_main(["index", "add", str(own), str(extra)]) == 0
        after = httpx.post(srv.url + "/v1/search", json={"query": "火星探测器轨道", "mode": "sparse"}).json()
        assert [r["id"] for r in after["results"]] == ["mars"]
        assert httpx.get(srv.url + "/v1/indexes").json()["data"][0]["docs"] == len(DOCS) + 1
        assert app.state.searching.indexes["kb"].reloads == 1


def test_an_index_built_by_another_model_brings_its_own(tiny_cls_model_dir: Path, index_dir: Path) -> None:
    other = m3e.load(str(tiny_cls_model_dir))
    app = create_app({"cls": other}, ServeConfig(warmup=False), indexes={"kb": index_dir})
    served = app.state.searching.indexes["kb"]
    assert served.index.model is not other  # the index's recorded model, loaded at start
    with ServerThread(app) as srv:
        resp = httpx.post(srv.url + "/v1/search", json={"query": "保险理赔", "mode": "dense"})
        assert resp.status_code == 200 and resp.json()["results"]


def test_the_served_embedder_that_built_the_index_embeds_its_queries(tiny: Any, index_dir: Path) -> None:
    app = create_app({"tiny": tiny}, ServeConfig(warmup=False), indexes={"kb": index_dir})
    assert app.state.searching.indexes["kb"].index.model is tiny  # no second copy in memory
    app.state.searching.close()


def test_searches_queued_beyond_the_time_limit_get_429() -> None:
    from m3e.serving.errors import ApiError
    from m3e.serving.searching import SearchQueue

    queue = SearchQueue(max_seconds=1.0, max_pending=100)
    queue.admit()
    queue.admit()  # no duration measured yet: admitted
    queue.done(0.4)
    queue.admit()  # one ahead and this one: 2 x 0.4 s = 0.8 s, within the limit
    with pytest.raises(ApiError) as refused:
        queue.admit()  # 3 x 0.4 s = 1.2 s; the two ahead need 0.8 s
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    assert SearchQueue(max_seconds=None, max_pending=1).admit() is None  # an empty queue takes anything
