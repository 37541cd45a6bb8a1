"""The Chroma embedding function: Chroma's protocol checked by hand, then a real chromadb collection."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
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


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.mark.slow
def test_a_persistent_collection_reopens_in_a_process_that_never_imported_m3e(tiny_st_model_dir, tmp_path):
    """Chroma looks the stored name "m3e" up in its registry; m3e-chroma.pth (installed into site-packages)
    registers m3e's function there when chromadb's registry module is imported, so nothing has to import m3e
    first. The reopened collection embeds queries with the same model and prompts."""
    import m3e

    db = str(tmp_path / "db")
    created = _python(
        "import chromadb\n"
        "from m3e.integrations.chroma import M3EEmbeddingFunction\n"
        f"client = chromadb.PersistentClient(path={db!r})\n"
        f"ef = M3EEmbeddingFunction({str(tiny_st_model_dir)!r})\n"
        "col = client.create_collection('docs', embedding_function=ef)\n"
        "col.add(ids=['a', 'b', 'c'], documents=['今天天气很好', '保险理赔需要哪些材料？', 'stock market fell'])\n"
    )
    assert created.returncode == 0, created.stderr[-2000:]
    reopened = _python(
        "import json, sys\n"
        "import chromadb\n"
        f"client = chromadb.PersistentClient(path={db!r})\n"
        "col = client.get_collection('docs')\n"  # no embedding_function: rebuilt from the stored config
        "found = col.query(query_texts=['保险理赔需要哪些材料？'], n_results=1, include=['distances'])\n"
        "ef = col.configuration['embedding_function']\n"  # what Chroma rebuilt from the stored name and config
        "print(json.dumps({'ids': found['ids'], 'ef': type(ef).__module__ + '.' + type(ef).__name__,\n"
        "                  'query': [float(x) for x in ef.embed_query(['理赔'])[0]]}))\n"
    )
    assert reopened.returncode == 0, reopened.stderr[-2000:]
    answer = json.loads(reopened.stdout.strip().splitlines()[-1])
    assert answer["ids"] == [["b"]]
    assert answer["ef"] == "m3e.integrations.chroma.M3EEmbeddingFunction"
    expected = m3e.load(str(tiny_st_model_dir)).encode_queries(["理赔"])[0]
    np.testing.assert_allclose(np.array(answer["query"]), expected, atol=1e-5)


def test_the_start_up_hook_imports_nothing_until_chroma_is_imported() -> None:
    """The .pth line (the file setup.py installs) only adds an import hook: a Python that never imports
    chromadb never imports m3e either; importing chromadb's registry registers "m3e"."""
    from m3e.integrations import chroma_autoload

    pth = Path(chroma_autoload.__file__).with_name("m3e-chroma.pth")
    assert pth.read_text(encoding="utf-8") == chroma_autoload.PTH_LINE  # what setup.py installs
    plain = _python("import sys; print(sorted(m for m in sys.modules if m.startswith(('m3e', 'chromadb'))))")
    assert plain.returncode == 0 and plain.stdout.strip() == "[]", plain.stdout + plain.stderr
    registered = _python(
        "import sys\n"
        "from chromadb.utils.embedding_functions import known_embedding_functions\n"
        "print(known_embedding_functions['m3e'].__module__, 'torch' in sys.modules)\n"
    )
    assert registered.returncode == 0, registered.stderr[-2000:]
    assert registered.stdout.split() == ["m3e.integrations.chroma", "False"]  # no model, no torch yet
