"""Optimised-inference artefacts: the transformer exported to ONNX once, found again by fingerprint.

An artefact is a directory holding ``model.onnx`` (inputs ``input_ids`` and ``attention_mask``
with dynamic batch and sequence axes, output ``last_hidden_state``) and ``meta.json`` (format,
the fingerprint of the weights it was made from, the settings and the versions that made it).
Two kinds exist: ``int8`` (fused and quantised for ONNX Runtime, ``m3e.backends.onnx_int8``) and
``openvino`` (the plain fp32 export, compiled by ``m3e.backends.openvino``). A kind's artefact is
looked for in this order:

1. ``<model dir>/m3e-int8/`` or ``<model dir>/m3e-openvino/`` (written by ``m3e export MODEL --backend KIND``),
2. ``<cache>/<kind>/<fingerprint>/`` (built on first use),

and used only when its fingerprint matches the weights in memory, so a model changed after
loading (fine-tuned, say) never runs with a stale graph. Building is written to a temporary
directory and swapped in, so a reader sees the old artefact or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.atomic import building_dir
from m3e.backends.threads import limit_torch_threads
from m3e.errors import M3EError
from m3e.paths import cache_root

if TYPE_CHECKING:
    from torch import Tensor

    from m3e.backends.base import ModelParts

logger = logging.getLogger(__name__)

# Writes an artefact's model.onnx at ``out`` (scratch files in ``work``); returns what meta.json records of it.
GraphWriter = Callable[["ModelParts", Path, Path], dict[str, Any]]

FORMAT = 1
ONNX_NAME = "model.onnx"
META_NAME = "meta.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"
OPSET = 17
_SAMPLE = 1 << 16
# Chosen by measurement (docs/design.md): the graph fused first by ONNX Runtime's transformer
# optimizer (one Attention op per layer, embeddings + LayerNorm, bias + GELU, residual + LayerNorm;
# 1.3-1.6x the throughput of the plain export, most on passages), then signed int8 weights with one
# scale per output channel (per-tensor scales lost too much: cosine 0.85 on MiniLM), activations
# quantised per call by ONNX Runtime (uint8), and the first encoder layer left in fp32: a per-layer
# scan found it the most sensitive (mean cosine to fp32 on MiniLM 0.989 -> 0.992) for ~10% of the speed.
QUANT_SETTINGS: dict[str, Any] = {
    "graph": "fused",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "fp32_layers": "first",
}
# The openvino artefact: the plain export; OpenVINO picks the precision when it compiles it.
OPENVINO_SETTINGS: dict[str, Any] = {"graph": "plain", "precision": "fp32 weights"}
# The openvino-int8 artefact: NNCF static int8 in OpenVINO's own format (m3e.backends.openvino_int8).
OPENVINO_INT8_SETTINGS: dict[str, Any] = {
    "graph": "nncf", "precision": "static int8", "min_cosine": 0.995, "texts": "with the model's prompts",
    "float_scopes": 4, "per_layer": "released while min_cosine >= 0.996",
}
# The float-kept scope an openvino-int8 search chose, recorded beside the model by `m3e export --backend
# openvino-int8` (the bundled default model ships one): later builds quantise with it once instead of searching.
# A hint, not part of the fingerprint: whatever scope a build starts from, its artefact holds the same target.
INT8_SCOPE_FILE = "m3e-openvino-int8-scope.json"
# On a CPU whose int8 products saturate (x86 without VNNI, ``CpuFeatures.int8_products_saturate``) the int8 kinds
# quantise weights to 7 bits: ONNX Runtime's reduce_range, NNCF's overflow fix on every layer. Part of the
# fingerprint there, so an artefact made on a VNNI machine is not used where its 8-bit weights would overflow.
SEVEN_BIT_WEIGHTS = {"weights": "7-bit: int8 products saturate on this CPU (no VNNI)"}
INT8_KINDS = frozenset({"int8", "openvino-int8"})
# kind -> (directory next to the model, cache sub-directory, settings in the fingerprint)
KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "int8": ("m3e-int8", "int8", QUANT_SETTINGS),
    "openvino": ("m3e-openvino", "openvino", OPENVINO_SETTINGS),
    "openvino-int8": ("m3e-openvino-int8", "openvino-int8", OPENVINO_INT8_SETTINGS),
}
# The graph file of a kind whose graph is not ONNX.
GRAPH_FILES = {"openvino-int8": "model.xml"}


def seven_bit_weights() -> bool:
    """Whether this CPU's int8 arithmetic needs weights quantised to 7 bits (:data:`SEVEN_BIT_WEIGHTS`)."""
    from m3e.backends.selection import host_cpu

    return host_cpu().int8_products_saturate


