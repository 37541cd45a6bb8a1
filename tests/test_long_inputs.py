"""A huge text costs what a short one does: only the characters the first max_length tokens can come from
are tokenized, and the result is the same as tokenizing the whole text and truncating."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import m3e
from m3e.truncation import CHARS_PER_TOKEN_BUDGET


@pytest.fixture(scope="module")
def default_model() -> Any:
    return m3e.load()


def _spy_tokenizer(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    tokenizer = model.tokenizer
    original = type(tokenizer).__call__

    def spy(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(len(t) for t in (text if isinstance(text, list) else [text]))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", spy)
    return seen


def test_huge_text_is_read_only_as_far_as_its_tokens_need(default_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = default_model
    text = "今天天气很好，我们去公园散步。The weather is nice today, so we walk in the park. " * 100_000  # ~7 MB
    expected = model.tokenizer(text[:100_000], truncation=True, max_length=model.max_length)["input_ids"]
    seen = _spy_tokenizer(model, monkeypatch)
    assert model.tokenize([text])[0] == list(expected)
    assert max(seen) <= model.max_length * CHARS_PER_TOKEN_BUDGET + 16
    vector = model.encode(text)
    assert float(np.dot(vector, model.encode(text[:100_000]))) == pytest.approx(1.0, abs=1e-6)


def test_text_with_few_tokens_per_character_is_read_further(default_model: Any) -> None:
    model = default_model
    text = " " * (model.max_length * CHARS_PER_TOKEN_BUDGET * 3) + "你好世界" * 400
    expected = model.tokenizer(text, truncation=True, max_length=model.max_length)["input_ids"]
    assert model.tokenize([text])[0] == list(expected)
    assert len(expected) == model.max_length


def test_bert_wordpiece_model_truncates_exactly(tiny_st_model_dir: Path) -> None:
    model = m3e.load(str(tiny_st_model_dir))
    text = "the weather is nice today 今天天气很好 " * 2000
    expected = model.tokenizer(text, truncation=True, max_length=model.max_length)["input_ids"]
    assert model.tokenize([text])[0] == list(expected)
