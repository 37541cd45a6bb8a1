"""bf16 fidelity and thread settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import m3e
from m3e.backends import threads
from m3e.errors import M3EError
from tests.conftest import MIXED_TEXTS


def test_bf16_keeps_cosine_on_minilm(minilm_dir: Path) -> None:
    model = m3e.load(str(minilm_dir))
    texts = [t for t in MIXED_TEXTS if t.strip()]
    reference = model.encode(texts)
    model.set_backend("bf16")
    vectors = model.encode(texts)
    cos = (reference * vectors).sum(axis=1)
    assert cos.mean() >= 0.999, cos
    assert vectors.dtype == np.float32


def test_unknown_backend(tiny_st_model_dir: Path) -> None:
    with pytest.raises(M3EError, match="unknown backend"):
        m3e.load(str(tiny_st_model_dir), backend="fp8")


def test_physical_cores_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    n = threads.physical_cores()
    assert n >= 1
    monkeypatch.delenv("M3E_NUM_THREADS", raising=False)
    assert threads.inference_threads() == n
    monkeypatch.setenv("M3E_NUM_THREADS", "1")
    assert threads.inference_threads() == 1
    monkeypatch.setenv("M3E_NUM_THREADS", "many")
    assert threads.inference_threads() == n


def test_limit_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("M3E_NUM_THREADS", "1")
        assert threads.limit_torch_threads() == 1
    finally:
        torch.set_num_threads(before)
