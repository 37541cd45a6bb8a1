"""BGE-M3 on a tiny random twin (XLM-R + sparse_linear.pt + colbert_linear.pt) equals FlagEmbedding's
BGEM3FlagModel: dense vectors, lexical weights, ColBERT vectors and compute_score."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import m3e
from m3e.errors import M3EError
from tests.test_reranker import _xlmr_cross_encoder

TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "保险理赔需要提供保单和医疗发票",
    "The weather is nice today",
    "保险 保险 保险",
    "",
    "向量检索模型把句子表示成向量，用余弦相似度比较。" * 3,
]
PAIRS = [
    ("保险理赔", "保险理赔需要提供保单和医疗发票"),
    ("天气", "今天天气很好，我们去公园散步吧。"),
    ("the weather", "The weather is nice today"),
    ("笔记本电脑", "stock market fell sharply"),
]


def _bge_m3_twin(out: Path, seed: int = 3) -> Path:
    """A BGE-M3-layout directory: a tiny XLM-R encoder, its tokenizer and two random heads."""
    from transformers import XLMRobertaModel

    source = _xlmr_cross_encoder(out.parent / f"{out.name}-ce", seed=seed)
    torch.manual_seed(seed)
    encoder = XLMRobertaModel.from_pretrained(str(source))  # its pooler saved too, as in the real checkpoint
    encoder.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(source)).save_pretrained(out)
    hidden = encoder.config.hidden_size
    sparse, colbert = torch.nn.Linear(hidden, 1), torch.nn.Linear(hidden, hidden)
    with torch.no_grad():
        sparse.bias.fill_(0.1)  # most tokens get a positive weight, some stay at 0 (relu)
    torch.save(sparse.state_dict(), out / "sparse_linear.pt")
    torch.save(colbert.state_dict(), out / "colbert_linear.pt")
    return out


def _flag_embedding_m3():
    """FlagEmbedding's M3Embedder, imported without the package's __init__ (which imports decoder models
    that need another transformers version)."""
    spec = importlib.util.find_spec("FlagEmbedding")
    assert spec is not None and spec.submodule_search_locations, "FlagEmbedding (dev extra) must be installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, sub in (("FlagEmbedding", ""), ("FlagEmbedding.inference", "inference"),
                      ("FlagEmbedding.inference.embedder", "inference/embedder")):
        if name not in sys.modules or not hasattr(sys.modules[name], "__path__"):
            package = types.ModuleType(name)
            package.__path__ = [str(root / sub)]
            sys.modules[name] = package
    from FlagEmbedding.inference.embedder.encoder_only.m3 import M3Embedder

    return M3Embedder


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bge_m3_twin(tmp_path_factory.mktemp("bge-m3") / "twin")


@pytest.fixture(scope="module")
def reference(twin_dir: Path):
    return _flag_embedding_m3()(str(twin_dir), use_fp16=False, devices="cpu", query_max_length=64,
                                passage_max_length=64, batch_size=4)


def test_three_outputs_equal_flag_embedding(twin_dir: Path, reference) -> None:
    model = m3e.load_bge_m3(str(twin_dir))
    got = model.encode(TEXTS, output=("dense", "sparse", "colbert"), batch_size=4)
    want = reference.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    assert got.dense is not None and got.lexical_weights is not None and got.colbert is not None
    np.testing.assert_allclose(got.dense, want["dense_vecs"], atol=1e-5)
    for mine, theirs in zip(got.lexical_weights, want["lexical_weights"], strict=True):
        assert set(mine) == set(theirs)
        np.testing.assert_allclose([mine[k] for k in sorted(mine)], [theirs[k] for k in sorted(mine)], atol=1e-5)
    assert any(len(w) for w in got.lexical_weights)
    for mine, theirs in zip(got.colbert, want["colbert_vecs"], strict=True):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    # Repeats keep their largest weight; special tokens get none.
    specials = {str(i) for i in model.unused_token_ids()}
    assert not any(specials & set(w) for w in got.lexical_weights)
    assert reference.convert_id_to_token(want["lexical_weights"][3]) == model.lexical_tokens(got.lexical_weights[3])


def test_scores_equal_flag_embedding(twin_dir: Path, reference) -> None:
    model = m3e.load_bge_m3(str(twin_dir))
    weights = [0.4, 0.2, 0.4]
    # One pair per batch: FlagEmbedding pads a batch's passages with zero ColBERT vectors, which would enter
    # its max for every passage shorter than the batch's longest.
    want = reference.compute_score(PAIRS, batch_size=1, weights_for_different_modes=weights)
    got = model.compute_score(PAIRS, weights=weights)
    for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    q = reference.encode(["保险理赔"], return_sparse=True, return_colbert_vecs=True)
    p = reference.encode(["保险理赔需要提供保单和医疗发票"], return_sparse=True, return_colbert_vecs=True)
    assert model.lexical_score(q["lexical_weights"][0], p["lexical_weights"][0]) == pytest.approx(
        reference.compute_lexical_matching_score(q["lexical_weights"][0], p["lexical_weights"][0]), abs=1e-6)
    assert model.colbert_score(q["colbert_vecs"][0], p["colbert_vecs"][0]) == pytest.approx(
        float(reference.colbert_score(q["colbert_vecs"][0], p["colbert_vecs"][0])), abs=1e-6)


def test_dense_side_is_what_m3e_load_gives(twin_dir: Path) -> None:
    model = m3e.load_bge_m3(str(twin_dir))
    plain = m3e.load(str(twin_dir), pooling="cls")
    assert type(plain).__name__ == "EmbeddingModel"
    np.testing.assert_allclose(model.encode(TEXTS).dense, plain.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(model.embedder.encode(TEXTS), plain.encode(TEXTS), atol=1e-6)


def test_bge_m3_errors(twin_dir: Path, tiny_st_model_dir: Path) -> None:
    with pytest.raises(M3EError, match="not a BGE-M3 checkpoint"):
        m3e.load_bge_m3(str(tiny_st_model_dir))
    model = m3e.load_bge_m3(str(twin_dir))
    with pytest.raises(M3EError, match="output must name"):
        model.encode(["x"], output=("dense", "multivector"))
    with pytest.raises(M3EError, match="three numbers"):
        model.compute_score(PAIRS, weights=[1.0, 1.0])
    from m3e.registry import defaults_for

    assert defaults_for("BAAI/bge-m3").pooling == "cls"
