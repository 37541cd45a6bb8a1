"""The LlamaIndex embedding model: sides (queries on the query side, nodes on the document side), batches and
the async variants equal to m3e's own encode, and LlamaIndex's own defaults (Settings, VectorStoreIndex,
SentenceSplitter, the in-memory vector store, a retriever; no LLM) retrieving with it."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex

import m3e
from m3e.integrations.llama_index import M3EEmbedding

DOCS = ["保险理赔需要保单和事故证明。", "今天天气很好，我们去公园散步吧。", "The stock market fell sharply on Monday."]


@pytest.fixture(scope="module")
def prompted_dir(tiny_st_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with query and document prompts, so that the sides give different vectors."""
    out = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(tiny_st_model_dir, out)
    cfg_file = out / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg.update(prompts={"query": "查询: ", "document": "文档: "}, default_prompt_name="query")
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    return out


@pytest.fixture()
def embed_model_setting() -> Iterator[None]:
    """LlamaIndex's global Settings.embed_model, restored after the test."""
    before = Settings._embed_model
    yield
    Settings._embed_model = before


def test_sides_batches_and_async_equal_m3e(prompted_dir: Path) -> None:
    model = m3e.load(str(prompted_dir))
    emb = M3EEmbedding(model, embed_batch_size=2)
    queries, documents = model.encode_queries(["理赔材料"]), model.encode_documents(DOCS)
    assert np.abs(np.array(emb.get_query_embedding("理赔材料")) - queries[0]).max() <= 1e-6
    assert np.abs(np.array(emb.get_text_embedding(DOCS[0])) - documents[0]).max() <= 1e-6
    batch = emb.get_text_embedding_batch(DOCS)  # in batches of embed_batch_size
    assert np.abs(np.array(batch) - documents).max() <= 1e-5
    assert np.abs(documents[0] - queries[0]).max() > 1e-3  # the two sides differ for this model

    async def both() -> tuple[Any, Any, Any]:
        return await asyncio.gather(emb.aget_query_embedding("理赔材料"), emb.aget_text_embedding(DOCS[1]),
                                    emb.aget_text_embedding_batch(DOCS))

    q, d, many = asyncio.run(both())
    assert np.abs(np.array(q) - queries[0]).max() <= 1e-6
    assert np.abs(np.array(d) - documents[1]).max() <= 1e-6
    assert np.abs(np.array(many) - documents).max() <= 1e-5
    assert emb.model_name == model.name and M3EEmbedding.class_name() == "M3EEmbedding"


def test_a_path_loads_the_model(prompted_dir: Path) -> None:
    emb = M3EEmbedding(str(prompted_dir))
    expected = m3e.load(str(prompted_dir)).encode_queries(["你好"])[0]
    assert np.abs(np.array(emb.get_query_embedding("你好")) - expected).max() <= 1e-6


def test_vector_store_index_with_the_library_defaults(prompted_dir: Path, embed_model_setting: None) -> None:
    """Settings.embed_model = m3e's: VectorStoreIndex splits, embeds and stores the documents itself; the
    retriever's scores are the cosines of the query side against the document side."""
    model = m3e.load(str(prompted_dir))
    Settings.embed_model = M3EEmbedding(model)
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS])
    hits = index.as_retriever(similarity_top_k=3).retrieve("保险理赔")
    assert sorted(h.node.get_content() for h in hits) == sorted(DOCS)
    query = model.encode_queries(["保险理赔"])[0]
    for hit in hits:
        document = model.encode_documents([hit.node.get_content()])[0]
        assert hit.score == pytest.approx(float(query @ document), abs=1e-5)


def test_a_real_model_retrieves_the_matching_document(minilm_dir: Path, embed_model_setting: None) -> None:
    Settings.embed_model = M3EEmbedding(str(minilm_dir))
    docs = ["The weather is lovely today, sunny and warm.", "Insurance claims need the policy and a report.",
            "The stock market fell sharply on Monday."]
    index = VectorStoreIndex.from_documents([Document(text=t) for t in docs])
    retriever = index.as_retriever(similarity_top_k=1)
    assert retriever.retrieve("what documents does an insurance claim need?")[0].node.get_content() == docs[1]
    assert retriever.retrieve("is it sunny outside?")[0].node.get_content() == docs[0]
