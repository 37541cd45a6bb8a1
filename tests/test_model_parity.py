"""m3e.load(...).encode equals sentence-transformers on the same checkpoint, and m3e's save round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import m3e
from m3e.errors import M3EError, ModelNotFoundError
from tests.conftest import MIXED_TEXTS


@pytest.mark.parametrize("fixture", ["tiny_st_model_dir", "tiny_cls_model_dir"])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_tiny_bert_matches_sentence_transformers(request, fixture, batch_size):
    path = request.getfixturevalue(fixture)
    ours = m3e.load(str(path)).encode(MIXED_TEXTS, batch_size=batch_size, normalize=False)
    reference = SentenceTransformer(str(path), device="cpu").encode(MIXED_TEXTS, batch_size=batch_size)
    assert ours.shape == reference.shape == (len(MIXED_TEXTS), 32)
    assert np.abs(ours - reference).max() <= 1e-5
    normalized = m3e.load(str(path)).encode(MIXED_TEXTS, batch_size=batch_size)
    ref_norm = SentenceTransformer(str(path), device="cpu").encode(
        MIXED_TEXTS, batch_size=batch_size, normalize_embeddings=True
    )
    assert np.abs(normalized - ref_norm).max() <= 1e-5


def test_pooling_is_read_from_the_checkpoint(tiny_st_model_dir, tiny_cls_model_dir):
    assert m3e.load(str(tiny_st_model_dir)).pooling == "mean"
    assert m3e.load(str(tiny_cls_model_dir)).pooling == "cls"


@pytest.mark.parametrize("fixture", ["tiny_st_model_dir", "tiny_cls_model_dir"])
def test_save_round_trips_through_sentence_transformers(request, fixture, tmp_path):
    model = m3e.load(str(request.getfixturevalue(fixture)), query_prompt="查询：")
    out = model.save(tmp_path / "saved")
    ours = model.encode(MIXED_TEXTS, normalize=False)
    st = SentenceTransformer(str(out), device="cpu")
    assert np.abs(st.encode(MIXED_TEXTS) - ours).max() <= 1e-5
    # prompts survive the trip and mean the same thing on both sides
    assert st.prompts.get("query") == "查询："
    assert np.abs(
        st.encode(MIXED_TEXTS, prompt_name="query") - model.encode_queries(MIXED_TEXTS, normalize=False)
    ).max() <= 1e-5
    reloaded = m3e.load(str(out))
    assert np.abs(reloaded.encode(MIXED_TEXTS, normalize=False) - ours).max() <= 1e-6
    assert not list(tmp_path.glob(".saved*")), "no temporary directory is left behind"


def test_save_replaces_an_existing_directory_atomically(tiny_st_model_dir, tmp_path):
    model = m3e.load(str(tiny_st_model_dir))
    target = tmp_path / "m"
    model.save(target)
    (target / "stale.txt").write_text("old")
    model.save(target)
    assert not (target / "stale.txt").exists()
    assert json.loads((target / "modules.json").read_text())[1]["path"] == "1_Pooling"


@pytest.mark.parametrize("dtype", [None, "fp16"])
def test_saved_model_has_the_modes_of_plain_files(tiny_st_model_dir, tmp_path, dtype):
    """Written through private temporary files and directories, a saved model still gets the modes the umask
    gives a plain file or mkdir, so the other users of a shared install can read it."""
    import stat

    from m3e.atomic import DIR_MODE, FILE_MODE

    target = tmp_path / "m"
    m3e.load(str(tiny_st_model_dir)).save(target, dtype=dtype)
    m3e.load(str(tiny_st_model_dir)).save(target, dtype=dtype)  # the replacing path too
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [target, *target.rglob("*")]}
    assert modes["m"] == DIR_MODE and modes["m/model.safetensors"] == FILE_MODE
    assert {k: v for k, v in modes.items() if v != (DIR_MODE if (tmp_path / k).is_dir() else FILE_MODE)} == {}


def test_real_minilm_matches_sentence_transformers(minilm_dir):
    ours = m3e.load(str(minilm_dir))
    reference = SentenceTransformer(str(minilm_dir), device="cpu")
    for bs in (1, 7):
        diff = np.abs(ours.encode(MIXED_TEXTS, batch_size=bs) - reference.encode(MIXED_TEXTS, batch_size=bs))
        assert diff.max() <= 1e-5
    sims = ours.similarity(["A man is playing a guitar."], ["Someone plays the guitar.", "The stock market fell today."])
    assert sims[0, 0] > sims[0, 1] + 0.3


def test_plain_hf_checkpoint_with_explicit_pooling(tiny_st_model_dir):
    # The fixture keeps the bare Hugging Face checkpoint beside the ST directory.
    hf_dir = tiny_st_model_dir.parent / f"{tiny_st_model_dir.name}-hf"
    st_vectors = m3e.load(str(tiny_st_model_dir)).encode(MIXED_TEXTS, normalize=False)
    mean = m3e.load(str(hf_dir), pooling="mean", max_length=64).encode(MIXED_TEXTS, normalize=False)
    assert np.abs(mean - st_vectors).max() <= 1e-5
    for pooling in ("cls", "max", "first_last_mean", "last_weighted", "embedding_last_mean"):
        vec = m3e.load(str(hf_dir), pooling=pooling).encode(MIXED_TEXTS)
        assert vec.shape == (len(MIXED_TEXTS), 32)
        assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    with pytest.raises(M3EError, match="unknown pooling"):
        m3e.load(str(hf_dir), pooling="median")


def test_first_last_mean_refuses_an_unloadable_save(tiny_st_model_dir, tmp_path):
    hf_dir = tiny_st_model_dir.parent / f"{tiny_st_model_dir.name}-hf"
    with pytest.raises(M3EError, match="no sentence-transformers equivalent"):
        m3e.load(str(hf_dir), pooling="first_last_mean").save(tmp_path / "x")


def test_order_and_shapes(tiny_st_model_dir):
    model = m3e.load(str(tiny_st_model_dir))
    vectors = model.encode(MIXED_TEXTS, batch_size=3)
    one_by_one = np.stack([model.encode(t) for t in MIXED_TEXTS])
    assert np.abs(vectors - one_by_one).max() <= 1e-5
    assert model.encode([]).shape == (0, model.dim)
    assert model.encode("").shape == (model.dim,)
    assert model.encode(MIXED_TEXTS, convert_to_tensor=True).shape == (len(MIXED_TEXTS), model.dim)
    with pytest.raises(M3EError, match=r"texts\[1\] is int"):
        model.encode(["ok", 3])


def test_truncation_at_the_real_maximum(tiny_st_model_dir):
    model = m3e.load(str(tiny_st_model_dir))
    assert model.max_length == 64
    long_text = "向量" * 500
    assert len(model.tokenize([long_text])[0]) == 64
    assert m3e.load(str(tiny_st_model_dir), max_length=16).max_length == 16
    assert m3e.load(str(tiny_st_model_dir), max_length=10_000).max_length == 64


def test_long_text_windows_average_by_tokens(tiny_st_model_dir):
    model = m3e.load(str(tiny_st_model_dir), max_length=16)
    room = 16 - 2
    first, second = "天" * room, "海" * (room // 2)
    combined = model.encode([first + second], long_text="windows", normalize=False)[0]
    parts = model.encode([first, second], normalize=False)
    expected = (parts[0] * room + parts[1] * (room // 2)) / (room + room // 2)
    assert np.abs(combined - expected).max() <= 1e-5
    # short texts are unaffected by the mode
    short = ["今天天气很好", "The weather is nice today."]
    assert np.abs(model.encode(short, long_text="windows") - model.encode(short)).max() <= 1e-6


def test_token_budget_batches_give_the_same_vectors(tiny_st_model_dir):
    model = m3e.load(str(tiny_st_model_dir))
    base = model.encode(MIXED_TEXTS)
    assert np.abs(model.encode(MIXED_TEXTS, max_batch_tokens=40) - base).max() <= 1e-5


def test_registry_and_missing_models(monkeypatch):
    from m3e.registry import BGE_ZH_QUERY_INSTRUCTION, defaults_for

    assert defaults_for("BAAI/bge-small-zh-v1.5").pooling == "cls"
    assert defaults_for("BAAI/bge-small-zh-v1.5").prompts["query"] == BGE_ZH_QUERY_INSTRUCTION
    assert defaults_for("moka-ai/m3e-base").pooling == "mean"
    assert defaults_for("someone/bge-small-zh-v1.5-copy") is None  # exact ids only, no substring guessing
    with pytest.raises(ModelNotFoundError, match="no model directory"):
        m3e.load("./does/not/exist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="load it by path"):
        m3e.load("moka-ai/m3e-base")


def test_bf16_backend_stays_close(minilm_dir):
    fp32 = m3e.load(str(minilm_dir)).encode(MIXED_TEXTS)
    bf16 = m3e.load(str(minilm_dir), backend="bf16").encode(MIXED_TEXTS)
    assert float((fp32 * bf16).sum(axis=1).mean()) >= 0.99
