"""Inference backends beyond torch fp32: bf16 autocast, int8 and openvino.

``int8`` runs the transformer in ONNX Runtime with dynamically quantised weights (int8,
per output channel). The quantised graph is an artefact built once: ``m3e export MODEL
--backend int8`` writes it next to the model (``MODEL/m3e-int8/``); without one, the first
load builds it into the cache (``~/.cache/m3e/int8/<fingerprint>/``) and later loads reuse it.
See docs/design.md for why ONNX Runtime and not torch's dynamic quantisation.

``openvino`` compiles the fp32 export with OpenVINO, which computes in bf16 on CPUs with AMX or
AVX512_BF16 and in fp32 elsewhere (artefact ``MODEL/m3e-openvino/`` or the cache's ``openvino/``).

``openvino-int8`` is that export statically quantised by NNCF (calibrated on offline texts, layers whose
quantisation would cost cosine to fp32 kept in float; ``m3e.backends.openvino_int8``).

``auto`` (``m3e.backends.selection``) picks one of these from the CPU, the installed engines and the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from m3e.backends.threads import inference_threads, physical_cores
from m3e.errors import M3EError

if TYPE_CHECKING:
    from m3e.backends.base import ModelParts, Runner

__all__ = [
    "ARTEFACT_BACKENDS",
    "AUTO",
    "BACKENDS",
    "BACKEND_CHOICES",
    "bf16_native",
    "export_artefact",
    "inference_threads",
    "make_int8_runner",
    "make_openvino_runner",
    "physical_cores",
    "resolve_backend",
    "runner_for",
    "runner_for_artefact",
    "split_backend",
]

# Every backend a model runs on, and those built once into an artefact (m3e export).
BACKENDS = ("torch", "bf16", "int8", "openvino", "openvino-int8")
ARTEFACT_BACKENDS = ("int8", "openvino", "openvino-int8")
AUTO = "auto"
# What m3e.load / encode / eval / serve / index accept: a backend, or auto (the choice for this CPU and model).
BACKEND_CHOICES = (AUTO, *BACKENDS)


def split_backend(name: str) -> tuple[str, str | None]:
    """``"MODEL@openvino"`` -> ``("MODEL", "openvino")``; a name without a known backend suffix, or an existing
    path that happens to end in one, is returned whole with None."""
    head, sep, tail = name.rpartition("@")
    if sep and tail in BACKEND_CHOICES and not Path(name).exists():
        return head, tail
    return name, None


def resolve_backend(model: ModelParts, backend: str) -> str:
    """``backend``, or for ``auto`` the backend chosen for ``model`` here (logged in one line with the reason)."""
    if backend == AUTO:
        from m3e.backends.measurement import resolve

        return resolve(model, backend)
    return backend


def runner_for(model: ModelParts, backend: str) -> Runner | None:
    """What ``model.set_backend(backend)`` runs its transformer with: a runner for ``int8`` / ``openvino`` (built
    or found once per weights), None for ``torch`` / ``bf16`` (torch itself, bf16 by autocast). Also limits
    torch's threads to the physical cores on CPU."""
    import logging

    if backend not in BACKENDS:
        raise M3EError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    runner = None
    if backend == "int8":
        runner = make_int8_runner(model)
    elif backend == "openvino":
        runner = make_openvino_runner(model)
    elif backend == "openvino-int8":
        from m3e.backends.openvino_int8 import load_openvino_int8_runner

        runner = load_openvino_int8_runner(model)
    elif backend == "bf16" and model.device.type == "cpu" and not bf16_native():
        logging.getLogger(__name__).warning(
            "this CPU has no native bf16 (AVX512_BF16 or AMX): bf16 is emulated and slower than fp32 here; use "
            "backend='int8' for speed"
        )
    if model.device.type == "cpu":
        from m3e.backends.threads import limit_torch_threads

        limit_torch_threads()
    return runner


def make_int8_runner(model: ModelParts) -> Runner:
    """A callable ``runner(features) -> last_hidden_state`` (float32 [batch, seq, hidden])."""
    from m3e.backends.onnx_int8 import load_int8_runner

    return load_int8_runner(model)


def make_openvino_runner(model: ModelParts) -> Runner:
    """Like ``make_int8_runner``, on OpenVINO."""
    from m3e.backends.openvino import load_openvino_runner

    return load_openvino_runner(model)


def export_artefact(
    model: ModelParts, out: str | os.PathLike[str] | None = None, *, force: bool = False, kind: str = "int8"
) -> Path:
    """``m3e export --backend KIND``: build the ``kind`` artefact next to the model (or at ``out``) unless an
    up-to-date one is there."""
    from m3e.backends import artefacts

    if kind == "int8":
        from m3e.backends.onnx_int8 import require_onnxruntime, write_int8_graph

        require_onnxruntime()
        return artefacts.export_artefact(model, out, force=force, kind=kind, write_graph=write_int8_graph)
    if kind == "openvino-int8":
        from m3e.backends.openvino_int8 import record_scope, require_nncf, write_int8_ir

        require_nncf()
        directory = artefacts.export_artefact(model, out, force=force, kind=kind, write_graph=write_int8_ir)
        if out is None and model.source_dir is not None:  # beside the model: its scope too, for other machines
            record_scope(model.source_dir, directory)
        return directory
    from m3e.backends.openvino import require_openvino

    require_openvino()
    return artefacts.export_artefact(model, out, force=force, kind=kind, write_graph=artefacts.write_plain_graph)


def runner_for_artefact(kind: str, directory: Path) -> Runner:
    """A runner over the artefact in ``directory`` as it is (no fingerprint check: the caller built it)."""
    from m3e.backends.artefacts import ONNX_NAME, graph_file

    if kind in ("openvino", "openvino-int8"):
        from m3e.backends.openvino import OpenVinoRunner

        return OpenVinoRunner(directory / graph_file(kind))
    from m3e.backends.onnx_int8 import OnnxRunner

    return OnnxRunner(directory / ONNX_NAME)


def bf16_native() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512_BF16 or AMX); otherwise oneDNN
    emulates it and bf16 is slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
