"""The int8 backend: the transformer exported to ONNX, weights quantised to int8, run by ONNX Runtime.
The same artefact machinery (export, fingerprint, atomic build, lookup) serves the openvino backend,
whose artefact is the plain fp32 export (``m3e.backends.openvino`` runs it).

The artefact is a directory holding ``model.onnx`` (the quantised graph, inputs ``input_ids`` and
``attention_mask`` with dynamic batch and sequence axes, output ``last_hidden_state``) and
``meta.json`` (format, the fingerprint of the weights it was made from, the settings and the
versions that made it). It is looked for in this order:

1. ``<model dir>/m3e-int8/`` (written by ``m3e export MODEL --backend int8``),
2. ``<cache>/int8/<fingerprint>/`` (built on first use),

and used only when its fingerprint matches the weights in memory, so a model changed after
loading (fine-tuned, say) never runs with a stale graph. Building takes one export and one
quantisation (seconds for small models, about a minute for base-sized ones on 2 cores).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.backends.threads import inference_threads, limit_torch_threads
from m3e.errors import M3EError

if TYPE_CHECKING:
    from torch import Tensor

    from m3e.model import EmbeddingModel

logger = logging.getLogger(__name__)

FORMAT = 1
ARTEFACT_DIR = "m3e-int8"
ONNX_NAME = "model.onnx"
META_NAME = "meta.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"
OPSET = 17
# Chosen by measurement (docs/design.md): the graph fused first by ONNX Runtime's transformer
# optimizer (one Attention op per layer, embeddings + LayerNorm, bias + GELU, residual + LayerNorm;
# 1.3-1.6x the throughput of the plain export, most on passages), then signed int8 weights with one
# scale per output channel (per-tensor scales lost too much: cosine 0.85 on MiniLM), activations
# quantised per call by ONNX Runtime (uint8), and the first encoder layer left in fp32: a per-layer
# scan found it the most sensitive (mean cosine to fp32 on MiniLM 0.989 -> 0.992) for ~10% of the speed.
_SAMPLE = 1 << 16
QUANT_SETTINGS: dict[str, Any] = {
    "graph": "fused",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "fp32_layers": "first",
}
_LAYER = re.compile(r"layers?\.(\d+)/")
_FUSED_ATTENTION = re.compile(r"^Attention_(\d+)$")
# The openvino artefact: the plain export; OpenVINO picks the precision when it compiles it.
OPENVINO_SETTINGS: dict[str, Any] = {"graph": "plain", "precision": "fp32 weights"}
# kind -> (directory next to the model, cache sub-directory, settings in the fingerprint)
KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "int8": (ARTEFACT_DIR, "int8", QUANT_SETTINGS),
    "openvino": ("m3e-openvino", "openvino", OPENVINO_SETTINGS),
}
# Encoders whose exported graph ONNX Runtime's "bert" fusions recognise.
_FUSABLE = {"bert", "roberta", "xlm-roberta", "camembert", "ernie", "nezha", "distilbert"}


# ---------------------------------------------------------------------------- fingerprint
def fingerprint(model: EmbeddingModel, kind: str = "int8") -> str:
    """A digest of the transformer's config and weights (as in memory, not as on disk).

    Tensors of up to 64k values are hashed whole, larger ones at 64k evenly spaced positions:
    hashing every byte of a base-sized model costs seconds on a small CPU, and training changes
    (nearly) every value of a weight matrix, so the sample sees it; biases and norms are whole.
    """
    import torch

    h = hashlib.sha256()
    h.update(f"m3e-{kind}/{FORMAT}/{json.dumps(KINDS[kind][2], sort_keys=True)}\n".encode())
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
    try:
        from m3e.data.paths import cache_root

        root = Path(cache_root())
    except ImportError:
        root = Path(os.environ.get("M3E_HOME") or Path.home() / ".cache" / "m3e")
    return root / KINDS[kind][1] / fp


def read_meta(directory: Path) -> dict[str, Any] | None:
    """The artefact's meta.json, or None when the directory holds no complete artefact."""
    try:
        meta = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not (directory / ONNX_NAME).is_file():
        return None
    return meta


def find_artefact(model: EmbeddingModel, fp: str | None = None, kind: str = "int8") -> Path | None:
    """The first artefact whose fingerprint matches the model's weights."""
    fp = fp or fingerprint(model, kind)
    candidates = []
    source = getattr(model, "source_dir", None)
    if source is not None:
        candidates.append(artefact_dir_for(source, kind))
    candidates.append(cache_dir_for(fp, kind))
    for directory in candidates:
        meta = read_meta(directory)
        if meta is None:
            continue
        if meta.get("fingerprint") == fp:
            return directory
        logger.warning("%s was made from other weights or by an older m3e; not using it (re-run `m3e export`)", directory)
    return None


