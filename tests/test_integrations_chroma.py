"""The Chroma embedding function: Chroma's protocol checked by hand, then a real chromadb collection."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import chromadb
import numpy as np
import pytest


@pytest.fixture(scope="module")
def ef(tiny_st_model_dir):
    from m3e.integrations.chroma import M3EEmbeddingFunction

    return M3EEmbeddingFunction(str(tiny_st_model_dir), batch_size=8)


def test_call_follows_the_protocol(ef, tiny_st_model_dir):
    import m3e

    # Chroma checks that __call__ takes exactly one argument named `input`.
    params = list(inspect.signature(ef.__call__).parameters)
    assert params == ["input"]
    docs = ["保险理赔需要哪些材料？", "The weather is nice today."]
    out = ef(input=docs)
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (32,) for v in out)
    model = m3e.load(str(tiny_st_model_dir))
    np.testing.assert_allclose(np.stack(out), model.encode_documents(docs), atol=1e-5)
    np.testing.assert_allclose(np.stack(ef.embed_query(["理赔"])), model.encode_queries(["理赔"]), atol=1e-5)
    assert ef([]) == []


def test_identity_and_config_round_trip(ef, tiny_st_model_dir):
    from m3e.integrations.chroma import M3EEmbeddingFunction

    assert M3EEmbeddingFunction.name() == "m3e"
    assert ef.default_space() == "cosine" and "cosine" in ef.supported_spaces()
    assert ef.is_legacy() is False
    config = ef.get_config()
    assert config == {"model": str(tiny_st_model_dir), "batch_size": 8, "normalize": True}
    M3EEmbeddingFunction.validate_config(config)
    with pytest.raises(ValueError):
        M3EEmbeddingFunction.validate_config({"colour": "red"})
    with pytest.raises(ValueError):
        ef.validate_config_update(config, {"model": "other"})
    rebuilt = M3EEmbeddingFunction.build_from_config(config)
    np.testing.assert_allclose(rebuilt(["你好"])[0], ef(["你好"])[0], atol=1e-6)


def test_a_chroma_style_collection_uses_it(ef):
    """What a Chroma collection does with an embedding function: embed on add, embed_query on query."""

    class MiniCollection:
        def __init__(self, embedding_function):
            self.ef = embedding_function
            self.ids: list[str] = []
            self.vectors: list[np.ndarray] = []

        def add(self, ids, documents):
            self.ids += ids
            self.vectors += self.ef(input=documents)

        def query(self, query_texts, n_results):
            q = np.stack(self.ef.embed_query(input=query_texts))
            scores = q @ np.stack(self.vectors).T
            return [[self.ids[j] for j in np.argsort(-row)[:n_results]] for row in scores]

    col = MiniCollection(ef)
    col.add(["a", "b", "c"], ["今天天气很好", "保险理赔需要哪些材料？", "stock market fell sharply"])
    assert col.query(["保险理赔需要哪些材料？"], 1) == [["b"]]


def test_a_real_chroma_collection_uses_it(ef):
    # chromadb's EmbeddingFunction is a non-runtime Protocol: what counts is that a real collection uses it.
    client = chromadb.EphemeralClient()
    col = client.create_collection("m3e-test", embedding_function=ef)
    col.add(ids=["a", "b"], documents=["今天天气很好", "保险理赔需要哪些材料？"])
    assert col.query(query_texts=["保险理赔需要哪些材料？"], n_results=1)["ids"] == [["b"]]


def test_a_path_or_a_loaded_model_is_stored_so_that_it_loads_again(tiny_st_model_dir, tmp_path, monkeypatch):
    import m3e
    from m3e.integrations.chroma import M3EEmbeddingFunction

    monkeypatch.chdir(tmp_path)  # a relative path object is stored resolved, so it loads from anywhere
    relative = Path(os.path.relpath(tiny_st_model_dir, tmp_path))
    for given in (relative, m3e.load(str(tiny_st_model_dir))):
        config = M3EEmbeddingFunction(given).get_config()
        assert config["model"] == str(tiny_st_model_dir.resolve())
        monkeypatch.chdir("/")
        assert M3EEmbeddingFunction.build_from_config(config).model.source_dir == tiny_st_model_dir.resolve()
        monkeypatch.chdir(tmp_path)
