"""The int8 backend: fidelity to fp32 on a real model, the artefact cache, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import m3e
from m3e.backends import artefacts
from m3e.cli import main
from tests.conftest import MIXED_TEXTS

pytestmark = pytest.mark.slow  # ONNX exports and int8 builds

# Mixed Chinese / English, short queries and longer passages.
FIDELITY_TEXTS = [t for t in MIXED_TEXTS if t.strip()] + [
    "如何申请汽车保险的理赔？",
    "How do I file a claim on my car insurance?",
    "这本书讲的是一个年轻人在城市里寻找工作的故事，语言朴素，情节感人，值得一读。",
    "The stock market fell sharply today after the central bank raised interest rates again.",
    "我想买一台适合写代码的笔记本电脑，预算五千元左右，有什么推荐吗？",
    "Semantic search ranks documents by the cosine similarity of their embeddings to the query.",
    "酒店位置不错，离地铁站很近，但是房间有点小，早餐一般。",
    "他每天早上六点起床，先跑步半小时，然后吃早饭去上班。",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_keeps_cosine_on_minilm(minilm_dir: Path, m3e_home: Path) -> None:
    model = m3e.load(str(minilm_dir))
    attention = model.transformer.config._attn_implementation
    reference = model.encode(FIDELITY_TEXTS)
    model.set_backend("int8")
    assert model.backend == "int8"
    assert model.transformer.config._attn_implementation == attention  # exported eager, then restored
    quantised = model.encode(FIDELITY_TEXTS)
    cos = _cos(reference, quantised)
    assert cos.mean() >= 0.99, cos
    assert cos.min() >= 0.95, cos
    # built on the fly into the cache, since site-packages holds no artefact
    built = list((m3e_home / "int8").glob("*/model.onnx"))
    assert len(built) == 1
    # the graph ONNX Runtime runs is the fused one: one Attention op per layer
    meta = artefacts.read_artefact_meta(built[0].parent)
    assert meta is not None and meta["quantization"]["graph"] == "fused"
    assert meta["fused_ops"].get("Attention") == model.transformer.config.num_hidden_layers
    # activation scales are set per call, so batch composition moves a vector a little, no more
    single = np.stack([model.encode(t) for t in FIDELITY_TEXTS[:4]])
    assert _cos(single, quantised[:4]).min() >= 0.97
    assert _cos(single, reference[:4]).mean() >= 0.98
    # switching back gives fp32 again
    model.set_backend("torch")
    np.testing.assert_allclose(model.encode(FIDELITY_TEXTS[:3]), reference[:3], atol=1e-5)


def test_export_writes_artefact_next_to_model_and_load_reuses_it(
    tiny_copy: Path, m3e_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tiny_copy), "--backend", "int8"]) == 0
    artefact = artefacts.artefact_dir_for(tiny_copy, "int8")
    meta = artefacts.read_artefact_meta(artefact)
    assert meta is not None and meta["quantization"]["weight_type"] == "QInt8"
    assert "cosine int8 vs fp32" in capsys.readouterr().err
    assert not list(tiny_copy.glob(".*tmp*"))  # no temp directory left behind

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the exported artefact should have been reused")

    monkeypatch.setattr(artefacts, "build_artefact", no_build)
    model = m3e.load(str(tiny_copy), backend="int8")
    assert model._runner.path == artefact / artefacts.ONNX_NAME
    vectors = model.encode(["你好", "hello world", ""])
    assert vectors.shape == (3, model.dim)
    assert np.isfinite(vectors).all()
    assert not (m3e_home / "int8").exists()
    # export again: up to date, nothing rebuilt
    assert main(["export", str(tiny_copy), "--no-check"]) == 0


def test_stale_artefact_is_not_used(tiny_copy: Path, m3e_home: Path) -> None:
    assert main(["export", str(tiny_copy), "--no-check"]) == 0
    model = m3e.load(str(tiny_copy))
    import torch

    with torch.no_grad():  # as if fine-tuned after loading
        model.transformer.embeddings.word_embeddings.weight[5] += 0.5
    model.set_backend("int8")
    assert model._runner.path.parent.parent == m3e_home / "int8"
    reference = m3e.load(str(tiny_copy))
    reference.transformer.load_state_dict(model.transformer.state_dict())
    np.testing.assert_allclose(model.encode(["模型"]), reference.encode(["模型"]), atol=0.05)


def test_cache_is_built_once(tiny_copy: Path, m3e_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = m3e.load(str(tiny_copy), backend="int8")
    assert first._runner.path.parent.parent == m3e_home / "int8"
    monkeypatch.setattr(artefacts, "build_artefact", lambda *a, **k: pytest.fail("rebuilt"))
    second = m3e.load(str(tiny_copy), backend="int8")
    np.testing.assert_array_equal(first.encode(MIXED_TEXTS), second.encode(MIXED_TEXTS))


def test_encode_cli_backend_flag(tiny_copy: Path, m3e_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    assert main(["encode", "-m", str(tiny_copy), "--backend", "int8", "-o", str(out), "你好", "hello"]) == 0
    assert np.load(out).shape == (2, 32)


def test_fingerprint_changes_with_weights(tiny_copy: Path) -> None:
    import torch

    model = m3e.load(str(tiny_copy))
    before = artefacts.fingerprint(model)
    assert before == artefacts.fingerprint(m3e.load(str(tiny_copy)))
    with torch.no_grad():
        model.transformer.encoder.layer[0].output.dense.bias[0] += 1e-3
    assert artefacts.fingerprint(model) != before
