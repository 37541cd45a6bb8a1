"""The LangChain Embeddings adapter: same vectors as the model, prompts applied per side."""

from __future__ import annotations

import numpy as np
import pytest


def test_langchain_embeddings_match_the_model(tiny_st_model_dir):
    from langchain_core.embeddings import Embeddings

    import m3e
    from m3e.integrations.langchain import M3EEmbeddings

    model = m3e.load(str(tiny_st_model_dir), query_prompt="查询：")
    emb = M3EEmbeddings(model, batch_size=4)
    assert isinstance(emb, Embeddings)
    docs = ["保险理赔需要哪些材料？", "The weather is nice today.", "笔记本电脑"]
    vectors = emb.embed_documents(docs)
    assert isinstance(vectors, list) and all(isinstance(v, list) and isinstance(v[0], float) for v in vectors)
    np.testing.assert_allclose(np.array(vectors), model.encode_documents(docs), atol=1e-5)
    query = emb.embed_query("理赔材料")
    np.testing.assert_allclose(query, model.encode_queries(["理赔材料"])[0], atol=1e-5)
    # The query prompt is applied to queries only.
    assert not np.allclose(query, model.encode_documents(["理赔材料"])[0], atol=1e-4)
    assert emb.embed_documents([]) == []


def test_langchain_adapter_loads_by_path_and_works_in_a_vector_store(tiny_st_model_dir):
    from langchain_core.vectorstores import InMemoryVectorStore

    from m3e.integrations.langchain import M3EEmbeddings

    emb = M3EEmbeddings(str(tiny_st_model_dir))
    store = InMemoryVectorStore(embedding=emb)
    store.add_texts(["今天天气很好", "保险理赔需要哪些材料？", "stock market fell sharply"])
    found = store.similarity_search("保险理赔需要哪些材料？", k=1)
    assert found[0].page_content == "保险理赔需要哪些材料？"


def test_langchain_async_methods(tiny_st_model_dir):
    import asyncio

    from m3e.integrations.langchain import M3EEmbeddings

    emb = M3EEmbeddings(str(tiny_st_model_dir))
    got = asyncio.run(emb.aembed_documents(["你好"]))
    np.testing.assert_allclose(got, emb.embed_documents(["你好"]), atol=1e-6)


def test_rejects_non_models():
    from m3e.integrations.langchain import M3EEmbeddings

    with pytest.raises(TypeError):
        M3EEmbeddings(model=42)