# ---------------------------------------------------------------------------- build
def _last_hidden_module(transformer: Any) -> Any:
    """What is exported: (input_ids, attention_mask) -> last_hidden_state."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    return LastHidden(transformer).eval()


def export_fp32_onnx(model: EmbeddingModel, path: Path) -> None:
    """Export the fp32 transformer to ONNX with dynamic batch and sequence axes."""
    import torch

    if model.device.type != "cpu":
        raise M3EError("the int8 backend runs on CPU; load the model without device= (or device='cpu')")
    wrapper = _last_hidden_module(model.transformer)
    # A padded row, so the trace keeps the attention-mask path (an all-ones mask may be dropped).
    low = max(1, min(1000, int(model.transformer.config.vocab_size) - 20))
    ids = torch.full((2, 16), low, dtype=torch.long)
    ids[:, 1:-1] = torch.arange(low, low + 14)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    axes = {"0": "batch", "1": "sequence"}
    dynamic = {name: {int(k): v for k, v in axes.items()} for name in (*INPUTS, OUTPUT)}
    with warnings.catch_warnings(), torch.no_grad(), _eager_attention(model.transformer):
        warnings.simplefilter("ignore")  # tracer chatter about Python booleans in HF mask code
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
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


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's optimizer and quantiser log progress and advice on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def fuse(src: Path, dst: Path, config: Any) -> dict[str, int]:
    """ONNX Runtime's transformer fusions, saved to ``dst``; returns how many of each fused op.

    Only graph rewrites (opt_level 0): the saved graph stays portable across CPUs, and the session
    applies its own hardware-specific optimisations when it loads it.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    with _quiet_root_logger():
        fused = optimizer.optimize_model(
            str(src),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
            optimization_options=FusionOptions("bert"),
            opt_level=0,
        )
        fused.save_model_to_file(str(dst))
        stats = fused.get_fused_operator_statistics()
    return {op: int(n) for op, n in stats.items() if n}


