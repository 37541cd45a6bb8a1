"""Several models and aliases: `m3e serve default /models/bge=bge --alias m3e-base=default` as a process, and
the README's Serve snippets run as written against it."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import m3e
from m3e.cli import serve
from m3e.errors import M3EError
from m3e.serving.openai_tokens import write_tiktoken_cache
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # real m3e serve processes and the README's clients

README = Path(__file__).resolve().parents[1] / "README.md"
KEY = "KEY"  # the README's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stderr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve") / "stderr.txt"


@pytest.fixture(scope="module")
def served(tiny_st_model_dir: Path, stderr: Path) -> Iterator[str]:
    """The README's second command, with the tiny model standing in for /models/bge."""
    port = _free_port()
    command = [
        "serve",
        "default",
        f"{tiny_st_model_dir}=bge",
        "--alias",
        "m3e-base=default",
        "--api-key",
        KEY,
        "--backend",  # the vectors are compared with m3e.load()'s to 1e-5: torch, not auto's fast path
        "torch",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with stderr.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "m3e.cli", *command, "--port", str(port), "--threads", "1"],
            env=env,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _healthy(url), "m3e serve to become ready", timeout=120)
        assert proc.poll() is None, stderr.read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def default_model() -> Any:
    return m3e.load()


def _get(url: str, path: str) -> Any:
    resp = httpx.get(url + path, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_models_and_aliases_are_listed(served: str) -> None:
    listed = {m["id"]: m for m in _get(served, "/v1/models")["data"]}
    assert list(listed) == ["m3e", "bge", "m3e-base"]
    assert listed["m3e"]["aliases"] == ["m3e-base"] and listed["bge"]["aliases"] == []
    assert listed["m3e-base"]["alias_of"] == "m3e"
    assert listed["m3e-base"]["prompts"] == {"query": "query: ", "document": "passage: "}
    assert _get(served, "/v1/models/m3e-base")["alias_of"] == "m3e"


def test_an_alias_embeds_with_its_model(served: str, default_model: Any) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    for name, expected in (
        ("m3e-base", default_model.encode_queries(["你好"])),
        ("m3e-base:document", default_model.encode_documents(["你好"])),
    ):
        resp = httpx.post(served + "/v1/embeddings", json={"model": name, "input": ["你好"]}, headers=headers)
        assert resp.status_code == 200 and resp.json()["model"] == name
        got = np.array([resp.json()["data"][0]["embedding"]], dtype=np.float32)
        assert float(np.abs(got - expected).max()) <= 1e-5


def test_the_startup_and_access_logs(served: str, stderr: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    httpx.post(served + "/v1/embeddings", json={"model": "bge", "input": "x"}, headers=auth)
    log = stderr.read_text()
    assert "m3e serve: m3e, also as m3e-base (dim 384" in log
    assert "texts with no side: query ('query: ')" in log
    assert "warning" not in log  # bound to loopback
    assert re.search(r'"POST /v1/embeddings HTTP/1\.1" 200 \d+ model=bge texts=1 tokens=3 ms=', log), log


def _serve_snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Serve") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_serve_snippets_run_as_written(
    served: str, default_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippets = _serve_snippets()
    assert len(snippets) == 2 and all("http://127.0.0.1:8000/v1" in s for s in snippets)
    write_tiktoken_cache(tmp_path)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # LangChain's tiktoken, offline
    namespace: dict[str, Any] = {}
    for snippet in snippets:  # the README's port is 8000; this server's is another
        exec(
            compile(snippet.replace("127.0.0.1:8000", served.removeprefix("http://")), "README.md", "exec"),
            namespace,
        )
    docs = np.array([d.embedding for d in namespace["docs"].data], dtype=np.float32)
    assert float(np.abs(docs - default_model.encode_documents(["今天天气很好", "hello"])).max()) <= 1e-5
    query = np.array(namespace["query"].data[0].embedding, dtype=np.float32)
    assert float(np.abs(query - default_model.encode_queries("天气怎么样")).max()) <= 1e-5
    index = np.array(namespace["index"], dtype=np.float32)
    assert (
        float(
            np.abs(index - default_model.encode_documents(["今天天气很好", "保险理赔需要哪些材料？"])).max()
        )
        <= 1e-5
    )
    question = np.array(namespace["question"], dtype=np.float32)
    assert float(np.abs(question - default_model.encode_queries("理赔要准备什么")).max()) <= 1e-5


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_model_specs_name_the_default_and_take_model_equals_name(tmp_path: Path) -> None:
    odd = tmp_path / "a=b"  # an existing directory with '=' in its name stays a path
    odd.mkdir()
    specs = serve._model_specs(_args("default", "/models/bge=bge", str(odd), "--name", "x=default"))
    assert specs == [(None, None), ("bge", "/models/bge"), (None, str(odd)), ("x", None)]


def test_aliases_resolve_default_and_refuse_what_is_not_served() -> None:
    args = _args("--alias", "m3e-base=default", "--alias", "b=bge")
    assert serve._aliases(args, ["m3e", "bge"], "m3e") == {"m3e-base": "m3e", "b": "bge"}
    with pytest.raises(M3EError, match="ALIAS=NAME"):
        serve._aliases(_args("--alias", "nope"), ["m3e"], "m3e")
    with pytest.raises(M3EError, match="no served model is named 'gone'"):
        serve._aliases(_args("--alias", "a=gone"), ["m3e"], "m3e")
    with pytest.raises(M3EError, match="default model is not served"):
        serve._aliases(_args("--alias", "a=default"), ["bge"], None)
    with pytest.raises(M3EError, match="already a name"):
        serve._aliases(_args("--alias", "bge=m3e"), ["m3e", "bge"], "m3e")


def test_create_app_checks_its_aliases(tiny_st_model_dir: Path) -> None:
    from m3e.serving import ServeConfig, create_app

    tiny = m3e.load(str(tiny_st_model_dir))
    with pytest.raises(M3EError, match="not served"):
        create_app({"tiny": tiny}, ServeConfig(aliases={"x": "nope"}, warmup=False))
    with pytest.raises(M3EError, match="already the name"):
        create_app({"tiny": tiny, "other": tiny}, ServeConfig(aliases={"other": "tiny"}, warmup=False))
