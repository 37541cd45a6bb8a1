"""Rerankers: the same scores as sentence-transformers' CrossEncoder (BERT and XLM-R shapes), ranking,
windows over long documents, save round-trip, backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

import m3e
from m3e.errors import M3EError
from tests.conftest import _tiny_vocab

PAIRS = [
    ("今天天气怎么样", "今天天气很好，是个晴天"),
    ("如何申请车险理赔", "车险理赔需要保单、驾驶证和事故证明"),
    ("the weather today", "The weather is nice today"),
    ("我想买笔记本电脑", "stock market fell sharply"),
    ("问题", ""),
]


def _bert_cross_encoder(out: Path, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab={p: i for i, p in enumerate(_tiny_vocab())}, do_lower_case=True,
                                  model_max_length=64)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # a random head gives logits near 0; a wider one makes score differences visible
        model.classifier.weight.mul_(200)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _xlmr_cross_encoder(out: Path, seed: int = 1) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = [p for p in _tiny_vocab() if not p.startswith("[") and not p.startswith("##")]
    vocab = [(s, 0.0) for s in specials] + [("▁" + p if p.isascii() else p, -5.0) for p in pieces] + [("▁", -3.0)]
    vocab += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz" if ("▁" + c, -5.0) not in vocab]
    vocab.append(("<mask>", 0.0))
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                        model_max_length=64)
    config = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, num_labels=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(200)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bert_cross_encoder(tmp_path_factory.mktemp("rerankers") / "bert")


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _xlmr_cross_encoder(tmp_path_factory.mktemp("rerankers") / "xlmr")


@pytest.mark.parametrize("shape", ["bert", "xlmr"])
def test_scores_equal_sentence_transformers(shape: str, bert_dir: Path, xlmr_dir: Path) -> None:
    path = str(bert_dir if shape == "bert" else xlmr_dir)
    reference = CrossEncoder(path, device="cpu").predict(PAIRS)
    reranker = m3e.load_reranker(path)
    assert reranker.activation == "sigmoid" and reranker.uses_token_types == (shape == "bert")
    scores = reranker.predict(PAIRS)
    assert scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, reference, atol=1e-5)
    raw = reranker.predict(PAIRS, activation="identity")
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), scores, atol=1e-6)


def test_rank_orders_like_cross_encoder_rank(bert_dir: Path) -> None:
    docs = [d for _, d in PAIRS]
    query = "今天天气"
    expected = CrossEncoder(str(bert_dir), device="cpu").rank(query, docs, top_k=3, return_documents=True)
    got = m3e.load_reranker(str(bert_dir)).rank(query, docs, top_k=3, return_documents=True)
    assert [g["corpus_id"] for g in got] == [e["corpus_id"] for e in expected]
    assert [g["text"] for g in got] == [docs[e["corpus_id"]] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-5)


def test_long_document_scores_its_best_window(bert_dir: Path) -> None:
    # max_length 24 = [CLS] + 2 query tokens + [SEP] + 19 document tokens + [SEP]; one token per character here.
    reranker = m3e.load_reranker(str(bert_dir), max_length=24, activation="identity")
    query = "天气"
    text = "今天天气很好是个晴天我们去北京上海广州深圳城市旅游吃饭喝茶咖啡书读写字语言英中模型向量检索句子"
    windows = [text[i : i + 19] for i in range(0, len(text), 19)]
    assert len(windows) == 3
    per_window = reranker.predict([(query, w) for w in windows])
    assert np.ptp(per_window) > 1e-2  # the windows score differently, so the max means something
    assert float(reranker.predict([(query, text)])[0]) == pytest.approx(float(per_window.max()), abs=1e-6)
    # Beyond max_windows the document is not read at all.
    first_only = m3e.load_reranker(str(bert_dir), max_length=24, activation="identity", max_windows=1)
    assert float(first_only.predict([(query, text)])[0]) == pytest.approx(float(per_window[0]), abs=1e-6)


def test_saved_reranker_loads_in_cross_encoder(bert_dir: Path, tmp_path: Path) -> None:
    reranker = m3e.load_reranker(str(bert_dir))
    out = reranker.save(tmp_path / "saved")
    np.testing.assert_allclose(CrossEncoder(str(out), device="cpu").predict(PAIRS), reranker.predict(PAIRS), atol=1e-5)
    again = m3e.load_reranker(str(out))
    assert again.max_length == reranker.max_length and again.activation == "sigmoid"
    half = reranker.save(tmp_path / "half", dtype="fp16")
    assert (half / "model.safetensors").stat().st_size < (out / "model.safetensors").stat().st_size
    np.testing.assert_allclose(m3e.load_reranker(str(half)).predict(PAIRS), reranker.predict(PAIRS), atol=2e-3)


@pytest.mark.parametrize(
    "backend, tol", [("bf16", 0.02), ("int8", 0.03), ("openvino", 0.02), ("openvino-int8", 0.05)]
)  # openvino: bf16 where the CPU has it
def test_backends_keep_the_scores(backend: str, tol: float, xlmr_dir: Path, bert_dir: Path,
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M3E_HOME", str(tmp_path))
    for path in (bert_dir, xlmr_dir):
        reference = m3e.load_reranker(str(path)).predict(PAIRS)
        fast = m3e.load_reranker(str(path), backend=backend)
        assert fast.backend == backend
        np.testing.assert_allclose(fast.predict(PAIRS), reference, atol=tol)


@pytest.mark.parametrize("backend", ["openvino", "openvino-int8"])
def test_export_writes_the_rerankers_artefact_and_loading_reuses_it(
    backend: str, bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from m3e.backends import artefacts
    from m3e.cli import main

    monkeypatch.setenv("M3E_HOME", str(tmp_path / "home"))
    model_dir = tmp_path / "reranker"
    shutil.copytree(bert_dir, model_dir)
    assert main(["export", str(model_dir), "--backend", backend]) == 0
    meta = artefacts.read_artefact_meta(artefacts.artefact_dir_for(model_dir, backend))
    assert meta is not None and meta["output"] == "logits"  # the cross-encoder's graph, not an embedder's
    assert f"scores {backend} vs fp32 on" in capsys.readouterr().err
    if backend == "openvino-int8":
        assert meta["quantization"]["measure"] == "Spearman of the scores" and "pairs" in meta["quantization"]["check"]
    monkeypatch.setattr(artefacts, "build_artefact", lambda *a, **k: pytest.fail("rebuilt"))
    fast = m3e.load_reranker(str(model_dir), backend=backend)
    np.testing.assert_allclose(fast.predict(PAIRS), m3e.load_reranker(str(model_dir)).predict(PAIRS), atol=0.05)


def test_bad_pairs_and_labels_are_clear_errors(bert_dir: Path) -> None:
    reranker = m3e.load_reranker(str(bert_dir))
    with pytest.raises(M3EError, match="list of"):
        reranker.predict(("a", "b"))
    with pytest.raises(M3EError, match=r"pairs\[1\]"):
        reranker.predict([("a", "b"), ("only one",)])
    with pytest.raises(M3EError, match="activation"):
        m3e.load_reranker(str(bert_dir), activation="softmax")
    assert reranker.predict([]).shape == (0,)


def test_registry_defaults_for_bge_rerankers() -> None:
    from m3e.registry import reranker_defaults_for

    for name in ("BAAI/bge-reranker-base", "BAAI/bge-reranker-large", "BAAI/bge-reranker-v2-m3"):
        known = reranker_defaults_for(name)
        assert known is not None and known.max_length == 512 and known.activation == "sigmoid"
    assert reranker_defaults_for("BAAI/bge-reranker") is None


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from m3e.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_ranks_arguments_and_files(bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = [d for _, d in PAIRS[:4]]
    expected = m3e.load_reranker(str(bert_dir)).rank("今天天气", docs)
    code, out, _ = _cli(capsys, "rerank", str(bert_dir), "今天天气", *docs, "--json")
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["index"] for x in lines] == [e["corpus_id"] for e in expected]
    assert [x["rank"] for x in lines] == [1, 2, 3, 4] and lines[0]["text"] == docs[expected[0]["corpus_id"]]

    # Groups, one output line each; documents as strings or objects whose other fields pass through.
    groups = tmp_path / "groups.jsonl"
    groups.write_text(
        json.dumps({"query": "今天天气", "documents": docs}, ensure_ascii=False) + "\n\n"
        + json.dumps({"query": "买电脑", "documents": [{"text": docs[3], "id": "d3"}, {"text": docs[0], "id": "d0"}]},
                     ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    code, out, _ = _cli(capsys, "rerank", str(bert_dir), "-i", str(groups), "--json", "-k", "1")
    first, second = (json.loads(x) for x in out.splitlines())
    assert first["query"] == "今天天气" and len(first["results"]) == 1
    assert first["results"][0]["index"] == expected[0]["corpus_id"]
    assert second["results"][0]["id"] in ("d3", "d0")

    # Candidates such as `m3e search --json` lines, ranked against the QUERY argument.
    hits = tmp_path / "hits.jsonl"
    hits.write_text("".join(json.dumps({"rank": i + 1, "id": f"doc{i}", "text": d}, ensure_ascii=False) + "\n"
                            for i, d in enumerate(docs)), encoding="utf-8")
    code, out, _ = _cli(capsys, "rerank", str(bert_dir), "今天天气", "-i", str(hits), "--json")
    ranked = [json.loads(x) for x in out.splitlines()]
    assert [r["id"] for r in ranked] == [f"doc{e['corpus_id']}" for e in expected]
    code, out, _ = _cli(capsys, "rerank", str(bert_dir), "今天天气", *docs)
    assert code == 0 and out.startswith("query: 今天天气") and "  1. " in out


def test_cli_bad_candidates_name_file_and_line(bert_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "documents": ["a"]}\n{"query": "q", "documents": []}\n', encoding="utf-8")
    code, _, err = _cli(capsys, "rerank", str(bert_dir), "-i", str(bad))
    assert code == 2 and f"{bad}:2:" in err and "non-empty" in err
    bad.write_text('{"query": "q", "documents": ["a"]}\nnot json\n', encoding="utf-8")
    code, _, err = _cli(capsys, "rerank", str(bert_dir), "-i", str(bad))
    assert code == 2 and f"{bad}:2: not JSON" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    code, _, err = _cli(capsys, "rerank", str(bert_dir), "-i", str(empty))
    assert code == 2 and "no records" in err
    code, _, err = _cli(capsys, "rerank", str(bert_dir), "query only")
    assert code == 2 and "at least one document" in err


def test_bundle_writes_fp16_weights_and_a_card(bert_dir: Path, tmp_path: Path) -> None:
    from m3e.default_reranker import bundle

    results = {
        "models": [{"label": "default"}, {"label": "default+rerank"}],
        "results": [
            {"model": "default", "task": "ToyRetrieval", "task_type": "Retrieval", "score": 0.5},
            {"model": "default+rerank", "task": "ToyRetrieval", "task_type": "Retrieval", "score": 0.6},
            {"model": "default", "task": "ToyClassification", "task_type": "Classification", "score": 0.7},
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    out = bundle(bert_dir, tmp_path / "bundled", eval_results=tmp_path / "results.json")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| ToyRetrieval | 50.00 | 60.00 |" in card and "ToyClassification" not in card
    assert "## Data and licenses" in card and "GPL-3.0" in card
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["dtype"] == "float32"
    np.testing.assert_allclose(CrossEncoder(str(out), device="cpu").predict(PAIRS),
                               m3e.load_reranker(str(bert_dir)).predict(PAIRS), atol=2e-3)
    import m3e.default_reranker as default_reranker

    default_reranker.MAX_BUNDLED_BYTES = 1000  # a reranker over the cap is not bundled, and nothing is written
    try:
        with pytest.raises(M3EError, match="over the 0 MB a bundled reranker may add"):
            bundle(bert_dir, tmp_path / "too-large")
    finally:
        default_reranker.MAX_BUNDLED_BYTES = 60_000_000
    assert not (tmp_path / "too-large").exists()
