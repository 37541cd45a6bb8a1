"""Retrieve-then-rerank evaluation: the embedder's candidates reordered by a cross-encoder, scored by mteb beside
the embedder alone in one report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

import m3e
from m3e.cli import main
from m3e.evaluation.pipeline import RetrieveThenRerank
from tests.eval_helpers import retrieval_spec, write_toy_tasks
from tests.test_reranker import _bert_cross_encoder


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bert_cross_encoder(tmp_path_factory.mktemp("eval-rerank") / "ce")


def _toy() -> tuple[Dataset, Dataset]:
    spec = retrieval_spec()
    corpus = Dataset.from_list([{"id": d["id"], "text": d["text"], "title": ""} for d in spec["corpus"]])
    queries = Dataset.from_list(spec["queries"])
    return corpus, queries


def test_candidates_are_reordered_by_the_reranker(tiny_st_model_dir: Path, reranker_dir: Path) -> None:
    embedder, reranker = m3e.load(str(tiny_st_model_dir)), m3e.load_reranker(str(reranker_dir))
    corpus, queries = _toy()
    texts = list(corpus["text"])

    everything = RetrieveThenRerank(embedder, reranker, candidates=len(texts))
    everything.index(corpus)
    got = everything.search(queries, top_k=10)
    for qid, qtext in zip(queries["id"], queries["text"], strict=True):
        expected = [corpus["id"][r["corpus_id"]] for r in reranker.rank(qtext, texts)]
        assert sorted(got[qid], key=lambda d: -got[qid][d]) == expected

    first_only = RetrieveThenRerank(embedder, reranker, candidates=1)
    first_only.index(corpus)
    got = first_only.search(queries, top_k=5)
    cosines = np.asarray(embedder.encode_queries(list(queries["text"]))) @ np.asarray(
        embedder.encode_documents(texts)).T
    for row, qid in enumerate(queries["id"]):
        by_cosine = [corpus["id"][i] for i in np.argsort(-cosines[row], kind="stable")[:5]]
        assert sorted(got[qid], key=lambda d: -got[qid][d]) == by_cosine  # one candidate: nothing to reorder


def test_fused_second_stage_follows_the_weight(tiny_st_model_dir: Path, reranker_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    from m3e.fusion import fuse_rerank

    embedder, reranker = m3e.load(str(tiny_st_model_dir)), m3e.load_reranker(str(reranker_dir))
    assert reranker.rerank_weight is None  # a plain cross-encoder: its order alone
    corpus, queries = _toy()
    texts, ids = list(corpus["text"]), list(corpus["id"])
    cosines = np.asarray(embedder.encode_queries(list(queries["text"]))) @ np.asarray(
        embedder.encode_documents(texts)).T

    def order(pipeline: RetrieveThenRerank) -> dict[str, list[str]]:
        pipeline.index(corpus)
        got = pipeline.search(queries, top_k=len(texts))
        return {qid: sorted(got[qid], key=lambda d: -got[qid][d]) for qid in got}

    by_embedder = order(RetrieveThenRerank(embedder, reranker, candidates=len(texts), rerank_weight=0.0))
    for row, qid in enumerate(queries["id"]):
        assert by_embedder[qid] == [ids[i] for i in np.argsort(-cosines[row], kind="stable")]
    # a reranker directory that recommends a weight: the pipeline uses it unless told otherwise
    recommending = reranker.save(tmp_path / "weighted")
    (recommending / "m3e_rerank.json").write_text('{"rerank_weight": 0.3}', encoding="utf-8")
    weighted = m3e.load_reranker(str(recommending))
    assert weighted.rerank_weight == 0.3
    CrossEncoder(str(recommending), device="cpu")  # still a CrossEncoder directory
    fused = order(RetrieveThenRerank(embedder, weighted, candidates=len(texts)))
    for row, (qid, qtext) in enumerate(zip(queries["id"], queries["text"], strict=True)):
        scores = reranker.predict([(qtext, t) for t in texts], activation="identity")
        expected = fuse_rerank({ids[i]: float(cosines[row, i]) for i in range(len(ids))},
                               {ids[i]: float(scores[i]) for i in range(len(ids))}, 0.3)
        assert fused[qid] == list(expected)
    assert weighted.save(tmp_path / "again").joinpath("m3e_rerank.json").is_file()  # kept on save
    (recommending / "m3e_rerank.json").write_text('{"rerank_weight": 3}', encoding="utf-8")
    with pytest.raises(m3e.M3EError, match="between 0 and 1"):
        m3e.load_reranker(str(recommending))


def test_fuse_rerank_by_hand() -> None:
    from m3e.fusion import fuse_rerank

    retrieval = {"a": 0.9, "b": 0.7, "c": 0.5}  # min-max: a 1, b 0.5, c 0
    rerank = {"a": -2.0, "b": 2.0, "c": 0.0}  # min-max: a 0, b 1, c 0.5
    fused = fuse_rerank(retrieval, rerank, 0.25)  # a 0.75, b 0.625, c 0.125
    assert list(fused) == ["a", "b", "c"]
    assert fused["a"] == pytest.approx(0.75) and fused["b"] == pytest.approx(0.625)
    assert list(fuse_rerank(retrieval, rerank, 0.75)) == ["b", "c", "a"]  # a 0.25, b 0.875, c 0.375
    assert list(fuse_rerank(retrieval, rerank, 1.0)) == ["b", "c", "a"] and fuse_rerank(retrieval, rerank, 1.0)["b"] == 2.0
    with pytest.raises(m3e.M3EError):
        fuse_rerank(retrieval, rerank, 1.5)


def test_eval_reports_the_pipeline_beside_the_embedder(tiny_st_model_dir: Path, reranker_dir: Path,
                                                        tmp_path: Path) -> None:
    data = write_toy_tasks(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["eval", str(tiny_st_model_dir), "bm25", "--rerank", str(reranker_dir), "--candidates", "4",
                 "--suite", "smoke", "--data-dir", str(data), "--out", str(out), "-q", "--no-chart"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    labels = [m["label"] for m in results["models"]]
    name = tiny_st_model_dir.name
    assert labels == [name, f"{name}+rerank", "bm25"]
    pipeline = next(m for m in results["models"] if m["label"] == f"{name}+rerank")
    assert pipeline["reranker"]["source"] == str(reranker_dir) and pipeline["candidates"] == 4
    assert pipeline["rerank_weight"] == 1.0
    rows = {(r["model"], r["task"]): r for r in results["results"]}
    assert rows[(f"{name}+rerank", "ToyInsuranceRetrieval")]["score"] is not None
    assert rows[(f"{name}+rerank", "ToySentimentClassification")]["status"] == "skipped"
    assert "+rerank" in (out / "report.md").read_text(encoding="utf-8")
    assert main(["eval", str(tiny_st_model_dir), "--rerank", str(reranker_dir), "--candidates", "0",
                 "--suite", "smoke", "--data-dir", str(data), "--out", str(tmp_path / "x"), "-q"]) == 2
