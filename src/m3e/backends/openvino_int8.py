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
projection too, then the attention output projections, then the first and last layers), so the artefact that
is kept is the fastest one that holds the target. Its ``meta.json`` records which scope and the cosines
measured. An embedder's texts are calibrated and checked behind the model's prompts, as the encode loop feeds
them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
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
    ("attention products and outputs, feed-forward outputs",
     (_ATTENTION_PRODUCTS, _FEED_FORWARD_OUTPUTS, _ATTENTION_OUTPUTS)),
    ("attention products and outputs, feed-forward outputs, first and last layers",
     (_ATTENTION_PRODUCTS, _FEED_FORWARD_OUTPUTS, _ATTENTION_OUTPUTS, r".*layer\.{first}/.*", r".*layer\.{last}/.*")),
)


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
    tried: list[dict[str, Any]] = []
    best: tuple[float, Any, str] | None = None
    for label, patterns in SCOPES:
        scope = [p.format(first=0, last=layers - 1) for p in patterns]
        with keep_signal_stack(), _quiet("nncf"):
            quantized = nncf.quantize(
                fp32,
                nncf.Dataset(calibration),
                model_type=nncf.ModelType.TRANSFORMER,
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(patterns=scope, validate=False) if scope else None,
            )
        scores = fidelity(outputs(core, quantized, checks, model), reference)
        tried.append({"scope": label, **scores})
        logger.info("openvino-int8 with %s kept in float: %s to fp32 %.4f", label, measure, scores[key])
        if best is None or scores[key] > best[0]:
            best = (float(scores[key]), quantized, label)
        if scores[key] >= target:
            break
    assert best is not None
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
                         "float_scope": best[2], "calibration": f"{len(calibrate)} {unit} from {source}",
                         "check": f"{held_out} held-out {unit}" + ("" if pairs_model else ", each with every prompt"),
                         "measure": measure, "target": target},
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
    """NNCF reports every quantiser it places and draws progress bars on its own logger."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
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
    return OpenVinoRunner(directory / artefacts.graph_file(KIND))


def require_nncf() -> None:
    require("openvino", purpose="the openvino-int8 backend", extra="fast")
    require("nncf", purpose="the openvino-int8 backend", extra="fast")