def weight_matmuls_by_layer(path: Path) -> dict[int, list[str]]:
    """Names of the nodes that multiply by a weight (MatMul, fused Attention), by encoder layer index."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    layers: dict[int, list[str]] = {}
    attention: list[tuple[int, str]] = []
    for node in graph.node:
        if node.op_type == "MatMul" and any(name in weights for name in node.input):
            found = _LAYER.search(node.name)
            if found:
                layers.setdefault(int(found.group(1)), []).append(node.name)
        elif node.op_type == "Attention":
            numbered = _FUSED_ATTENTION.match(node.name)
            if numbered:
                attention.append((int(numbered.group(1)), node.name))
    # The fusion numbers Attention ops in graph order, which is layer order.
    if len(attention) == len(layers):
        for layer, (_, name) in zip(sorted(layers), sorted(attention), strict=True):
            layers[layer].append(name)
    return layers


def quantize(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude: list[str] = []
    if QUANT_SETTINGS["fp32_layers"] == "first":
        layers = weight_matmuls_by_layer(src)
        if layers:
            exclude = layers[min(layers)]
    with _quiet_root_logger():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=getattr(QuantType, QUANT_SETTINGS["weight_type"]),
            per_channel=QUANT_SETTINGS["per_channel"],
            reduce_range=QUANT_SETTINGS["reduce_range"],
            nodes_to_exclude=exclude,
            # fused ops are outside ONNX's shape inference; their outputs are fp32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def build_artefact(model: EmbeddingModel, target: Path, fp: str | None = None, kind: str = "int8") -> Path:
    """Write the ``kind`` artefact for ``model`` at ``target`` atomically; returns ``target``."""
    if kind == "int8":
        _require_onnxruntime()
    fp = fp or fingerprint(model, kind)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artefact is shared like the model
    try:
        started = time.perf_counter()
        if kind == "openvino":
            export_fp32_onnx(model, tmp / ONNX_NAME)
            meta = _meta(model, fp, kind, {"engine": "openvino", "graph": "plain"}, started)
            _finish(tmp, target, meta)
            return target
        export_fp32_onnx(model, tmp / "fp32.onnx")
        graph, fused_ops = "plain", {}
        config = model.transformer.config
        if QUANT_SETTINGS["graph"] == "fused" and getattr(config, "model_type", None) in _FUSABLE:
            try:
                fused_ops = fuse(tmp / "fp32.onnx", tmp / "fused.onnx", config)
                graph = "fused"
            except Exception as exc:  # an architecture the fusions do not know: the plain graph still runs
                logger.warning("graph fusion failed (%s); quantising the plain graph", exc)
        quantize(tmp / ("fused.onnx" if graph == "fused" else "fp32.onnx"), tmp / ONNX_NAME)
        for extra in [*tmp.glob("fp32.onnx*"), *tmp.glob("fused.onnx*")]:  # with external-data side files
            extra.unlink()
        quantization = {"method": "dynamic", **QUANT_SETTINGS, "graph": graph}
        meta = _meta(model, fp, kind, {"engine": "onnxruntime", "quantization": quantization, "fused_ops": fused_ops}, started)
        _finish(tmp, target, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _meta(model: EmbeddingModel, fp: str, kind: str, fields: dict[str, Any], started: float) -> dict[str, Any]:
    import importlib.metadata

    from m3e import __version__

    versions = {"m3e": __version__}
    for package in ("torch", "onnxruntime" if kind == "int8" else "openvino"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "format": FORMAT,
        "kind": kind,
        "fingerprint": fp,
        "model": model.name,
        **fields,
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "opset": OPSET,
        "versions": versions,
        "seconds_to_build": round(time.perf_counter() - started, 1),
    }


def _finish(tmp: Path, target: Path, meta: dict[str, Any]) -> None:
    (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for f in tmp.iterdir():
        _fsync(f)
    _swap_in(tmp, target)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _swap_in(new: Path, target: Path) -> None:
    """Replace ``target`` by ``new``; a reader sees the old artefact or the new one, never half."""
    if not target.exists():
        try:
            os.replace(new, target)
            return
        except OSError:
            # Another process finished the same artefact first: keep theirs when it is whole.
            if read_meta(target) is not None:
                shutil.rmtree(new, ignore_errors=True)
                return
            raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def export_int8(model: EmbeddingModel, out: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """``m3e export --backend int8``: build the artefact next to the model (or at ``out``)."""
    return export_artefact(model, out, force=force, kind="int8")


def export_artefact(
    model: EmbeddingModel, out: str | os.PathLike[str] | None = None, *, force: bool = False, kind: str = "int8"
) -> Path:
    """``m3e export --backend KIND``: build the artefact next to the model (or at ``out``)."""
    if out is None:
        source = getattr(model, "source_dir", None)
        if source is None:
            raise M3EError("this model was not loaded from a directory; give an output directory")
        out = artefact_dir_for(source, kind)
    target = Path(out).expanduser().resolve()
    fp = fingerprint(model, kind)
    meta = read_meta(target)
    if meta is not None and meta.get("fingerprint") == fp and not force:
        logger.info("%s is up to date", target)
        return target
    if not os.access(target.parent if not target.exists() else target, os.W_OK):
        raise M3EError(f"cannot write {target}: the directory is read-only (give --out DIR)")
    return build_artefact(model, target, fp, kind)


# ---------------------------------------------------------------------------- run
class OnnxRunner:
    """Calls the ONNX Runtime session with the features the encode loop builds."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        threads = threads or inference_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle workers sleep instead of spinning: spinning steals the cores from torch (pooling,
        # other models) and, on a shared or virtual machine, from ONNX Runtime itself (measured
        # 4.7 ms vs 8.4 ms per short query on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, features: dict[str, Tensor]) -> Tensor:
        import torch

        feeds = {name: features[name].detach().to("cpu", torch.long).numpy() for name in self.input_names}
        (hidden,) = self.session.run([OUTPUT], feeds)
        return torch.from_numpy(hidden)

    def __repr__(self) -> str:
        return f"OnnxRunner({self.path}, threads={self.threads})"


def load_int8_runner(model: EmbeddingModel) -> OnnxRunner:
    _require_onnxruntime()
    return OnnxRunner(artefact_for(model, "int8") / ONNX_NAME)


def artefact_for(model: EmbeddingModel, kind: str) -> Path:
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
            build_artefact(model, directory, fp, kind)
    return directory


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import quantize_dynamic  # noqa: F401
    except ImportError as exc:
        raise M3EError("the int8 backend needs onnxruntime and onnx: pip install 'm3e[onnx]'") from exc
