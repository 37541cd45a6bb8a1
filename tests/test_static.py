"""m3e distill-static: a StaticEmbedding model from an m3e model, read by sentence-transformers and m3e alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import m3e
from m3e.cli import main
from m3e.errors import M3EError
from m3e.static import StaticModel, distill_static, pca, token_probabilities, token_vectors
from tests.conftest import MIXED_TEXTS

TEXTS = [t for t in MIXED_TEXTS if t.strip()]


def test_each_row_is_the_token_embedded_alone(tiny_st_model_dir: Path) -> None:
    model = m3e.load(str(tiny_st_model_dir))
    table = token_vectors(model, batch_size=64)
    assert table.shape == (len(model.tokenizer), model.dim)
    for token in (5, 100, len(model.tokenizer) - 1):
        if token in model.tokenizer.all_special_ids:
            continue
        alone = model.embed_token_ids([model.add_special_tokens([token])], normalize=False)[0]
        np.testing.assert_allclose(table[token], alone, atol=1e-5)
    assert not table[model.tokenizer.all_special_ids].any()  # special tokens: zero rows


def test_pca_keeps_the_geometry_it_can() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 8)).astype(np.float32) @ np.diag([5, 4, 3, 2, 1, 0.1, 0.1, 0.1]).astype(np.float32)
    full = pca(rows, 8)
    centred = rows - rows.mean(axis=0)
    np.testing.assert_allclose(full @ full.T, centred @ centred.T, rtol=1e-3, atol=1e-2)  # a rotation
    low = pca(rows, 5)
    assert low.shape == (200, 5)
    assert np.var(low, axis=0)[0] > np.var(low, axis=0)[-1]  # largest direction first


def test_frequent_tokens_weigh_less(tiny_st_model_dir: Path) -> None:
    model = m3e.load(str(tiny_st_model_dir))
    counted, how = token_probabilities(model, ["今天天气很好"] * 1000 + ["保险"] * 10)
    assert "1010" in how
    frequent = model.tokenizer("今", add_special_tokens=False)["input_ids"][0]
    rare = model.tokenizer("保", add_special_tokens=False)["input_ids"][0]
    assert counted[frequent] > counted[rare] > counted.min()
    zipf, how = token_probabilities(model, ["too few"])
    assert "Zipf" in how and zipf[0] > zipf[-1] and abs(zipf.sum() - 1) < 1e-9


def test_distilled_model_loads_in_sentence_transformers_and_m3e(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = m3e.load(str(tiny_st_model_dir))
    out = distill_static(model, tmp_path / "static", dim=16, texts=TEXTS * 100)
    meta = json.loads((out / "m3e_static.json").read_text(encoding="utf-8"))
    assert meta["dim"] == 16 and meta["vocabulary"] == len(model.tokenizer) and "token counts" in meta["weighting"]
    static = StaticModel.load(out)
    ours = static.encode(TEXTS)
    assert ours.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, normalize_embeddings=True), ours, atol=1e-5)
    assert static.encode(TEXTS[0]).shape == (16,)
    assert static.similarity(ours[:2], ours[:3]).shape == (2, 3)
    with pytest.raises(M3EError, match="StaticEmbedding"):
        StaticModel.load(tiny_st_model_dir)


def test_cli_distill_static(tiny_st_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    assert main(["distill-static", str(tiny_st_model_dir), "-o", str(out), "--dim", "8"]) == 0
    assert "8" in capsys.readouterr().err
    assert StaticModel.load(out).dim == 8
    assert main(["distill-static", str(tiny_st_model_dir), "-o", str(tmp_path / "t"), "--dim", "0"]) == 2
