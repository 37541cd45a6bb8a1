"""`m3e serve` gives each request's texts the side it asks for: input_type, prompt_name, a NAME:side model
name, or the server's --default-side; unknown values are 400 naming the allowed ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import m3e
from m3e.serving import ServeConfig, ServerThread, create_app
from m3e.serving.sides import DEFAULT_SIDE, INPUT_TYPES

TEXTS = ["今天天气很好", "The weather is nice today.", "保险理赔需要哪些材料？"]
PROMPTS = {"query": "query: ", "document": "document: ", "classification": "北京 "}


@pytest.fixture(scope="module")
def prompted(tiny_st_model_dir: Path) -> Any:
    """The tiny model with an asymmetric model's prompts (query by default, as e5 and BGE define them)."""
    model = m3e.load(str(tiny_st_model_dir))
    model.prompts = dict(PROMPTS)
    model.default_prompt_name = "query"
    return model


@pytest.fixture(scope="module")
def server(prompted: Any):
    with ServerThread(create_app({"tiny": prompted})) as srv:
        yield srv


def _embed(url: str, **body: Any) -> np.ndarray:
    resp = httpx.post(url + "/v1/embeddings", json={"input": TEXTS, **body}, timeout=60)
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def _error(url: str, **body: Any) -> dict[str, Any]:
    resp = httpx.post(url + "/v1/embeddings", json={"input": TEXTS, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    return dict(resp.json()["error"])


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert float(np.abs(a - b).max()) <= 1e-5


@pytest.mark.parametrize(
    ("input_type", "prompt"),
    [
        ("query", "query: "),
        ("search_query", "query: "),
        ("retrieval.query", "query: "),
        ("document", "document: "),
        ("search_document", "document: "),
        ("passage", "document: "),
        ("retrieval.passage", "document: "),
        ("Search_Document", "document: "),  # Cohere's values, case aside
        ("classification", "北京 "),  # the model's prompt of that name
        ("clustering", "query: "),  # none of that name: the model's default prompt
    ],
)
def test_input_type_picks_the_prompt(
    server: ServerThread, prompted: Any, input_type: str, prompt: str
) -> None:
    _close(_embed(server.url, input_type=input_type), prompted.encode(TEXTS, prompt=prompt))


def test_every_input_type_is_tested() -> None:
    assert set(INPUT_TYPES) == {
        "query",
        "search_query",
        "retrieval.query",
        "document",
        "search_document",
        "passage",
        "retrieval.passage",
        "classification",
        "clustering",
    }


def test_prompt_name_and_model_suffix(server: ServerThread, prompted: Any) -> None:
    _close(_embed(server.url, prompt_name="document"), prompted.encode_documents(TEXTS))
    _close(
        _embed(server.url, prompt_name="classification"), prompted.encode(TEXTS, prompt_name="classification")
    )
    _close(_embed(server.url, model="tiny:query"), prompted.encode_queries(TEXTS))
    _close(_embed(server.url, model="tiny:document"), prompted.encode_documents(TEXTS))
    _close(_embed(server.url, model="tiny:passage"), prompted.encode_documents(TEXTS))
    # Two ways that agree are fine; the response names the model as asked.
    resp = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": "x", "model": "tiny:query", "input_type": "search_query"},
    )
    assert resp.status_code == 200 and resp.json()["model"] == "tiny:query"


def test_no_side_gets_the_default_side(server: ServerThread, prompted: Any) -> None:
    assert DEFAULT_SIDE == "query"
    _close(_embed(server.url), prompted.encode_queries(TEXTS))
    _close(_embed(server.url, model="tiny"), prompted.encode(TEXTS))  # the model's own default: query too


@pytest.mark.parametrize(("side", "prompt"), [("document", "document: "), ("none", "")])
def test_default_side_option(prompted: Any, side: str, prompt: str) -> None:
    with ServerThread(create_app({"tiny": prompted}, ServeConfig(default_side=side, warmup=False))) as srv:
        _close(_embed(srv.url), prompted.encode(TEXTS, prompt=prompt))
        _close(_embed(srv.url, input_type="query"), prompted.encode_queries(TEXTS))
        listed = httpx.get(srv.url + "/v1/models").json()["data"][0]
        assert listed["default_side"] == side
        assert listed["prompts"] == PROMPTS
        assert httpx.get(srv.url + "/v1/models/tiny").json()["default_side"] == side


def test_unknown_values_are_400_naming_the_allowed_ones(server: ServerThread) -> None:
    err = _error(server.url, input_type="questions")
    assert err["param"] == "input_type" and err["code"] == "invalid_value"
    assert "questions" in err["message"] and "search_query" in err["message"] and "passage" in err["message"]
    err = _error(server.url, prompt_name="nope")
    assert err["param"] == "prompt_name"
    assert "query, document, classification" in err["message"]
    err = _error(server.url, model="tiny:sideways")
    assert err["param"] == "model" and "tiny:query" in err["message"]
    err = _error(server.url, input_type=3)
    assert err["param"] == "input_type"
    err = _error(server.url, input_type="query", prompt_name="document")
    assert "input_type" in err["message"] and "prompt_name" in err["message"]
    err = _error(server.url, model="tiny:document", input_type="query")
    assert err["param"] == "input_type"
    missing = httpx.post(server.url + "/v1/embeddings", json={"input": "x", "model": "other:query"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_a_model_without_prompts_takes_every_side(server: ServerThread, tiny_cls_model_dir: Path) -> None:
    plain = m3e.load(str(tiny_cls_model_dir))
    plain.prompts = {}
    with ServerThread(create_app({"cls": plain}, ServeConfig(warmup=False))) as srv:
        expected = plain.encode(TEXTS)
        for body in ({"input_type": "query"}, {"input_type": "document"}, {"model": "cls:query"}, {}):
            _close(_embed(srv.url, **body), expected)
        err = _error(srv.url, prompt_name="query")
        assert "defines no prompts" in err["message"]
