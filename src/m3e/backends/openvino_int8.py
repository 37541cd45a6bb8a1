"""The openvino-int8 backend: the fp32 export statically quantised by NNCF, compiled by OpenVINO.

Static int8 (weights and activations, scales fixed by calibration) runs the matrix products on the CPU's int8
units (AMX-INT8, VNNI) with no per-call quantisation of activations; OpenVINO computes the layers left out in
bf16 where the CPU has it. Calibration reads texts m3e's offline data has for training (``<cache>/data/train/``:
never a benchmark task's texts), or the short mixed Chinese / English file bundled beside this module when that
data is not built.

Accuracy-aware: after each quantisation the vectors of held-out texts are compared with fp32 (cosine of the
pooled last hidden state; for a cross-encoder, the rank correlation of held-out (query, document) pairs'
scores, calibrated on pairs of the same training files); below :data:`MIN_COSINE` (:data:`MIN_SPEARMAN`) the
next, more conservative scope is tried (the attention products kept in float, then every feed-forward output
projection too, then the attention output projections, then the first and last layers). The scope that holds
is then narrowed layer by layer: each of its feed-forward and attention output projections is quantised on its
own to rank them, and as many as keep the target (plus a margin, since one choice among many is made on the
same texts) are quantised, so the artefact that is kept is the fastest one found that holds it. Its
``meta.json`` records the scope, its node patterns and every score measured. An embedder's texts are
calibrated and checked behind the model's prompts, as the encode loop feeds them.

The search costs about thirty quantisations (ten minutes for a 12-layer model on two cores); ``m3e export
MODEL --backend openvino-int8`` records the chosen scope beside the model (:data:`artefacts.INT8_SCOPE_FILE`,
shipped with the default model), and a build that finds one quantises with it first and searches only if it
does not hold the target on that machine.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.backends import artefacts
from m3e.backends.calibration import HELD_OUT_TEXTS, calibration_pairs, calibration_texts
from m3e.backends.openvino import OpenVinoRunner, keep_signal_stack
from m3e.errors import M3EError
from m3e.extras import require

if TYPE_CHECKING:
    import numpy as np

    from m3e.backends.base import ModelParts

logger = logging.getLogger(__name__)

KIND = "openvino-int8"
MIN_COSINE = 0.995  # an embedder: every held-out text's vector keeps this cosine to fp32
# A reranker: the held-out pairs' scores keep this rank correlation to fp32 (the agreement bench/rerank.py holds
# every reranker backend to; its order is what a reranker is for).
MIN_SPEARMAN = 0.99
BATCH = 8
# Scopes kept out of quantisation, tried in order (OpenVINO node-name patterns; {first} / {last} are layer numbers).
# Measured on the default model (docs/benchmarks.md): quantising the attention products (query x key, weights x
# value) alone took the worst held-out text to cosine 0.79, the feed-forward output projections (outliers after
# GELU) next; with both kept in float every bare text stayed above 0.997, but a short English sentence behind
# the "query: " prompt fell to 0.987. A scan keeping one layer, then one kind of product, in float found the
# attention output projections responsible (0.987 -> 0.997; any single layer: at most 0.995).
_ATTENTION_PRODUCTS = r".*attention/self/MatMul.*"
_FEED_FORWARD_OUTPUTS = r".*layer\.\d+/output/dense/MatMul"
_ATTENTION_OUTPUTS = r".*attention/output/dense/MatMul"
SCOPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention products", (_ATTENTION_PRODUCTS,)),
    ("attention products, feed-forward outputs", (_ATTENTION_PRODUCTS, _FEED_FORWARD_OUTPUTS)),
    ("attention products, feed-forward outputs, attention outputs",
     (_ATTENTION_PRODUCTS, _FEED_FORWARD_OUTPUTS, _ATTENTION_OUTPUTS)),
    ("attention products, feed-forward outputs, attention outputs, first and last layers",
     (_ATTENTION_PRODUCTS, _FEED_FORWARD_OUTPUTS, _ATTENTION_OUTPUTS, r".*layer\.{first}/.*", r".*layer\.{last}/.*")),
)

# After a scope holds, its feed-forward and attention output projections are quantised again layer by layer:
# on the default model only a few of the 24 matter (two feed-forward and two attention outputs took the worst
# text from 0.997 to 0.968-0.990 on their own, every other one moved it by under 0.0015), and each one
# quantised is int8 arithmetic instead of float (queries 761 -> 851 texts/s, passages 56 -> 62 on a 2-core AMD
# EPYC, docs/benchmarks.md).
_PER_LAYER: tuple[tuple[str, str, str], ...] = (  # (whole pattern, name, one layer's pattern)
    (_FEED_FORWARD_OUTPUTS, "feed-forward outputs", r".*layer\.{i}/output/dense/MatMul"),
    (_ATTENTION_OUTPUTS, "attention outputs", r".*layer\.{i}/attention/output/dense/MatMul"),
)
# The per-layer choice is one of many tried on the same held-out texts, so it must clear the target by this much:
# what is chosen among many candidates on one set of texts does a little worse on the next.
REFINE_MARGIN = {"min_cosine": 0.001, "spearman": 0.002}
RECORDED = " (recorded beside the model)"  # how meta.json names a scope read from artefacts.INT8_SCOPE_FILE


def write_int8_ir(model: ModelParts, work: Path, out: Path) -> dict[str, Any]:
    """Export, quantise (trying :data:`SCOPES` in order) and save the OpenVINO IR at ``out``."""
    import nncf
    import numpy as np
    import openvino as ov

    pairs_model = model.artefact_output != artefacts.OUTPUT  # a cross-encoder: (query, document) -> logits
    featurize = getattr(model, "pair_features" if pairs_model else "tokenize_batch", None)
    if featurize is None:
        raise M3EError(f"the openvino-int8 backend cannot calibrate {model.name!r}: it takes neither texts nor pairs")
    artefacts.export_fp32_onnx(model, work / "fp32.onnx")
    core = ov.Core()
    fp32 = core.read_model(str(work / "fp32.onnx"))
    names = [port.get_any_name() for port in fp32.inputs]
    items: list[Any]
    if pairs_model:
        items, source = calibration_pairs()
        unit, target = "pairs", MIN_SPEARMAN
    else:
        items, source = calibration_texts()
        unit, target = "texts", MIN_COSINE
    held_out = min(HELD_OUT_TEXTS, len(items) // 3)  # the bundled file has 58 texts
    calibrate: list[Any] = items[:-held_out]
    check: list[Any] = items[-held_out:]
    if not pairs_model:
        calibrate, check = with_prompts(calibrate, check, getattr(model, "prompts", None))

    def batches(chosen: list[Any]) -> list[dict[str, np.ndarray]]:
        # sorted by length: batches pad little, as the encode and predict loops' batches do
        chosen = sorted(chosen, key=lambda x: len(x) if isinstance(x, str) else len(x[0]) + len(x[1]))
        out_batches = []
        for i in range(0, len(chosen), BATCH):
            features = featurize(chosen[i : i + BATCH])
            out_batches.append({n: features[n].numpy().astype(np.int64) for n in names})
        return out_batches

    calibration, checks = batches(calibrate), batches(check)
    outputs = _logits if pairs_model else _pooled_outputs
    fidelity = _spearman if pairs_model else _min_cosine
    measure = "Spearman of the scores" if pairs_model else "cosine"
    key = "spearman" if pairs_model else "min_cosine"  # the number held to the target
    reference = outputs(core, fp32, checks, model, precision="f32")
    layers = int(getattr(model.transformer.config, "num_hidden_layers", 1) or 1)

    # NNCF's "overflow fix" (weights on half the int8 range) on every matrix product where int8 products saturate;
    # its default fixes the first convolution only, which a transformer does not have.
    seven_bits = artefacts.seven_bit_weights()
    overflow_fix = nncf.OverflowFix.ENABLE if seven_bits else nncf.OverflowFix.DISABLE
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=overflow_fix)

    def quantise(patterns: list[str]) -> tuple[Any, dict[str, float]]:
        with keep_signal_stack(), _quiet("nncf"):
            quantized = nncf.quantize(
                fp32,
                nncf.Dataset(calibration),
                model_type=nncf.ModelType.TRANSFORMER,
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None,
                advanced_parameters=advanced,
            )
        return quantized, fidelity(outputs(core, quantized, checks, model), reference)

    tried: list[dict[str, Any]] = []
    best: tuple[float, Any, str, list[str]] | None = None
    recorded = recorded_scope(model)
    ladder = list(SCOPES)
    if recorded is not None:
        ladder.insert(0, (f"{describe_scope(recorded, layers)}{RECORDED}", tuple(recorded)))
    for label, patterns in ladder:
        scope = [p.format(first=0, last=layers - 1) for p in patterns]
        quantized, scores = quantise(scope)
        tried.append({"scope": label, **scores})
        logger.info("openvino-int8 with %s kept in float: %s to fp32 %.4f", label, measure, scores[key])
        if best is None or scores[key] > best[0]:
            best = (float(scores[key]), quantized, label, scope)
        if scores[key] >= target:
            break
    assert best is not None
    if best[0] >= target and (recorded is None or best[3] != recorded):
        refined = _release_layers(best[3], layers, quantise, key, target + REFINE_MARGIN[key], tried)
        if refined is not None:
            best = refined
    if best[0] < target:
        logger.warning("openvino-int8: no scope reached %s %.3f (best %.4f, %s)", measure, target, best[0], best[2])
    ov.save_model(best[1], str(out), compress_to_fp16=False)
    for extra in work.glob("fp32.onnx*"):
        extra.unlink()
    return {
        "engine": "openvino",
        "graph": "nncf static int8",
        "file": out.name,
        "quantization": {"method": "static", "preset": "mixed", "model_type": "transformer",
                         "float_scope": best[2], "float_patterns": best[3],
                         "weights": "7-bit" if seven_bits else "8-bit",
                         "calibration": f"{len(calibrate)} {unit} from {source}",
                         "check": f"{held_out} held-out {unit}" + ("" if pairs_model else ", each with every prompt"),
                         "measure": measure, "target": target, "reached": best[0]},
        "tried": tried,
    }


def with_prompts(
    calibrate: list[str], check: list[str], prompts: dict[str, str] | None
) -> tuple[list[str], list[str]]:
    """The texts as the encode loop feeds them: each calibration text with one of the model's prompts (or none)
    in turn, each check text with every one of them.

    A prompt's tokens start every text the model encodes, so their activations belong in the calibration, and a
    text may quantise well bare and badly behind a prompt: "There is a woman outside." kept cosine 0.998 to fp32
    without a prompt and 0.979 behind the default model's "query: " (docs/benchmarks.md).
    """
    variants = ["", *sorted({p for p in (prompts or {}).values() if p})]
    if len(variants) == 1:
        return calibrate, check
    return (
        [variants[i % len(variants)] + text for i, text in enumerate(calibrate)],
        [prompt + text for text in check for prompt in variants],
    )


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """NNCF reports every quantiser it places on its own logger, and draws its progress bars with rich, whose
    console writes to standard output: a first ``m3e encode ... > vectors.jsonl`` builds this artefact, and the
    bars must not land among the vectors."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _check_request(core: Any, graph: Any, precision: str | None) -> Any:
    """An infer request over ``graph`` to compare it with fp32 (``precision="f32"`` pins the reference)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    with keep_signal_stack():
        return core.compile_model(graph, "CPU", config).create_infer_request()


def _pooled_outputs(
    core: Any, graph: Any, batches: list[dict[str, np.ndarray]], model: ModelParts, precision: str | None = None
) -> np.ndarray:
    """Unit vectors of the check texts: the model's pooling over the graph's last hidden state."""
    import numpy as np
    import torch

    from m3e.pooling import pool

    request = _check_request(core, graph, precision)
    rows = []
    mode = str(getattr(model, "pooling", "mean"))
    for feeds in batches:
        hidden = torch.from_numpy(next(iter(request.infer(feeds).values())).copy())
        mask = torch.from_numpy(feeds["attention_mask"])
        rows.append(pool(mode, hidden, mask, None, 0).numpy())
    vectors = np.concatenate(rows)
    unit: np.ndarray = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit


def _logits(
    core: Any, graph: Any, batches: list[dict[str, np.ndarray]], model: ModelParts, precision: str | None = None
) -> np.ndarray:
    """A cross-encoder's first logit for every check pair."""
    import numpy as np

    request = _check_request(core, graph, precision)
    rows = [np.asarray(next(iter(request.infer(feeds).values())), dtype=np.float64)[:, 0] for feeds in batches]
    return np.concatenate(rows)


