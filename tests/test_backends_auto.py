"""backend="auto": the choice as a pure function of CPU, installed engines and workload; real encodes through it;
the openvino-int8 backend it may pick (NNCF static int8 held to cosine >= 0.995)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import m3e
from m3e.backends import BACKEND_CHOICES, artefacts
from m3e.backends.openvino_int8 import RECORDED, describe_scope
from m3e.backends.selection import (
    TINY_MODEL_PARAMETERS,
    CpuFeatures,
    Workload,
    choose_backend,
    host_cpu,
    workload_of,
)
from m3e.cli import main
from tests.test_backends_int8 import FIDELITY_TEXTS, _cos

ALL = frozenset({"openvino", "nncf", "onnxruntime", "onnx"})
BASE = Workload(parameters=20_000_000)
# openvino-int8 keeps cosine 0.995 to fp32 where int8 products add into 32 bits (VNNI, AMX). Where they saturate
# (x86 without VNNI) its weights are 7-bit, MiniLM keeps less (docs/benchmarks.md), and auto leaves it out.
SATURATES = host_cpu().int8_products_saturate
OPENVINO_INT8_BAR = 0.985 if SATURATES else 0.995
TOLERANCE = {"openvino": 0.999, "openvino-int8": OPENVINO_INT8_BAR, "int8": 0.97, "bf16": 0.999}
# The first processor's block of /proc/cpuinfo, cut to what matters, on four x86 generations and an ARM server.
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC_ZEN4 = (
    "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n\n"
    "processor\t: 1\nmodel name\t: another\nflags\t\t: fpu\n"
)
CASCADE_LAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
EPYC_ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes sha2 asimddp sve bf16 i8mm\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse2 sse4_2 avx\n"


def cpu(text: str, arch: str = "x86_64") -> CpuFeatures:
    return CpuFeatures.from_cpuinfo(text, arch)


@pytest.mark.parametrize(
    ("cpuinfo", "arch", "family", "installed", "expected"),
    [
        (SAPPHIRE_RAPIDS, "x86_64", "amx", ALL, "openvino"),
        (SAPPHIRE_RAPIDS, "x86_64", "amx", frozenset({"openvino", "onnx"}), "openvino"),
        (SAPPHIRE_RAPIDS, "x86_64", "amx", frozenset({"onnxruntime", "onnx"}), "int8"),
        (EPYC_ZEN4, "x86_64", "avx512_bf16", ALL, "openvino-int8"),
        (EPYC_ZEN4, "x86_64", "avx512_bf16", frozenset({"openvino", "onnx", "onnxruntime"}), "openvino"),
        (CASCADE_LAKE, "x86_64", "vnni", ALL, "openvino-int8"),
        (CASCADE_LAKE, "x86_64", "vnni", frozenset({"openvino", "onnx", "onnxruntime"}), "openvino"),
        (CASCADE_LAKE, "x86_64", "vnni", frozenset({"onnxruntime", "onnx"}), "int8"),
        (EPYC_ZEN3, "x86_64", "avx2", ALL, "openvino"),  # int8 products saturate without VNNI
        (EPYC_ZEN3, "x86_64", "avx2", frozenset({"openvino", "nncf", "onnx"}), "openvino"),
        (EPYC_ZEN3, "x86_64", "avx2", frozenset({"onnxruntime", "onnx"}), "int8"),
        (GRAVITON, "aarch64", "arm", ALL, "openvino"),
        (GRAVITON, "aarch64", "arm", frozenset({"onnxruntime", "onnx"}), "int8"),
        (OLD, "x86_64", "other", ALL, "torch"),
    ],
)
def test_auto_picks_by_cpu_and_installed_engines(
    cpuinfo: str, arch: str, family: str, installed: frozenset[str], expected: str
) -> None:
    features = cpu(cpuinfo, arch)
    assert features.family == family
    choice = choose_backend(features, installed, BASE)
    assert choice.backend == expected, choice
    assert choice.backend in BACKEND_CHOICES and choice.reason
    assert not choice.fallback
    # what a timing compares: the installed backends held to cosine 0.995 (ONNX Runtime int8 only when alone)
    assert choice.backend == "torch" or choice.backend == choice.candidates[0]
    assert "int8" not in choice.candidates or choice.candidates == ("int8",)
    # timed on the CPU itself wherever the order was not measured on its family
    assert choice.to_time == (family in {"vnni", "avx2", "arm"} and len(choice.candidates) > 1)


@pytest.mark.parametrize(
    ("cpuinfo", "arch", "saturate"),
    [(SAPPHIRE_RAPIDS, "x86_64", False), (EPYC_ZEN4, "x86_64", False), (CASCADE_LAKE, "x86_64", False),
     ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx_vnni\n", "x86_64", False),  # Alder Lake: VNNI on AVX2
     (EPYC_ZEN3, "x86_64", True), (OLD, "x86_64", True), (GRAVITON, "aarch64", False)],
)
def test_int8_products_saturate_on_x86_without_vnni(cpuinfo: str, arch: str, saturate: bool) -> None:
    assert cpu(cpuinfo, arch).int8_products_saturate is saturate


def test_int8_artefacts_of_a_cpu_whose_products_saturate_are_other_artefacts(
    tiny_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """7-bit weights there: an artefact made on a VNNI machine (8-bit) is not found where it would overflow."""
    model = m3e.load(str(tiny_copy))
    before = {kind: artefacts.fingerprint(model, kind) for kind in artefacts.KINDS}
    monkeypatch.setattr(artefacts, "seven_bit_weights", lambda: not SATURATES)
    after = {kind: artefacts.fingerprint(model, kind) for kind in artefacts.KINDS}
    assert {kind for kind in before if before[kind] != after[kind]} == artefacts.INT8_KINDS


def test_nothing_fast_installed_falls_back_to_torch_saying_what_to_install() -> None:
    choice = choose_backend(cpu(SAPPHIRE_RAPIDS), frozenset(), BASE)
    assert choice.backend == "torch" and choice.fallback
    assert "m3e[fast]" in choice.reason and "openvino" in choice.reason
    # an engine half-installed (openvino without onnx, which exports the graph) is not a backend
    assert choose_backend(cpu(SAPPHIRE_RAPIDS), frozenset({"openvino"}), BASE).backend == "torch"


def test_workload_decides_before_the_cpu() -> None:
    amx = cpu(SAPPHIRE_RAPIDS)
    assert choose_backend(amx, ALL, Workload(device="cuda", parameters=10**8)).backend == "torch"
    assert choose_backend(amx, ALL, Workload(parameters=10**7, all_hidden_states=True)).backend == "torch"
    tiny = choose_backend(amx, ALL, Workload(parameters=TINY_MODEL_PARAMETERS - 1))
    assert tiny.backend == "torch" and not tiny.fallback
    assert choose_backend(amx, ALL, Workload(parameters=TINY_MODEL_PARAMETERS)).backend == "openvino"
    # a cross-encoder is never given the text-calibrated static int8
    zen4 = cpu(EPYC_ZEN4)
    assert choose_backend(zen4, ALL, Workload(parameters=10**7, pairs=True)).backend == "openvino"
    # the same inputs, the same answer: nothing else is read
    assert choose_backend(zen4, ALL, BASE) == choose_backend(cpu(EPYC_ZEN4), frozenset(ALL), BASE)


def test_the_cpus_name_and_flags_come_from_the_first_processor() -> None:
    zen4 = cpu(EPYC_ZEN4)
    assert zen4.name == "AMD EPYC 9R14" and "avx512_bf16" in zen4.flags and zen4.family == "avx512_bf16"


def test_cpuinfo_without_flags_is_other() -> None:
    assert CpuFeatures.from_cpuinfo("", "x86_64").family == "other"
    assert CpuFeatures.from_cpuinfo("", "arm64").family == "arm"


def test_the_workload_of_a_real_model(tiny_st_model_dir: Path) -> None:
    model = m3e.load(str(tiny_st_model_dir))
    work = workload_of(model)
    assert work.device == "cpu" and not work.pairs and not work.all_hidden_states
    assert work.parameters == sum(p.numel() for p in model.transformer.parameters())
    # the tiny test model is below the threshold: auto keeps torch and its exact vectors
    auto = m3e.load(str(tiny_st_model_dir), backend="auto")
    assert auto.backend == "torch" and auto._runner is None
    np.testing.assert_allclose(auto.encode(FIDELITY_TEXTS[:5]), model.encode(FIDELITY_TEXTS[:5]), atol=1e-6)


def test_info_backends_and_the_log_line(
    tiny_st_model_dir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["info", str(tiny_st_model_dir), "--backends", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "torch"  # info itself builds nothing
    assert info["backends"]["auto"] == "torch" and "parameters" in info["backends"]["why"]
    assert info["backends"]["cpu"].startswith(("x86_64", "aarch64", "arm"))
    with caplog.at_level(logging.INFO, logger="m3e.backends.selection"):
        m3e.load(str(tiny_st_model_dir), backend="auto")
    lines = [r.getMessage() for r in caplog.records if r.name == "m3e.backends.selection"]
    assert len(lines) == 1 and lines[0].startswith("backend auto -> torch: ")



@pytest.mark.slow  # NNCF calibrates and quantises MiniLM up to three times
def test_openvino_int8_holds_cosine_and_is_cached(minilm_dir: Path, m3e_home: Path, tmp_path: Path) -> None:
    reference = m3e.load(str(minilm_dir)).encode(FIDELITY_TEXTS)
    model = m3e.load(str(minilm_dir), backend="openvino-int8")
    assert model.backend == "openvino-int8"
    assert _cos(reference, model.encode(FIDELITY_TEXTS)).min() >= OPENVINO_INT8_BAR
    (built,) = list((m3e_home / "openvino-int8").glob("*/meta.json"))
    meta = artefacts.read_artefact_meta(built.parent)
    assert meta is not None and meta["kind"] == "openvino-int8" and meta["file"] == "model.xml"
    assert meta["quantization"]["weights"] == ("7-bit" if SATURATES else "8-bit")
    assert "nncf" in meta["versions"]
    # an empty cache root: calibrated on the bundled texts, never on benchmark ones
    assert "bundled" in meta["quantization"]["calibration"]
    chosen = [t for t in meta["tried"] if t["scope"] == meta["quantization"]["float_scope"]]
    assert chosen and chosen[-1]["min_cosine"] == meta["quantization"]["reached"] >= OPENVINO_INT8_BAR
    assert describe_scope(meta["quantization"]["float_patterns"], 6) == meta["quantization"]["float_scope"]
    # found again by fingerprint: a second load does not quantise again
    before = built.stat().st_mtime_ns
    again = m3e.load(str(minilm_dir), backend="openvino-int8")
    assert built.stat().st_mtime_ns == before
    np.testing.assert_allclose(again.encode(FIDELITY_TEXTS[:4]), model.encode(FIDELITY_TEXTS[:4]), atol=1e-5)
    # m3e export writes it next to a model as well
    out = tmp_path / "exported"
    assert main(["export", str(minilm_dir), "--backend", "openvino-int8", "--out", str(out), "--no-check"]) == 0
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    assert not (minilm_dir / artefacts.INT8_SCOPE_FILE).exists()  # --out: the model directory is left alone


@pytest.mark.slow  # NNCF quantises a copy of MiniLM: searching, then once from the recorded scope
def test_export_records_the_scope_and_a_new_build_starts_from_it(
    minilm_dir: Path, m3e_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    model_dir = tmp_path / "minilm"
    shutil.copytree(minilm_dir, model_dir, ignore=shutil.ignore_patterns("m3e-*"))
    capsys.readouterr()
    assert main(["export", str(model_dir), "--backend", "openvino-int8", "--no-check"]) == 0
    assert capsys.readouterr().out == ""  # NNCF's progress bars stay off standard output (vectors go there)
    searched = artefacts.read_artefact_meta(model_dir / "m3e-openvino-int8")
    record = json.loads((model_dir / artefacts.INT8_SCOPE_FILE).read_text(encoding="utf-8"))
    assert searched is not None and record["float_patterns"] == searched["quantization"]["float_patterns"]
    # another machine: no artefact anywhere, the recorded scope is tried first and, where it holds, nothing is
    # searched (where int8 products saturate no scope holds MiniLM to 0.995, so the ladder is walked again)
    shutil.rmtree(model_dir / "m3e-openvino-int8")
    reference = m3e.load(str(model_dir)).encode(FIDELITY_TEXTS)
    model = m3e.load(str(model_dir), backend="openvino-int8")
    assert _cos(reference, model.encode(FIDELITY_TEXTS)).min() >= OPENVINO_INT8_BAR
    (built,) = list((m3e_home / "openvino-int8").glob("*/meta.json"))
    meta = artefacts.read_artefact_meta(built.parent)
    assert meta is not None and meta["tried"][0]["scope"] == record["float_scope"] + RECORDED
    if meta["tried"][0]["min_cosine"] >= meta["quantization"]["target"]:
        assert len(meta["tried"]) == 1
        assert meta["quantization"]["float_patterns"] == record["float_patterns"]
    else:  # only 7-bit weights miss the target with the scope a search chose
        assert SATURATES and meta["quantization"]["weights"] == "7-bit"


def test_each_scope_is_named_as_meta_json_describes_it() -> None:
    from m3e.backends.openvino_int8 import SCOPES

    for label, patterns in SCOPES:
        assert describe_scope([p.format(first=0, last=5) for p in patterns], 6) == label


def test_per_layer_release_keeps_the_longest_prefix_that_holds() -> None:
    """The search over a made-up model whose per-layer errors add up: projections that fail alone stay in float,
    the rest are released in order of their own error while the sum holds the goal."""
    from m3e.backends.openvino_int8 import (
        _ATTENTION_OUTPUTS,
        _ATTENTION_PRODUCTS,
        _FEED_FORWARD_OUTPUTS,
        _release_layers,
    )

    layers = 4
    ffn = [rf".*layer\.{i}/output/dense/MatMul" for i in range(layers)]
    att = [rf".*layer\.{i}/attention/output/dense/MatMul" for i in range(layers)]
    cost = dict(zip(ffn + att, [0.0010, 0.0050, 0.0004, 0.0300, 0.0002, 0.0003, 0.0008, 0.0006], strict=True))
    calls: list[list[str]] = []

    def quantise(patterns: list[str]) -> tuple[object, dict[str, float]]:
        calls.append(patterns)
        assert _ATTENTION_PRODUCTS in patterns  # what is not per layer stays kept
        error = sum(c for p, c in cost.items() if p not in patterns)
        return object(), {"min_cosine": 1.0 - error}

    tried: list[dict] = []
    scope = [_ATTENTION_PRODUCTS, _FEED_FORWARD_OUTPUTS, _ATTENTION_OUTPUTS]
    found = _release_layers(scope, layers, quantise, "min_cosine", 0.997, tried)
    assert found is not None
    score, _, label, patterns = found
    # released cheapest first: att0 .0002, att1 .0003, ffn2 .0004, att3 .0006 (sum .0015), att2 .0008 (.0023),
    # ffn0 .0010 (.0033: fails); ffn1 (.005) and ffn3 (.03) fail alone and are never tried in a prefix
    assert abs(score - (1.0 - 0.0023)) < 1e-9
    assert sorted(p for p in patterns if p in cost) == sorted([ffn[0], ffn[1], ffn[3]])
    assert label == "attention products, feed-forward outputs of layers 0, 1, 3"
    assert describe_scope(patterns, layers) == label
    assert len(calls) == 2 * layers + 3  # each alone, then a bisection over the six that hold alone
    assert sum(1 for t in tried if t["scope"].startswith("all but")) == 2 * layers
    # nothing per layer in the scope: nothing to release
    assert _release_layers([_ATTENTION_PRODUCTS], layers, quantise, "min_cosine", 0.997, []) is None


@pytest.mark.slow  # an OpenVINO export and three compilations
def test_a_single_short_text_runs_on_the_faster_request(tiny_copy: Path, m3e_home: Path) -> None:
    from m3e.backends.openvino import SINGLE_TEXT_TOKENS, OpenVinoRunner

    model = m3e.load(str(tiny_copy), backend="openvino")
    runner = OpenVinoRunner(model._runner.path, threads=2, precision="f32")
    model.use_runner("openvino", runner)
    reference = m3e.load(str(tiny_copy)).encode(FIDELITY_TEXTS[:6])
    batch = model.encode(FIDELITY_TEXTS[:6])
    assert runner._single is None  # a batch: the request with every thread, nothing measured
    alone = np.stack([model.encode(t) for t in FIDELITY_TEXTS[:6]])
    assert runner._single is not None  # chosen on the first single text, then kept
    np.testing.assert_allclose(alone, batch, atol=1e-5)
    np.testing.assert_allclose(alone, reference, atol=1e-4)
    long_text = "保险" * SINGLE_TEXT_TOKENS * 2
    before = runner._single
    np.testing.assert_allclose(model.encode(long_text), m3e.load(str(tiny_copy)).encode(long_text), atol=1e-4)
    assert runner._single is before
    one_thread = OpenVinoRunner(runner.path, threads=1)
    assert one_thread._single_request({}) is one_thread._request  # one thread: nothing to choose


def test_the_faster_request_is_chosen_by_its_median() -> None:
    import time

    from m3e.backends.openvino import faster_request

    class Request:
        def __init__(self, seconds: float) -> None:
            self.seconds, self.runs = seconds, 0

        def infer(self, feeds: dict) -> None:
            self.runs += 1
            time.sleep(self.seconds)

    slow, fast = Request(0.004), Request(0.0005)
    assert faster_request({1: slow, 2: fast}, {}, trials=4) is fast
    assert faster_request({1: fast, 2: slow}, {}, trials=4) is fast
    assert slow.runs == fast.runs == 2 * (1 + 4)  # one warm-up run and four timed runs each, twice


def test_int8_calibration_and_check_texts_carry_the_models_prompts() -> None:
    from m3e.backends.openvino_int8 import with_prompts

    prompts = {"query": "query: ", "document": "passage: ", "empty": ""}
    calibrate, check = with_prompts(["a", "b", "c", "d"], ["x", "y"], prompts)
    # each calibration text behind one prompt (or none) in turn; each check text behind every one
    assert calibrate == ["a", "passage: b", "query: c", "d"]
    assert check == ["x", "passage: x", "query: x", "y", "passage: y", "query: y"]
    assert with_prompts(["a"], ["x"], {}) == (["a"], ["x"])
    assert with_prompts(["a"], ["x"], None) == (["a"], ["x"])
