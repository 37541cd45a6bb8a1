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
    rows = {(r["model"], r["task"]): r for r in results["results"]}
    assert rows[(f"{name}+rerank", "ToyInsuranceRetrieval")]["score"] is not None
    assert rows[(f"{name}+rerank", "ToySentimentClassification")]["status"] == "skipped"
    assert "+rerank" in (out / "report.md").read_text(encoding="utf-8")
    assert main(["eval", str(tiny_st_model_dir), "--rerank", str(reranker_dir), "--candidates", "0",
                 "--suite", "smoke", "--data-dir", str(data), "--out", str(tmp_path / "x"), "-q"]) == 2
