"""The openvino backend: the fp32 ONNX export compiled by OpenVINO for this CPU.

OpenVINO chooses the compute precision when it compiles: bf16 on CPUs with AMX or AVX512_BF16
(Sapphire Rapids and later), fp32 elsewhere. On a 2-core Sapphire Rapids it was the fastest CPU
path measured (docs/benchmarks.md): faster than ONNX Runtime int8 and than static or
weight-only int8 in OpenVINO itself, with vectors at cosine >= 0.999 to fp32. The artefact is
the plain export (``MODEL/m3e-openvino/`` from ``m3e export MODEL --backend openvino``, else
``<cache>/openvino/<fingerprint>/``); compiling it takes about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.backends import artefacts
from m3e.backends.threads import inference_threads
from m3e.errors import M3EError

if TYPE_CHECKING:
    from torch import Tensor

    from m3e.model import EmbeddingModel

KIND = "openvino"


class OpenVinoRunner:
    """Runs the compiled model on the features the encode loop builds; one request at a time."""

    def __init__(self, path: Path, threads: int | None = None, precision: str | None = None):
        import threading

        import openvino as ov

        self.path = Path(path)
        self.threads = threads or inference_threads()
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision:  # e.g. "f32" to pin fp32 on a bf16-capable CPU
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # "bf16" / "f32"
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    def __call__(self, features: dict[str, Tensor]) -> Tensor:
        import torch

        feeds = {name: features[name].detach().to("cpu", torch.long).numpy() for name in artefacts.INPUTS}
        with self._lock:
            result = self._request.infer(feeds)
            hidden = next(iter(result.values())).copy()  # the request reuses its output buffer
        return torch.from_numpy(hidden)

    def __repr__(self) -> str:
        return f"OpenVinoRunner({self.path}, threads={self.threads}, precision={self.precision})"


def load_openvino_runner(model: EmbeddingModel, precision: str | None = None) -> OpenVinoRunner:
    require_openvino()
    return OpenVinoRunner(artefacts.artefact_for(model, KIND) / artefacts.ONNX_NAME, precision=precision)


def require_openvino() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise M3EError("the openvino backend needs OpenVINO: pip install 'm3e[openvino]'") from exc