def _min_cosine(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cosines = (vectors * reference).sum(axis=1)
    return {"min_cosine": round(float(cosines.min()), 5), "mean_cosine": round(float(cosines.mean()), 5)}


def _spearman(scores: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Rank correlation of the scores with fp32's (the order a reranker gives is what it is for)."""
    import numpy as np

    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64) for x in (scores, reference)]
    rho = float(np.corrcoef(ranks[0], ranks[1])[0, 1])
    return {"spearman": round(rho, 5), "max_abs_diff": round(float(np.abs(scores - reference).max()), 5)}


def load_openvino_int8_runner(model: ModelParts) -> OpenVinoRunner:
    require_nncf()
    directory = artefacts.artefact_for(model, KIND, write_int8_ir)
    warn_below_target(directory)
    return OpenVinoRunner(directory / artefacts.graph_file(KIND))


def warn_below_target(directory: Path) -> None:
    """Say so, on every load, when the artefact's quantisation did not reach its target (on a CPU whose int8
    products saturate its weights are 7-bit, and a small model may not hold the bar there)."""
    quantization = (artefacts.read_artefact_meta(directory) or {}).get("quantization") or {}
    reached, target = quantization.get("reached"), quantization.get("target")
    if isinstance(reached, float) and isinstance(target, float) and reached < target:
        why = " (7-bit weights: this CPU's int8 products saturate)" if quantization.get("weights") == "7-bit" else ""
        logger.warning("openvino-int8 for this model keeps %s %.4f to fp32 on held-out %s, under its target %.3f%s;"
                       " --backend openvino keeps fp32's results", quantization.get("measure"), reached,
                       "pairs" if "pairs" in str(quantization.get("check")) else "texts", target, why)


