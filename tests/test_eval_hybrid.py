"""Dense, sparse and hybrid in one evaluation: the fusion formula, the mteb search models, `m3e eval --modes`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from datasets import Dataset

from m3e.cli import main
from m3e.errors import M3EError
from m3e.evaluation.hybrid import HybridSearch, SparseSearch
from m3e.evaluation.runner import resolve_models
from m3e.fusion import Fusion, fuse
from tests.eval_helpers import write_toy_tasks


def test_rrf_and_weighted_fusion_by_hand() -> None:
    dense = {"a": 0.9, "b": 0.5, "c": 0.1}
    sparse = {"c": 12.0, "d": 4.0}
    rrf = fuse(dense, sparse, Fusion("rrf", rrf_k=10))
    # a: 1/11; b: 1/12; c: 1/13 + 1/11; d: 1/12
    assert rrf == pytest.approx({"c": 1 / 13 + 1 / 11, "a": 1 / 11, "b": 1 / 12, "d": 1 / 12})
    assert list(rrf) == ["c", "a", "b", "d"]  # b before d: the dense list's order breaks the tie
    weighted = fuse(dense, sparse, Fusion("weighted", dense_weight=0.6))
    # dense min-max: a 1, b 0.5, c 0; sparse divided by its best: c 1, d 1/3 (BM25's zero is "no match")
    assert weighted == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.4, "d": 0.4 / 3})
    assert list(weighted) == ["a", "c", "b", "d"]
    default = fuse(dense, sparse)  # weighted, dense 0.8
    assert default == pytest.approx({"a": 0.8, "b": 0.4, "c": 0.2, "d": 0.2 / 3})
    assert fuse({}, {"x": 3.0}) == {"x": pytest.approx(0.2)}
    assert fuse({"a": 0.9}, {"x": 0.0}) == {"a": pytest.approx(0.8), "x": 0.0}  # no shared word: no sparse share
    with pytest.raises(M3EError, match="unknown fusion"):
        Fusion("max")
    with pytest.raises(M3EError, match="between 0 and 1"):
        Fusion("weighted", dense_weight=1.5)


class _StubEmbedder:
    """Vectors chosen by hand: the query 找一本科幻小说 is close to d-meaning (no shared word) only."""

    name = "stub"
    dim = 2
    _docs: ClassVar[dict[str, list[float]]] = {"d-meaning": [1.0, 0.0], "d-words": [0.0, 1.0], "d-other": [0.6, -0.8]}

    def encode_documents(self, texts, **kw):
        lookup = {t: v for t, v in zip(_CORPUS["text"], self._docs.values(), strict=True)}
        return np.asarray([lookup[t] for t in texts], dtype=np.float32)

    def encode_queries(self, texts, **kw):
        return np.asarray([[0.98, 0.2] for _ in texts], dtype=np.float32)


_CORPUS = {"id": ["d-meaning", "d-words", "d-other"],
           "text": ["这是一部关于外星文明和太空旅行的长篇作品", "我想找一本科幻小说送给朋友", "今天的天气非常好"],
           "title": ["", "", ""]}


def test_hybrid_finds_what_each_side_alone_misses() -> None:
    corpus = Dataset.from_dict(_CORPUS)
    queries = Dataset.from_dict({"id": ["q"], "text": ["科幻小说推荐"]})
    sparse = SparseSearch()
    sparse.index(corpus)
    assert list(sparse.search(queries, top_k=1)["q"]) == ["d-words"]  # shares 科幻 and 小说
    hybrid = HybridSearch(_StubEmbedder(), Fusion("rrf"))  # type: ignore[arg-type]
    hybrid.index(corpus)
    dense_top = np.argsort(-(np.asarray([[0.98, 0.2]]) @ np.asarray(list(_StubEmbedder._docs.values())).T)[0])
    assert [_CORPUS["id"][i] for i in dense_top[:1]] == ["d-meaning"]
    got = hybrid.search(queries, top_k=2)["q"]
    assert set(got) == {"d-meaning", "d-words"}  # each side's best, which the other side alone ranks lower


def test_model_specs_for_modes(tiny_st_model_dir: Path) -> None:
    specs = resolve_models(["default", str(tiny_st_model_dir) + "#hybrid", "sparse"])
    assert [(s.label, s.kind) for s in specs] == [
        ("default", "m3e"), (f"{tiny_st_model_dir.name}#hybrid", "hybrid"), ("sparse", "sparse")]
    both = resolve_models(["default", "default@int8"], modes=["dense", "sparse", "hybrid"])
    assert [s.label for s in both] == ["default", "sparse", "default#hybrid", "default@int8", "default@int8#hybrid"]
    assert not specs[1].supports("Classification") and specs[1].supports("Retrieval")
    with pytest.raises(M3EError, match="unknown mode"):
        resolve_models(["default"], modes=["colbert"])
    with pytest.raises(M3EError, match="no retrieval modes"):
        resolve_models(["bm25#hybrid"])


def test_eval_scores_dense_sparse_hybrid_in_one_report(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    data = write_toy_tasks(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["eval", str(tiny_st_model_dir), "--modes", "dense,sparse,hybrid", "--suite", "smoke",
                 "--data-dir", str(data), "--out", str(out), "-q", "--no-chart"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    name = tiny_st_model_dir.name
    assert [m["label"] for m in results["models"]] == [name, "sparse", f"{name}#hybrid"]
    rows = {(r["model"], r["task"]): r for r in results["results"]}
    for label in (name, "sparse", f"{name}#hybrid"):
        assert rows[(label, "ToyInsuranceRetrieval")]["status"] == "ok"
    assert rows[("sparse", "ToySentimentClassification")]["status"] == "skipped"
    hybrid = next(m for m in results["models"] if m["label"] == f"{name}#hybrid")
    assert "weighted" in hybrid["hybrid"]["fusion"] and "BM25" in hybrid["hybrid"]["sparse"]
    assert "--modes dense,sparse,hybrid" in results["command"]
