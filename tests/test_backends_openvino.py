"""The openvino backend: fidelity to fp32 on a real model, its artefact, the CLI, concurrent calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import m3e
from m3e.backends import artefacts
from m3e.backends.openvino import OpenVinoRunner
from m3e.cli import main
from tests.conftest import MIXED_TEXTS
from tests.test_backends_int8 import FIDELITY_TEXTS, _cos

pytestmark = pytest.mark.slow  # OpenVINO exports and compilations


def test_openvino_keeps_cosine_on_minilm(minilm_dir: Path, m3e_home: Path) -> None:
    model = m3e.load(str(minilm_dir))
    reference = model.encode(FIDELITY_TEXTS)
    model.set_backend("openvino")
    assert model.backend == "openvino" and isinstance(model._runner, OpenVinoRunner)
    assert model._runner.precision in ("bf16", "f32")  # bf16 where the CPU has it in hardware
    cos = _cos(reference, model.encode(FIDELITY_TEXTS))
    assert cos.mean() >= 0.999, cos
    assert cos.min() >= 0.995, cos
    built = list((m3e_home / "openvino").glob("*/model.onnx"))
    assert len(built) == 1
    meta = artefacts.read_artefact_meta(built[0].parent)
    assert meta is not None and meta["kind"] == "openvino" and meta["engine"] == "openvino"
    assert not (m3e_home / "int8").exists()
    # fp32 pinned: the same graph gives fp32's vectors
    model._runner = OpenVinoRunner(built[0], precision="f32")
    assert model._runner.precision == "f32"
    np.testing.assert_allclose(model.encode(FIDELITY_TEXTS), reference, atol=1e-4)
    model.set_backend("torch")
    np.testing.assert_allclose(model.encode(FIDELITY_TEXTS[:3]), reference[:3], atol=1e-5)


def test_export_openvino_next_to_model_and_load_reuses_it(
    tiny_copy: Path, m3e_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tiny_copy), "--backend", "openvino"]) == 0
    artefact = tiny_copy / "m3e-openvino"
    meta = artefacts.read_artefact_meta(artefact)
    assert meta is not None and meta["kind"] == "openvino" and "openvino" in meta["versions"]
    assert "cosine openvino vs fp32" in capsys.readouterr().err
    assert not artefacts.artefact_dir_for(tiny_copy, "int8").exists()  # the int8 artefact is another one
    monkeypatch.setattr(artefacts, "build_artefact", lambda *a, **k: pytest.fail("rebuilt"))
    model = m3e.load(str(tiny_copy), backend="openvino")
    assert model._runner.path == artefact / artefacts.ONNX_NAME
    vectors = model.encode(MIXED_TEXTS)
    assert vectors.shape == (len(MIXED_TEXTS), model.dim) and np.isfinite(vectors).all()
    assert not (m3e_home / "openvino").exists()
    assert main(["export", str(tiny_copy), "--backend", "openvino", "--no-check"]) == 0  # up to date


def test_openvino_and_int8_fingerprints_differ(tiny_copy: Path) -> None:
    model = m3e.load(str(tiny_copy))
    assert artefacts.fingerprint(model, "openvino") != artefacts.fingerprint(model, "int8")


def test_encode_cli_openvino_and_concurrent_callers(tiny_copy: Path, m3e_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    assert main(["encode", "-m", str(tiny_copy), "--backend", "openvino", "-o", str(out), "你好", "hello"]) == 0
    assert np.load(out).shape == (2, 32)
    model = m3e.load(str(tiny_copy), backend="openvino")
    texts = [f"{t} {i}" for i, t in enumerate(MIXED_TEXTS * 3)]
    alone = model.encode(texts, batch_size=4)
    # one infer request shared by threads (the server's batcher and callers): each call gets its own rows
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda t: model.encode([t])[0], texts))
    np.testing.assert_allclose(np.stack(parts), alone, atol=2e-2)


def test_batches_in_flight_on_streams_match_one_request_at_a_time(tiny_copy: Path, m3e_home: Path) -> None:
    model = m3e.load(str(tiny_copy))
    texts = [f"{t} {i}" for i, t in enumerate(MIXED_TEXTS * 4)]
    reference = model.encode(texts, batch_size=4)
    model.set_backend("openvino")
    path = model._runner.path
    model._runner = OpenVinoRunner(path, threads=2, streams=2, precision="f32")
    assert model._runner.streams == 2
    # batches of different widths come back in order, each equal to its own latency-request run
    features = [model.tokenize_batch(texts[i : i + n]) for i, n in ((0, 3), (3, 1), (4, 7), (11, 2), (13, 5))]
    many = model._runner.run_many(features)
    assert [tuple(x.shape[:2]) for x in many] == [tuple(f["input_ids"].shape) for f in features]
    for hidden, feats in zip(many, features, strict=True):
        np.testing.assert_allclose(hidden.numpy(), model._runner(feats).numpy(), atol=1e-5)
    # through encode: the streamed path gives fp32's vectors, also for a single batch's worth of texts
    widths: list[int] = []
    run_many = model._runner.run_many
    model._runner.run_many = lambda batches: widths.append(len(batches)) or run_many(batches)
    np.testing.assert_allclose(model.encode(texts, batch_size=4), reference, atol=1e-4)
    assert sum(widths) == -(-len(texts) // 4) and max(widths) == 8  # every batch, 4 rounds of 2 streams at a time
    widths.clear()
    np.testing.assert_allclose(model.encode(texts[:6]), reference[:6], atol=1e-4)
    assert widths == [2]  # one batch's worth of texts split over the two streams
    widths.clear()
    model.encode(texts[0])
    assert widths == []  # a single text: one request with every thread
    # several callers at once take turns on the streams and each gets its own rows
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(lambda i: model.encode(texts[i : i + 8], batch_size=2), range(0, len(texts), 8)))
    np.testing.assert_allclose(np.concatenate(parts), reference, atol=1e-4)
    one = OpenVinoRunner(path, threads=1, precision="f32")
    assert one.streams == 1 and one._queue is None  # one thread: no throughput compilation


def test_encode_on_openvino_splits_batches_at_the_runners_token_budget(
    tiny_copy: Path, m3e_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import m3e.backends.openvino as openvino_backend

    model = m3e.load(str(tiny_copy))
    texts = [f"{t} {i}" for i, t in enumerate(MIXED_TEXTS * 4)]
    reference = model.encode(texts, batch_size=32)
    model.set_backend("openvino")
    model._runner = OpenVinoRunner(model._runner.path, threads=2, streams=1, precision="f32")
    monkeypatch.setattr(openvino_backend, "BATCH_TOKENS", 48)
    assert model.batch_tokens == 48
    shapes: list[tuple[int, int]] = []
    original = OpenVinoRunner.__call__
    monkeypatch.setattr(
        OpenVinoRunner, "__call__", lambda self, f: shapes.append(tuple(f["input_ids"].shape)) or original(self, f)
    )
    np.testing.assert_allclose(model.encode(texts, batch_size=32), reference, atol=1e-4)
    lengths = [len(x) for x in model.tokenize(texts, model.resolve_prompt())]
    # the caller's batches of 32 were split: none over the budget unless one text alone is longer
    assert len(shapes) > -(-len(texts) // 32)
    assert all(rows * width <= 48 or rows == 1 for rows, width in shapes), shapes
    assert sum(rows for rows, _ in shapes) == len(texts) and max(w for _, w in shapes) == max(lengths)
    # an explicit max_batch_tokens is the caller's to choose
    shapes.clear()
    model.encode(texts, batch_size=32, max_batch_tokens=100_000)
    assert len(shapes) == -(-len(texts) // 32)


def test_server_on_openvino_answers_concurrent_openai_clients(tiny_copy: Path, m3e_home: Path) -> None:
    import openai

    from m3e.serving import ServeConfig, ServerThread, create_app

    reference = m3e.load(str(tiny_copy))
    model = m3e.load(str(tiny_copy), backend="openvino")
    texts = [f"{t} #{i}" for i, t in enumerate(MIXED_TEXTS * 2)]
    with ServerThread(create_app({"tiny": model}, ServeConfig(max_batch_size=8))) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with ThreadPoolExecutor(6) as pool:  # requests merged by the dynamic batcher onto one infer request
            served = list(pool.map(lambda t: client.embeddings.create(model="tiny", input=[t]).data[0].embedding, texts))
    assert _cos(np.asarray(served, dtype=np.float32), reference.encode(texts)).min() >= 0.99


def test_compiling_keeps_the_threads_signal_stack(tiny_st_model_dir, tmp_path, monkeypatch):
    """OpenVINO's CPU plugin installs an alternate signal stack of its own when it compiles, and frees it with
    the compiled model: a SIGTERM to a training run that had used openvino then crashed the process. The thread
    must keep the stack it had."""
    import ctypes
    import faulthandler

    class _SignalStack(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None, use_errno=True)

    def current() -> tuple[int, int]:
        stack = _SignalStack()
        assert libc.sigaltstack(None, ctypes.byref(stack)) == 0
        return stack.ss_sp or 0, stack.ss_size

    faulthandler.enable()  # gives the thread a stack of Python's (pytest enables it too)
    before = current()
    monkeypatch.setenv("M3E_HOME", str(tmp_path))
    model = m3e.load(str(tiny_st_model_dir), backend="openvino")
    model.encode(["你好"])
    assert current() == before