def kind_settings(kind: str) -> dict[str, Any]:
    """The settings a ``kind`` artefact is built with on this CPU (they enter its fingerprint)."""
    settings = dict(KINDS[kind][2])
    if kind in INT8_KINDS and seven_bit_weights():
        settings.update(SEVEN_BIT_WEIGHTS)
    return settings


def graph_file(kind: str) -> str:
    """The file in a ``kind`` artefact that holds its graph."""
    return GRAPH_FILES.get(kind, ONNX_NAME)


# ---------------------------------------------------------------------------- fingerprint
def fingerprint(model: ModelParts, kind: str = "int8") -> str:
    """A digest of the transformer's config and weights (as in memory, not as on disk).

    Tensors of up to 64k values are hashed whole, larger ones at 64k evenly spaced positions:
    hashing every byte of a base-sized model costs seconds on a small CPU, and training changes
    (nearly) every value of a weight matrix, so the sample sees it; biases and norms are whole.
    """
    import torch

    h = hashlib.sha256()
    h.update(f"m3e-{kind}/{FORMAT}/{json.dumps(kind_settings(kind), sort_keys=True)}\n".encode())
    if model.artefact_output != OUTPUT:  # a reranker's graph (embedders keep the fingerprints they always had)
        h.update(f"{model.artefact_output}<-{','.join(model.artefact_inputs)}\n".encode())
    config = model.transformer.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"):
        config.pop(volatile, None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.transformer.state_dict().items():
            t = tensor.detach().to("cpu")
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.view(torch.int16)
            # numpy, single-threaded: torch's threaded strided copies stall on a busy machine
            flat = t.numpy().reshape(-1)
            if flat.size > _SAMPLE:
                flat = flat[:: flat.size // _SAMPLE]
            h.update(flat.tobytes())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------------------- locations
def artefact_dir_for(model_dir: str | os.PathLike[str], kind: str = "int8") -> Path:
    return Path(model_dir) / KINDS[kind][0]


def cache_dir_for(fp: str, kind: str = "int8") -> Path:
    return cache_root() / KINDS[kind][1] / fp


def read_artefact_meta(directory: Path) -> dict[str, Any] | None:
    """The artefact's meta.json, or None when the directory holds no complete artefact."""
    try:
        meta = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if not (directory / graph_file(str(meta.get("kind", "int8")))).is_file():
        return None
    return meta


def find_artefact(model: ModelParts, fp: str | None = None, kind: str = "int8") -> Path | None:
    """The first artefact whose fingerprint matches the model's weights."""
    fp = fp or fingerprint(model, kind)
    candidates = []
    source = getattr(model, "source_dir", None)
    if source is not None:
        candidates.append(artefact_dir_for(source, kind))
    candidates.append(cache_dir_for(fp, kind))
    for directory in candidates:
        meta = read_artefact_meta(directory)
        if meta is None:
            continue
        if meta.get("fingerprint") == fp:
            return directory
        logger.warning(
            "%s was made from other weights, by an older m3e or for a CPU with other int8 arithmetic (VNNI or not);"
            " not using it (re-run `m3e export`)", directory,
        )
    return None


# ---------------------------------------------------------------------------- build
def _exported_module(transformer: Any, inputs: tuple[str, ...], output: str) -> Any:
    """What is exported: the named inputs, in order -> the one named output (last_hidden_state, logits)."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *features: Tensor) -> Tensor:
            out = self.inner(**dict(zip(inputs, features, strict=True)), return_dict=True)
            result: Tensor = getattr(out, output)
            return result

    return Exported(transformer).eval()


def export_fp32_onnx(model: ModelParts, path: Path) -> None:
    """Export the fp32 transformer to ONNX with dynamic batch and sequence axes."""
    import torch

    if model.device.type != "cpu":
        raise M3EError("ONNX export runs on CPU; load the model without device= (or device='cpu')")
    inputs, output = tuple(model.artefact_inputs), model.artefact_output
    wrapper = _exported_module(model.transformer, inputs, output)
    # A padded row, so the trace keeps the attention-mask path (an all-ones mask may be dropped).
    low = max(1, min(1000, int(model.transformer.config.vocab_size) - 20))
    ids = torch.full((2, 16), low, dtype=torch.long)
    ids[:, 1:-1] = torch.arange(low, low + 14)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    types = torch.zeros_like(ids)
    types[:, 8:] = 1  # a second segment, so a pair model's segment embeddings stay in the graph
    sample = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    dynamic: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in inputs}
    dynamic[output] = {0: "batch", 1: "sequence"} if output == OUTPUT else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad(), _eager_attention(model.transformer):
        warnings.simplefilter("ignore")  # tracer chatter about Python booleans in HF mask code
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in inputs),
            str(path),
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


@contextlib.contextmanager
def _eager_attention(transformer: Any) -> Iterator[None]:
    """Export with the plain attention code: its graph is the one ONNX Runtime fuses into one op
    (the SDPA export hides the pattern behind masking ops, and runs 1.6x slower quantised)."""
    config = getattr(transformer, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(transformer, "set_attn_implementation")
    if switch:
        try:
            transformer.set_attn_implementation("eager")
        except (ValueError, ImportError, AttributeError):
            switch = False
    try:
        yield
    finally:
        if switch:
            transformer.set_attn_implementation(previous)


def write_plain_graph(model: ModelParts, work: Path, out: Path) -> dict[str, Any]:
    """The openvino artefact's graph: the plain export (OpenVINO optimises it when it compiles it)."""
    export_fp32_onnx(model, out)
    return {"engine": "openvino", "graph": "plain"}


def build_artefact(
    model: ModelParts, target: Path, fp: str | None, kind: str, write_graph: GraphWriter
) -> Path:
    """Write the ``kind`` artefact for ``model`` at ``target`` atomically (``write_graph`` makes its model.onnx);
    returns ``target``."""
    fp = fp or fingerprint(model, kind)
    target = Path(target)
    with building_dir(target, durable=True, swap=_swap_in) as tmp:
        started = time.perf_counter()
        fields = write_graph(model, tmp, tmp / graph_file(kind))
        meta = _meta(model, fp, kind, fields, started)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def _meta(model: ModelParts, fp: str, kind: str, fields: dict[str, Any], started: float) -> dict[str, Any]:
    import importlib.metadata

    from m3e.version import __version__

    versions = {"m3e": __version__}
    engines = {"int8": ("onnxruntime",), "openvino-int8": ("openvino", "nncf")}.get(kind, ("openvino",))
    for package in ("torch", *engines):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "format": FORMAT,
        "kind": kind,
        "fingerprint": fp,
        "model": model.name,
        **fields,
        "inputs": list(model.artefact_inputs),
        "output": model.artefact_output,
        "opset": OPSET,
        "versions": versions,
        "seconds_to_build": round(time.perf_counter() - started, 1),
    }


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by ``new``; a reader sees the old artefact or the new one, never half."""
    if not target.exists():
        try:
            os.replace(new, target)
            return
        except OSError:
            # Another process finished the same artefact first: keep theirs when it is whole.
            if read_artefact_meta(target) is not None:
                shutil.rmtree(new, ignore_errors=True)
                return
            raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def export_artefact(
    model: ModelParts,
    out: str | os.PathLike[str] | None,
    *,
    force: bool = False,
    kind: str,
    write_graph: GraphWriter,
) -> Path:
    """``m3e export --backend KIND``: build the artefact next to the model (or at ``out``)."""
    if out is None:
        source = getattr(model, "source_dir", None)
        if source is None:
            raise M3EError("this model was not loaded from a directory; give an output directory")
        out = artefact_dir_for(source, kind)
    target = Path(out).expanduser().resolve()
    fp = fingerprint(model, kind)
    meta = read_artefact_meta(target)
    if meta is not None and meta.get("fingerprint") == fp and not force:
        logger.info("%s is up to date", target)
        return target
    if not os.access(target.parent if not target.exists() else target, os.W_OK):
        raise M3EError(f"cannot write {target}: the directory is read-only (give --out DIR)")
    return build_artefact(model, target, fp, kind, write_graph)


def artefact_for(model: ModelParts, kind: str, write_graph: GraphWriter) -> Path:
    """The directory of the model's ``kind`` artefact: the one next to the model or in the cache when its
    fingerprint matches, else one built into the cache now (once)."""
    if model.device.type != "cpu":
        raise M3EError(f"the {kind} backend runs on CPU; load the model without device= (or device='cpu')")
    limit_torch_threads()
    fp = fingerprint(model, kind)
    directory = find_artefact(model, fp, kind)
    if directory is None:
        directory = cache_dir_for(fp, kind)
        logger.warning(
            "building the %s model for %s in %s (once; `m3e export MODEL --backend %s` stores it next to the model)",
            kind,
            model.name,
            directory,
            kind,
        )
        with contextlib.suppress(FileExistsError):
            build_artefact(model, directory, fp, kind, write_graph)
    return directory