def require_nncf() -> None:
    require("openvino", purpose="the openvino-int8 backend", extra="fast")
    require("nncf", purpose="the openvino-int8 backend", extra="fast")


Quantise = Callable[[list[str]], tuple[Any, dict[str, float]]]


def _release_layers(
    scope: list[str], layers: int, quantise: Quantise, key: str, goal: float, tried: list[dict[str, Any]]
) -> tuple[float, Any, str, list[str]] | None:
    """The holding ``scope`` with as many of its per-layer projections quantised as keep ``key`` >= ``goal``.

    Each projection is first quantised alone (the rest kept in float) to rank them; those that hold the goal on
    their own are then released in that order, the longest prefix that still holds found by bisection (errors
    add up, so the first k hold for every k up to some length and fail beyond it)."""
    wholes = {whole for whole, _, _ in _PER_LAYER}
    kept = [p for p in scope if p not in wholes]
    names = {per.format(i=i): f"{name[:-1]} {i}" for whole, name, per in _PER_LAYER if whole in scope
             for i in range(layers)}
    candidates = list(names)
    if len(candidates) < 2:
        return None
    logger.warning("openvino-int8: choosing which of %d projections to quantise, layer by layer (about %d "
                   "quantisations, once per model)", len(candidates), len(candidates) + len(candidates).bit_length())
    alone: dict[str, float] = {}
    for pattern in candidates:
        _, scores = quantise(kept + [c for c in candidates if c != pattern])
        alone[pattern] = scores[key]
        tried.append({"scope": f"all but {names[pattern]}", key: scores[key]})
    order = sorted((c for c in candidates if alone[c] >= goal), key=lambda c: -alone[c])
    found: tuple[float, Any, str, list[str]] | None = None
    low, high = 1, len(order)
    while low <= high:
        k = (low + high) // 2
        patterns = kept + [c for c in candidates if c not in order[:k]]
        graph, scores = quantise(patterns)
        label = describe_scope(patterns, layers)
        tried.append({"scope": label, **scores})
        logger.info("openvino-int8 with %s kept in float: %s %.4f", label, key, scores[key])
        if scores[key] >= goal:
            found, low = (float(scores[key]), graph, label, patterns), k + 1
        else:
            high = k - 1
    return found


