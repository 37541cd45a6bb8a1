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
