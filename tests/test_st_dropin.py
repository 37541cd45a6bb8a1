"""Code written for sentence-transformers runs on an m3e model and gives sentence-transformers' results.

Each snippet below is a usage from sentence-transformers' documentation, run once with
``SentenceTransformer(path)`` and once with ``m3e.load(path)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import quantize_embeddings as st_quantize

import m3e
from m3e.quantization import quantize_embeddings
from tests.conftest import MIXED_TEXTS

pytestmark = pytest.mark.slow  # every snippet on two models and two libraries

SENTENCES = [t for t in MIXED_TEXTS if t.strip()]

SNIPPETS: dict[str, dict[str, Any]] = {
    "keywords of the quickstart": dict(show_progress_bar=False, normalize_embeddings=True, convert_to_numpy=True,
                                       device="cpu"),
    "normalised, small batches": dict(batch_size=2, normalize_embeddings=True),
    "not normalised": dict(normalize_embeddings=False),
    "tensor output": dict(convert_to_tensor=True, normalize_embeddings=True),
    "Matryoshka truncation": dict(truncate_dim=16, normalize_embeddings=True),
    "truncation without normalisation": dict(truncate_dim=8, normalize_embeddings=False),
    "int8 embeddings": dict(precision="int8", normalize_embeddings=True),
    "uint8 embeddings": dict(precision="uint8", normalize_embeddings=False),
    "binary embeddings": dict(precision="binary", normalize_embeddings=True),
    "ubinary embeddings": dict(precision="ubinary", normalize_embeddings=False),
    "a progress bar": dict(show_progress_bar=True, normalize_embeddings=True),
}


@pytest.fixture(scope="module", params=["tiny", "minilm"])
def both(request: pytest.FixtureRequest, tiny_st_model_dir: Path, minilm_dir: Path) -> tuple[Any, Any]:
    path = str(tiny_st_model_dir if request.param == "tiny" else minilm_dir)
    return SentenceTransformer(path, device="cpu"), m3e.load(path)


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.mark.parametrize("snippet", list(SNIPPETS))
def test_snippet_gives_sentence_transformers_result(snippet: str, both: tuple[Any, Any]) -> None:
    st, model = both
    kwargs = SNIPPETS[snippet]
    expected, got = st.encode(SENTENCES, **kwargs), model.encode(SENTENCES, **kwargs)
    assert type(got) is type(expected)
    expected, got = _as_numpy(expected), _as_numpy(got)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if got.dtype in (np.int8, np.uint8):
        # One bucket apart at most (float summation order differs), and nearly always equal.
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1 if "int8" in snippet else True
        assert np.mean(got == expected) > 0.97
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_single_sentence_list_output_and_token_embeddings(both: tuple[Any, Any]) -> None:
    st, model = both
    np.testing.assert_allclose(model.encode("你好世界", normalize_embeddings=False),
                               st.encode("你好世界"), atol=1e-5)
    expected, got = st.encode(SENTENCES[:3], convert_to_numpy=False), model.encode(SENTENCES[:3], convert_to_numpy=False)
    assert isinstance(got, list) and len(got) == 3 and all(isinstance(t, torch.Tensor) for t in got)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(_as_numpy(g), _as_numpy(st_normalized(e, model)), atol=1e-5)
    expected_tokens = st.encode(SENTENCES[:3], output_value="token_embeddings")
    got_tokens = model.encode(SENTENCES[:3], output_value="token_embeddings")
    for e, g in zip(expected_tokens, got_tokens, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(_as_numpy(g), _as_numpy(e), atol=1e-5)


def st_normalized(vector: torch.Tensor, model: Any) -> torch.Tensor:
    # m3e normalises by default (sentence-transformers does not): compare the unit vectors.
    return torch.nn.functional.normalize(vector, dim=-1)


def test_default_call_differs_only_by_normalisation(both: tuple[Any, Any]) -> None:
    st, model = both
    expected = st.encode(SENTENCES)
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(model.encode(SENTENCES), expected, atol=1e-5)
    np.testing.assert_allclose(model.similarity(model.encode(SENTENCES), model.encode(SENTENCES)),
                               _as_numpy(st.similarity(st.encode(SENTENCES), st.encode(SENTENCES))), atol=1e-5)


def test_unknown_keyword_names_the_accepted_ones(tiny_st_model_dir: Path) -> None:
    model = m3e.load(str(tiny_st_model_dir))
    with pytest.raises(TypeError, match=r"chunk_size.*accepts .*normalize_embeddings"):
        model.encode(["a"], chunk_size=10)


def test_quantization_matches_sentence_transformers() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 40)).astype(np.float32)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        np.testing.assert_array_equal(quantize_embeddings(x, precision), st_quantize(x, precision))
