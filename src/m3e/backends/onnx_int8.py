"""The int8 backend: the exported transformer fused, its weights quantised to int8, run by ONNX Runtime.

``write_int8_graph`` makes the graph of an ``int8`` artefact (``m3e.backends.artefacts`` builds,
stores and finds it): one export, ONNX Runtime's transformer fusions, dynamic quantisation
(seconds for small models, about a minute for base-sized ones on 2 cores). ``OnnxRunner``
runs it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.backends.artefacts import (
    ONNX_NAME,
    QUANT_SETTINGS,
    artefact_for,
    export_fp32_onnx,
    seven_bit_weights,
)
from m3e.backends.threads import inference_threads
from m3e.extras import require

if TYPE_CHECKING:
    from torch import Tensor

    from m3e.backends.base import ModelParts

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"layers?\.(\d+)/")
_FUSED_ATTENTION = re.compile(r"^Attention_(\d+)$")
# Encoders whose exported graph ONNX Runtime's "bert" fusions recognise.
_FUSABLE = {"bert", "roberta", "xlm-roberta", "camembert", "ernie", "nezha", "distilbert"}


def write_int8_graph(model: ModelParts, work: Path, out: Path) -> dict[str, Any]:
    """Export, fuse and quantise the model's transformer into ``out`` (scratch files in ``work``);
    returns the fields ``meta.json`` records about it."""
    export_fp32_onnx(model, work / "fp32.onnx")
    graph, fused_ops = "plain", {}
    config = model.transformer.config
    if QUANT_SETTINGS["graph"] == "fused" and getattr(config, "model_type", None) in _FUSABLE:
        try:
            fused_ops = fuse(work / "fp32.onnx", work / "fused.onnx", config)
            graph = "fused"
        except Exception as exc:  # an architecture the fusions do not know: the plain graph still runs
            logger.warning("graph fusion failed (%s); quantising the plain graph", exc)
    quantize(work / ("fused.onnx" if graph == "fused" else "fp32.onnx"), out)
    for extra in [*work.glob("fp32.onnx*"), *work.glob("fused.onnx*")]:  # with external-data side files
        extra.unlink()
    quantization = {"method": "dynamic", **QUANT_SETTINGS, "reduce_range": reduce_range(), "graph": graph}
    return {"engine": "onnxruntime", "quantization": quantization, "fused_ops": fused_ops}


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


def reduce_range() -> bool:
    """7-bit weights where this CPU's int8 products would saturate (``artefacts.SEVEN_BIT_WEIGHTS``)."""
    return bool(QUANT_SETTINGS["reduce_range"]) or seven_bit_weights()


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
            reduce_range=reduce_range(),
            nodes_to_exclude=exclude,
            # fused ops are outside ONNX's shape inference; their outputs are fp32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


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
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, features: dict[str, Tensor]) -> Tensor:
        import torch

        feeds = {name: features[name].detach().to("cpu", torch.long).numpy() for name in self.input_names}
        (result,) = self.session.run([self.output_name], feeds)
        return torch.from_numpy(result)

    def __repr__(self) -> str:
        return f"OnnxRunner({self.path}, threads={self.threads})"


def load_int8_runner(model: ModelParts) -> OnnxRunner:
    require_onnxruntime()
    return OnnxRunner(artefact_for(model, "int8", write_int8_graph) / ONNX_NAME)


def require_onnxruntime() -> None:
    require("onnxruntime.quantization", purpose="the int8 backend", extra="onnx", package="onnxruntime")
    require("onnx", purpose="the int8 backend", extra="onnx")
