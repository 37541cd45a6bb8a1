"""What one request may cost the server: only the start of a long text is read, whatever its size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import m3e
from m3e.serving import ServeConfig, ServerThread, create_app
from m3e.truncation import CHARS_PER_TOKEN_BUDGET

LONG = "北京上海广州深圳城市旅游 hello world " * 20_000  # 340,000 characters, the tiny model reads 1,024


@pytest.fixture(scope="module")
def model(tiny_st_model_dir: Path) -> Any:
    return m3e.load(str(tiny_st_model_dir))


@pytest.fixture()
def counted(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Lengths of the texts the server asks the tokenizer to count."""
    lengths: list[int] = []
    count = model.count_tokens

    def spy(texts: list[str]) -> list[int]:
        lengths.extend(len(t) for t in texts)
        return list(count(texts))

    monkeypatch.setattr(model, "count_tokens", spy)
    return lengths


def test_a_long_text_is_truncated_from_its_start_only(model: Any, counted: list[int]) -> None:
    with ServerThread(create_app({"tiny": model}, ServeConfig(warmup=False))) as srv:
        resp = httpx.post(srv.url + "/v1/embeddings", json={"input": [LONG, "hello"]}, timeout=60)
    assert resp.status_code == 200 and resp.headers["x-m3e-truncated"] == "1"
    got = np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)
    assert float(np.abs(got - model.encode([LONG, "hello"])).max()) <= 1e-5
    assert counted and max(counted) <= model.max_length * CHARS_PER_TOKEN_BUDGET


def test_reject_mode_names_a_long_text_without_counting_all_of_it(model: Any, counted: list[int]) -> None:
    config = ServeConfig(on_long_input="reject", warmup=False)
    with ServerThread(create_app({"tiny": model}, config)) as srv:
        url = srv.url + "/v1/embeddings"
        err = httpx.post(url, json={"input": ["ok", LONG]}, timeout=60).json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "input"
        assert "input[1] has more tokens than this model's maximum of 64" in err["message"]
        short = httpx.post(url, json={"input": ["城市旅游" * 40]}, timeout=60).json()["error"]
        assert "input[0] has 162 tokens, more than this model's maximum of 64" in short["message"]
    assert max(counted) <= model.max_length * CHARS_PER_TOKEN_BUDGET


def test_whitespace_runs_are_read_further_as_encode_reads_them(model: Any) -> None:
    """A text whose character budget holds few tokens (a long run of spaces) is read on, like encode does."""
    text = " " * 5000 + "北京 " * 200
    with ServerThread(create_app({"tiny": model}, ServeConfig(warmup=False))) as srv:
        resp = httpx.post(srv.url + "/v1/embeddings", json={"input": text}, timeout=60)
    assert resp.status_code == 200 and resp.headers["x-m3e-truncated"] == "1"
    got = np.array(resp.json()["data"][0]["embedding"], dtype=np.float32)
    assert float(np.abs(got - model.encode(text)).max()) <= 1e-5