def describe_scope(patterns: list[str], layers: int) -> str:
    """What a list of float-kept patterns keeps, in words (``meta.json``'s ``float_scope``)."""
    parts = ["attention products"] if _ATTENTION_PRODUCTS in patterns else []
    for whole, name, per in _PER_LAYER:
        held = [i for i in range(layers) if per.format(i=i) in patterns]
        if whole in patterns or len(held) == layers:
            parts.append(name)
        elif held:
            parts.append(f"{name} of layers {', '.join(map(str, held))}")
    if any(p.endswith("/.*") for p in patterns):
        parts.append("first and last layers")
    return ", ".join(parts) or "nothing"


def recorded_scope(model: ModelParts) -> list[str] | None:
    """The float-kept patterns recorded beside the model (:data:`artefacts.INT8_SCOPE_FILE`, written by ``m3e
    export --backend openvino-int8``): tried first, so that a build on another machine quantises once instead of
    searching again; the search runs only if it no longer holds the target there."""
    import json

    path = model.source_dir / artefacts.INT8_SCOPE_FILE if model.source_dir is not None else None
    if path is None or not path.is_file():
        return None
    patterns = json.loads(path.read_text(encoding="utf-8")).get("float_patterns")
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise M3EError(f"{path}: 'float_patterns' must be a list of node-name patterns")
    return patterns


def record_scope(model_dir: Path, artefact: Path) -> None:
    """Write the float-kept scope of the openvino-int8 artefact at ``artefact`` beside the model in ``model_dir``
    (:data:`artefacts.INT8_SCOPE_FILE`, read back by :func:`recorded_scope`), for builds elsewhere to start from."""
    import json

    from m3e.atomic import write_atomic

    meta = artefacts.read_artefact_meta(artefact) or {}
    quantization = meta.get("quantization") or {}
    if "float_patterns" not in quantization:
        return
    label = str(quantization.get("float_scope", "")).removesuffix(RECORDED)
    record = {"float_patterns": quantization["float_patterns"], "float_scope": label, "versions": meta.get("versions")}
    write_atomic(model_dir / artefacts.INT8_SCOPE_FILE, json.dumps(record, ensure_ascii=False, indent=1) + "\n")
