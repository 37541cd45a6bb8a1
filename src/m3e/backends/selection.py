"""``backend="auto"``: which backend runs a model, from what is installed, what the CPU has and the workload.

The decision is :func:`choose_backend`, a pure function of three values (:class:`CpuFeatures`, the installed
engines, :class:`Workload`), so every rule can be checked with made-up CPUs and installs; :func:`detect_cpu` and
:func:`installed_engines` read the real ones (``/proc/cpuinfo``, importable packages). The preference orders
follow the measurements in docs/benchmarks.md:

- AMX (Sapphire Rapids and later): OpenVINO in bf16 (the AMX-BF16 tiles run the matrix products as fast as
  AMX-INT8 does, and static int8 must keep its sensitive products in float, so it measured no faster), then
  static int8 in OpenVINO, then ONNX Runtime int8.
- AVX512_BF16 without AMX: static int8 in OpenVINO (``openvino-int8``: VNNI int8 dot
  products, sensitive products kept in float, cosine to fp32 >= 0.995; 1.24x OpenVINO bf16 measured on an AMD
  EPYC with AVX512_BF16), then OpenVINO, then ONNX Runtime int8.
- AVX2 without VNNI: OpenVINO (fp32 there). Static int8 is left out: without VNNI the int8 dot products
  (VPMADDUBSW) saturate at 16 bits, which puts a long or peaky text off by more than the bar (MiniLM's worst
  text at cosine 0.990, a reranker's scores off by 0.047), and the 7-bit weights that cannot overflow miss the
  bar too (MiniLM: 0.988; :attr:`CpuFeatures.int8_products_saturate`).
- VNNI without AVX512_BF16, ARM: not measured here, so the table's order is only a starting
  guess: ``auto`` times the accurate candidates on the CPU itself, once per model, and keeps the
  fastest (:mod:`m3e.backends.measurement`; a record of that timing beats the table on any CPU).
- ONNX Runtime's dynamic int8 comes last everywhere: its vectors are at cosine 0.977-0.981 to fp32 on the
  default model (-0.56 on the offline suite), under the 0.995 the other backends are held to; ``auto`` runs it
  only where OpenVINO is not installed.
- Anything else, a GPU, a pooling that reads every layer, or a model so small that the engine's fixed cost
  (export, compilation) is never paid back: torch fp32.

``m3e.load`` keeps ``backend="torch"`` as its default: its vectors are sentence-transformers' to 1e-5, the
drop-in contract. The command line (``m3e encode / serve / index / eval``) defaults to ``auto``.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m3e.backends.base import ModelParts

logger = logging.getLogger(__name__)

AUTO = "auto"
# Below this many transformer parameters the forward pass takes well under a millisecond per text in torch,
# and exporting + compiling an engine (seconds) would never be paid back by a one-off command.
TINY_MODEL_PARAMETERS = 1_000_000
# What each backend needs importable.
REQUIRES: dict[str, tuple[str, ...]] = {
    "openvino-int8": ("openvino", "nncf", "onnx"),
    "openvino": ("openvino", "onnx"),
    "int8": ("onnxruntime", "onnx"),
}
_ENGINES = ("openvino", "nncf", "onnxruntime", "onnx")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU as far as backend choice is concerned: its architecture and its /proc/cpuinfo flags."""

    arch: str
    flags: frozenset[str] = field(default_factory=frozenset)
    name: str = ""  # "model name" (x86): part of what a timing on this CPU holds for

    @property
    def family(self) -> str:
        """The feature level that decides: ``amx``, ``avx512_bf16``, ``vnni``, ``avx2``, ``arm`` or ``other``."""
        if self.arch in ("aarch64", "arm64") or self.arch.startswith("arm"):
            return "arm"
        if self.flags & {"amx_int8", "amx_bf16"}:
            return "amx"
        if "avx512_bf16" in self.flags:
            return "avx512_bf16"
        if self.flags & {"avx512_vnni", "avx_vnni"}:
            return "vnni"
        if "avx2" in self.flags:
            return "avx2"
        return "other"

    @property
    def int8_products_saturate(self) -> bool:
        """True on x86 without VNNI: int8 engines multiply uint8 activations by int8 weights with VPMADDUBSW,
        which adds each pair of products into 16 bits and saturates (255 x 127 x 2 > 32767), so a long or
        peaky input can come out wrong. Weights quantised to 7 bits (255 x 64 x 2 < 32767) cannot overflow;
        VNNI's VPDPBUSD adds into 32 bits and needs no such care."""
        x86 = self.arch in ("x86_64", "amd64", "i386", "i686", "x86")
        return x86 and not self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"}

    @classmethod
    def from_cpuinfo(cls, text: str, arch: str) -> CpuFeatures:
        """Parse the first processor's ``flags`` (x86) or ``Features`` (ARM) and ``model name`` lines."""
        flags: frozenset[str] = frozenset()
        name = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
            elif key.strip() == "model name" and not name:
                name = value.strip()
            elif not key.strip() and (flags or name):
                break  # the end of the first processor's block
        return cls(arch=arch, flags=flags, name=name)


