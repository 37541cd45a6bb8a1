"""The compiled model: a load onto a compiled backend leaves a record, and the record runs without torch giving the
backend's own vectors; anything changed since means no record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import m3e
from m3e.compiled import CompiledModel, LoadRequest, find_compiled, pool_numpy, records_dir
from m3e.pooling import pool
from tests.conftest import MIXED_TEXTS

pytestmark = pytest.mark.slow  # OpenVINO / ONNX Runtime exports of the tiny model

TEXTS = [*MIXED_TEXTS, "北京上海广州深圳 hello world " * 300]  # the last one is cut at the model's maximum length


def _with_prompts(model_dir: Path, include_prompt: bool) -> Path:
    """Give the tiny model a query prompt and a default prompt name, optionally left out of pooling."""
    config = model_dir / "config_sentence_transformers.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data.update(prompts={"query": "query: ", "document": "passage: "}, default_prompt_name="query")
    config.write_text(json.dumps(data), encoding="utf-8")
    pooling = model_dir / "1_Pooling" / "config.json"
    data = json.loads(pooling.read_text(encoding="utf-8"))
    data["include_prompt"] = include_prompt
    pooling.write_text(json.dumps(data), encoding="utf-8")
    return model_dir


def _request(model_dir: Path, backend: str = "openvino", **options: object) -> LoadRequest:
    return LoadRequest(str(model_dir.resolve()), backend, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("include_prompt", [True, False])
def test_the_compiled_model_gives_the_backends_vectors(tiny_copy: Path, m3e_home: Path, include_prompt: bool) -> None:
    model = m3e.load(str(_with_prompts(tiny_copy, include_prompt)), backend="openvino")
    compiled = find_compiled(_request(tiny_copy))
    assert isinstance(compiled, CompiledModel)
    assert (compiled.backend, compiled.dim, compiled.max_length) == ("openvino", model.dim, model.max_length)
    for prompt in ("", "query: ", "passage: "):
        assert compiled.tokenizer.tokenize(TEXTS, prompt) == model.tokenize(TEXTS, prompt)
        assert compiled.tokenizer.prompt_length(prompt) == model.prompt_length(prompt)
    np.testing.assert_allclose(compiled.encode(TEXTS), model.encode(TEXTS), atol=2e-4)  # default prompt: query
    np.testing.assert_allclose(compiled.encode_documents(TEXTS), model.encode_documents(TEXTS), atol=2e-4)
    np.testing.assert_allclose(
        compiled.encode(TEXTS, prompt="", batch_size=3, normalize=False),
        model.encode(TEXTS, prompt="", batch_size=3, normalize=False),
        atol=2e-4,
    )
    single = compiled.encode_queries("今天天气很好")
    assert single.shape == (model.dim,)
    np.testing.assert_allclose(single, model.encode_queries("今天天气很好"), atol=2e-4)
    np.testing.assert_allclose(compiled.similarity(TEXTS[:3], TEXTS[:3]), model.similarity(TEXTS[:3], TEXTS[:3]),
                               atol=2e-4)
    with pytest.raises(m3e.M3EError, match="windows"):
        compiled.encode(TEXTS, long_text="windows")


def test_int8_records_run_on_onnx_runtime(tiny_copy: Path, m3e_home: Path) -> None:
    model = m3e.load(str(tiny_copy), backend="int8", max_length=32)
    assert find_compiled(_request(tiny_copy, "int8")) is None  # another request: another record
    compiled = find_compiled(_request(tiny_copy, "int8", max_length=32))
    assert compiled is not None and compiled.backend == "int8" and compiled.max_length == 32
    np.testing.assert_allclose(compiled.encode(TEXTS), model.encode(TEXTS), atol=2e-4)


def test_anything_changed_means_no_record(tiny_copy: Path, m3e_home: Path) -> None:
    m3e.load(str(tiny_copy), backend="openvino")
    request = _request(tiny_copy)
    record = json.loads(next(records_dir().glob("*.json")).read_text(encoding="utf-8"))
    assert find_compiled(request) is not None
    weights = tiny_copy / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the weights rewritten
    assert find_compiled(request) is None
    m3e.load(str(tiny_copy), backend="openvino")  # loading again records again
    assert find_compiled(request) is not None
    (tiny_copy / "notes.txt").write_text("a new file", encoding="utf-8")
    assert find_compiled(request) is None
    m3e.load(str(tiny_copy), backend="openvino")
    Path(record["graph"]).unlink()  # the artefact is gone (a cleaned cache)
    assert find_compiled(request) is None
    records_dir().joinpath(f"{request.key}.json").write_text("{not json", encoding="utf-8")
    assert find_compiled(request) is None


def test_no_record_where_the_model_needs_torch(tiny_copy: Path, m3e_home: Path) -> None:
    m3e.load(str(tiny_copy))  # torch
    m3e.load(str(tiny_copy), backend="bf16")
    m3e.load(str(tiny_copy), backend="openvino", long_text="windows")
    m3e.load(str(tiny_copy), backend="openvino", query_prompt="q: ")
    assert not records_dir().exists() or not list(records_dir().glob("*.json"))


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean"])
def test_numpy_pooling_is_the_torch_pooling(mode: str) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((4, 7, 5)).astype(np.float32)
    mask = np.zeros((4, 7), dtype=np.int64)
    for row, length in enumerate((7, 3, 1, 5)):
        mask[row, :length] = 1
    expected = pool(mode, torch.from_numpy(tokens), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(pool_numpy(mode, tokens, mask), expected, rtol=1e-6, atol=1e-6)


def test_similarity_and_encode_start_without_torch(tiny_copy: Path, m3e_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "M3E_HOME": str(m3e_home), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "first.npy"
    # the first command loads the model (torch) onto openvino and leaves the record
    subprocess.run([sys.executable, "-m", "m3e.cli", "encode", "-m", str(tiny_copy), "--backend", "openvino",
                    "今天天气很好", "hello world", "-o", str(out)], env=env, check=True, capture_output=True)
    probe = (
        "import sys\n"
        "from m3e.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('heavy:', heavy, file=sys.stderr)\n"
        "sys.exit(rc or (3 if heavy else 0))\n"
    )
    again = tmp_path / "again.npy"
    done = subprocess.run([sys.executable, "-c", probe, "encode", "-m", str(tiny_copy), "--backend", "openvino",
                           "今天天气很好", "hello world", "-o", str(again)], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "heavy: []" in done.stderr, done.stderr
    np.testing.assert_allclose(np.load(again), np.load(out), atol=2e-4)
    done = subprocess.run([sys.executable, "-c", probe, "similarity", "-m", str(tiny_copy), "--backend", "openvino",
                           "今天天气很好", "hello world"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "heavy: []" in done.stderr, done.stderr
    vectors = np.load(out)
    assert f"{float(vectors[0] @ vectors[1]):.3f}" in done.stdout
    # --backend left unset: the record made for `auto` (the tiny model runs on torch under auto: none here)
    done = subprocess.run([sys.executable, "-c", probe, "similarity", "-m", str(tiny_copy), "今天天气很好",
                           "hello world"], env=env, capture_output=True, text=True)
    assert done.returncode == 3 and "torch" in done.stderr  # loaded, not compiled
    assert f"{float(vectors[0] @ vectors[1]):.3f}" in done.stdout
