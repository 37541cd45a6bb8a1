"""The sentence-transformers path: a model saved by m3e loads in SentenceTransformer unchanged."""

from __future__ import annotations

import numpy as np


def test_m3e_saved_model_is_a_sentence_transformers_model(tmp_path, tiny_st_model_dir):
    from sentence_transformers import SentenceTransformer

    import m3e

    model = m3e.load(str(tiny_st_model_dir), query_prompt="查询：")
    saved = model.save(tmp_path / "saved")
    st = SentenceTransformer(str(saved), device="cpu")
    texts = ["保险理赔需要哪些材料？", "The weather is nice today."]
    np.testing.assert_allclose(st.encode(texts, normalize_embeddings=True), model.encode(texts), atol=1e-5)
    np.testing.assert_allclose(st.encode(texts, prompt_name="query", normalize_embeddings=True),
                               model.encode_queries(texts), atol=1e-5)


def test_half_precision_save_loads_in_fp32_in_both(tmp_path, minilm_dir):
    """save(dtype="fp16") halves the file; sentence-transformers and m3e both compute in fp32 from it and agree."""
    import torch
    from sentence_transformers import SentenceTransformer

    import m3e

    model = m3e.load(str(minilm_dir))
    full = model.save(tmp_path / "fp32")
    half = model.save(tmp_path / "fp16", dtype="fp16")
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    texts = ["保险理赔需要哪些材料？", "The weather is nice today.", "A man is playing a guitar on stage."]
    st = SentenceTransformer(str(half), device="cpu")
    assert next(st.parameters()).dtype == torch.float32
    ours = m3e.load(str(half))
    np.testing.assert_allclose(st.encode(texts, normalize_embeddings=True), ours.encode(texts), atol=1e-5)
    cos = (ours.encode(texts) * model.encode(texts)).sum(1)
    assert cos.min() > 0.9999  # rounding the weights to fp16 moves the vectors very little