@dataclass(frozen=True)
class Workload:
    """What is run: where, how big a model, and whether a backend's exported graph can compute it."""

    device: str = "cpu"
    parameters: int = 0
    # Poolings that read every layer's hidden states need torch: the engines export the last one only.
    all_hidden_states: bool = False
    # A cross-encoder's graph takes pairs: its static int8 (calibrated on offline pairs) measured Spearman 0.988
    # to fp32 on the rerank benchmark's pairs, below the 0.99 a reranker backend is held to, and no faster than
    # OpenVINO in bf16 (4.01x against 3.95x CrossEncoder fp32, docs/benchmarks.md): auto leaves it out.
    pairs: bool = False


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str
    # True when a fast backend would run here but its packages are missing (worth a warning)
    fallback: bool = False
    # The installed backends held to cosine >= 0.995 that could run it, in the table's order: what a timing
    # on this CPU compares (m3e.backends.measurement).
    candidates: tuple[str, ...] = ()
    # True where the table's order was not measured on this CPU family: auto times the candidates first.
    to_time: bool = False

    def __str__(self) -> str:
        return f"backend auto -> {self.backend}: {self.reason}"


_ORDER = {
    "amx": ("openvino", "openvino-int8", "int8"),
    "avx512_bf16": ("openvino-int8", "openvino", "int8"),
    "vnni": ("openvino-int8", "openvino", "int8"),
    # Without VNNI int8 products saturate, so openvino-int8's weights are 7-bit there, and then it misses its
    # cosine bar (CpuFeatures.int8_products_saturate; docs/benchmarks.md): left out of auto's choice.
    "avx2": ("openvino", "int8"),
    "arm": ("openvino", "int8"),
    "other": (),
}
# The families whose order above was measured (docs/benchmarks.md); elsewhere auto times the candidates.
MEASURED_FAMILIES = frozenset({"amx", "avx512_bf16"})
# Backends whose vectors are not held to cosine >= 0.995 to fp32: chosen only when nothing else is installed.
LOOSE = frozenset({"int8"})
_WHY = {
    "amx": "AMX: bf16 matrix units as fast as its int8 ones",
    "avx512_bf16": "AVX512_BF16 and VNNI",
    "vnni": "VNNI int8 dot products",
    "avx2": "AVX2 without VNNI",
    "arm": "ARM",
    "other": "no AVX2",
}
_WHAT = {
    "openvino-int8": "static int8 in OpenVINO, sensitive layers in bf16/fp32",
    "openvino": "OpenVINO, bf16 where the CPU has it",
    "int8": "ONNX Runtime, int8 weights",
}


def choose_backend(cpu: CpuFeatures, installed: frozenset[str], workload: Workload) -> Choice:
    """The backend ``auto`` runs ``workload`` on, and why (one line)."""
    if workload.device != "cpu":
        return Choice("torch", f"device {workload.device}: torch")
    if workload.all_hidden_states:
        return Choice("torch", "the pooling reads every layer's hidden states, which only torch returns")
    if 0 < workload.parameters < TINY_MODEL_PARAMETERS:
        return Choice(
            "torch", f"{workload.parameters:,} parameters: too small to pay back exporting an engine"
        )
    order = _ORDER[cpu.family]
    if workload.pairs:
        order = tuple(b for b in order if b != "openvino-int8")
    runnable = [b for b in order if all(m in installed for m in REQUIRES[b])]
    if runnable:
        candidates = tuple(b for b in runnable if b not in LOOSE) or tuple(runnable[:1])
        return Choice(
            runnable[0], f"{cpu.arch} CPU with {_WHY[cpu.family]}: {_WHAT[runnable[0]]}",
            candidates=candidates, to_time=len(candidates) > 1 and cpu.family not in MEASURED_FAMILIES,
        )
    if not order:
        return Choice("torch", f"{cpu.arch} CPU with {_WHY[cpu.family]}: torch fp32")
    best = order[0]
    need = " ".join(m for m in REQUIRES[best] if m not in installed)
    return Choice(
        "torch", f"no fast backend installed ({best} needs {need}): torch fp32; pip install 'm3e[fast]'", True
    )


# ---------------------------------------------------------------------------- the real inputs
def detect_cpu() -> CpuFeatures:
    """The CPU ``auto`` chooses for: the host's (tests replace this function to describe other CPUs; what the
    engines compute with stays :func:`host_cpu`)."""
    return host_cpu()


@lru_cache(maxsize=1)
def host_cpu() -> CpuFeatures:
    """The CPU this process runs on, from ``/proc/cpuinfo``."""
    arch = platform.machine().lower()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read(1 << 16)  # the first processor's block is enough
    except OSError:
        text = ""
    return CpuFeatures.from_cpuinfo(text, arch)


def installed_engines() -> frozenset[str]:
    """The inference packages importable here (found, not imported: importing OpenVINO costs a second)."""
    return frozenset(name for name in _ENGINES if importlib.util.find_spec(name) is not None)


def workload_of(model: ModelParts) -> Workload:
    from m3e.pooling import NEEDS_HIDDEN_STATES

    pooling = getattr(model, "pooling", None)
    parameters = sum(p.numel() for p in model.transformer.parameters())
    return Workload(
        device=model.device.type,
        parameters=int(parameters),
        all_hidden_states=pooling in NEEDS_HIDDEN_STATES,
        pairs=model.artefact_output != "last_hidden_state",
    )
