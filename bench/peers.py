"""m3e against its peers' best configurations on this CPU, each engine in its own process and virtualenv.

    .venv/bin/python bench/peers.py [--quick] [--peers st-openvino,st5-onnx,st5-openvino,infinity,fastembed]
                                    [--m3e auto,torch,openvino,openvino-int8,int8] [--threads 2] [--json out.json]

1. One virtualenv per peer under ``~/.cache/m3e/bench/peers/<name>`` (created once; this interpreter's CPU torch
   is copied in, so pip keeps it instead of downloading a CUDA build): sentence-transformers 6.3 (torch, its
   openvino extra), sentence-transformers 5.7 (its onnx and openvino extras: 6.x's onnx extra cannot be
   installed), infinity-emb (optimum), fastembed. A peer that cannot be installed is reported and
   left out; the run goes on.
2. Each engine exports the model the peer's own documented way (sentence-transformers' ``backend=``,
   ``export_dynamic_quantized_onnx_model``; static qint8 through optimum-intel's quantizer as
   ``export_static_quantized_openvino_model`` does, calibrated on texts of m3e's offline training data, never on
   the benchmark texts), in a persistent worker process (``bench/peers_worker.py``).
3. Rounds: warm-up rounds, then measured rounds, the engines' order rotated each round. Per engine and round:
   256 short mixed queries (HSK sentences, Chinese and English) and 64 passages of 200-400 characters (news
   paragraphs and the retrieval tasks' articles and insurance answers),
   batch 32, texts/s; one text at a time, seconds each. Ratios are to sentence-transformers torch fp32 in the
   same round (median over rounds); single-text p50 likewise; cosine min of every vector to its torch fp32 one.
4. Prints the table and the CPU's flags (docs/benchmarks.md keeps the runs).

``--quick``: 64 queries, 16 passages, 1 + 2 rounds, 10 single texts. Needs the offline data (``m3e data build``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

WORKER = Path(__file__).with_name("peers_worker.py")
# sentence-transformers 6.x for torch and OpenVINO; its ONNX extra cannot be installed (optimum-onnx pins
# transformers < 4.58, sentence-transformers 6 needs >= 5), so the ONNX and static-qint8 exports run on 5.7, the last
# release whose extras install.
ST6, ST5 = "6.3.0", "5.7.0"
# venv name -> (requirements, copy this interpreter's torch into it)
VENVS: dict[str, tuple[list[str], bool]] = {
    "st": ([f"sentence-transformers=={ST6}"], True),
    "st-openvino": ([f"sentence-transformers[openvino]=={ST6}"], True),
    "st5-onnx": ([f"sentence-transformers[onnx]=={ST5}"], True),
    # pip pairs 5.7's optimum-intel with an OpenVINO that no longer has openvino.runtime, which it imports
    "st5-openvino": ([f"sentence-transformers[openvino]=={ST5}", "openvino<2026", "datasets"], True),
    "infinity": (["infinity-emb[optimum]==0.0.78"], True),
    "fastembed": (["fastembed==0.9.1"], False),
}
REFERENCE = f"sentence-transformers {ST6}, torch fp32"


@dataclass
class EngineSpec:
    name: str
    venv: str | None  # None: m3e's own interpreter
    kind: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)


def engines(peers: list[str], m3e_backends: list[str], qconfig: str) -> list[EngineSpec]:
    out = [EngineSpec(REFERENCE, "st", "st", "torch")]
    if "st-openvino" in peers:
        out.append(EngineSpec(f"sentence-transformers {ST6}, OpenVINO", "st-openvino", "st", "openvino"))
    if "st5-onnx" in peers:
        out += [EngineSpec(f"sentence-transformers {ST5}, ONNX", "st5-onnx", "st", "onnx"),
                EngineSpec(f"sentence-transformers {ST5}, ONNX qint8 ({qconfig})", "st5-onnx", "st", "onnx-qint8",
                           {"qconfig": qconfig})]
    if "st5-openvino" in peers:
        out.append(EngineSpec(f"sentence-transformers {ST5}, OpenVINO static qint8", "st5-openvino", "st",
                              "openvino-qint8"))
    if "infinity" in peers:
        out.append(EngineSpec("infinity-emb, optimum", "infinity", "infinity", "optimum"))
    if "fastembed" in peers:
        out.append(EngineSpec("fastembed, ONNX", "fastembed", "fastembed", "onnx"))
    out += [EngineSpec(f"m3e {b}" + (" (the command line's default)" if b == "auto" else ""), None, "m3e", b)
            for b in m3e_backends]
    return out


# ---------------------------------------------------------------------------- virtualenvs
def venv_python(root: Path, name: str) -> Path:
    """The venv's python, creating the venv and installing the peer first when needed."""
    requirements, copy_torch = VENVS[name]
    venv = root / name
    python = venv / "bin" / "python"
    marker = venv / f".installed-{hashlib.sha1(json.dumps(requirements).encode()).hexdigest()[:10]}"
    if python.exists() and marker.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if copy_torch:
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        ours = Path(sysconfig.get_paths()["purelib"])
        for entry in [*ours.glob("torch"), *ours.glob("torchgen"), *ours.glob("torch-*.dist-info")]:
            shutil.copytree(entry, site / entry.name, symlinks=True)
    print(f"installing {' '.join(requirements)} into {venv} ...", file=sys.stderr)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements],
                          capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.startswith("ERROR") or "depends on" in line]
        raise RuntimeError(f"pip install {' '.join(requirements)} failed: {' / '.join(said)[:600]}")
    marker.touch()
    return python


# ---------------------------------------------------------------------------- workers
class Worker:
    def __init__(self, spec: EngineSpec, python: Path, log: Path, threads: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "M3E_NUM_THREADS": str(threads),
               "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
        self.spec = spec
        self.log = log.open("w")
        self.proc = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.spec.name}: worker exited (see {self.log.name})")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"{self.spec.name}: {answer.get('error')} (see {self.log.name})")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------------------- texts and models
def bench_texts(n_queries: int, n_passages: int) -> tuple[list[str], list[str]]:
    import random

    from m3e.data.paths import data_dir

    rng = random.Random(0)
    pairs = json.loads((data_dir() / "tasks" / "HSKBitextMining" / "full.json").read_text(encoding="utf-8"))["pairs"]
    pool = [p["sentence1"] for p in pairs] + [p["sentence2"] for p in pairs]
    with open(data_dir() / "distill" / "news_paragraphs.jsonl", encoding="utf-8") as fh:
        paragraphs = [json.loads(line)["text"] for line in fh]
    # the retrieval tasks' documents too: the news paragraphs hold only ~40 of 200-400 characters
    for task in ("NewsHeadlineRetrieval", "InsuranceQARetrieval"):
        corpus = json.loads((data_dir() / "tasks" / task / "full.json").read_text(encoding="utf-8"))
        paragraphs += [doc["text"] for doc in corpus["corpus"]]
    queries = [rng.choice(pool) for _ in range(n_queries)]
    passages = [p for p in paragraphs if 200 <= len(p) <= 400][:n_passages]
    return queries, passages


def onnx_dir(model_dir: Path, out: Path) -> Path:
    """The model's fp32 ONNX export with its tokenizer files (what fastembed loads as a custom model)."""
    import m3e
    from m3e.backends import artefacts

    if (out / "model.onnx").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    artefacts.export_fp32_onnx(m3e.load(str(model_dir)), out / "model.onnx")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    return out


def cpu_line() -> str:
    from m3e.backends.selection import detect_cpu

    cpu = detect_cpu()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{model}; {os.cpu_count()} CPUs; {cpu.family}; flags: {' '.join(f for f in wanted if f in cpu.flags)}"


# ---------------------------------------------------------------------------- run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 queries, 16 passages, 1 + 2 rounds")
    parser.add_argument("--peers", default=",".join(VENVS), help="peer venvs to include (st is always in)")
    parser.add_argument("--m3e", default="auto,torch,openvino,openvino-int8,int8", help="m3e backends")
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "m3e" / "bench" / "peers")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()

    from m3e.backends.openvino_int8 import calibration_texts
    from m3e.backends.selection import detect_cpu
    from m3e.paths import default_model_path

    model_dir = Path(args.model or default_model_path()).resolve()
    n_q, n_p, warm, rounds, n_single = (64, 16, 1, 2, 10) if args.quick else (256, 64, 5, 7, 30)
    queries, passages = bench_texts(n_q, n_p)
    calibration, source = calibration_texts()
    assert not set(calibration) & set(queries + passages), "calibration must not see the benchmark texts"
    flags = detect_cpu().flags
    qconfig = "avx512_vnni" if "avx512_vnni" in flags else "avx2"
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    specs = engines(peers, [b.strip() for b in args.m3e.split(",") if b.strip()], qconfig)
    args.work.mkdir(parents=True, exist_ok=True)
    venvs = args.work / "venvs"
    common = {"work": str(args.work), "calibration": calibration, "threads": args.threads}
    if "fastembed" in peers or "infinity" in peers:
        common["onnx_dir"] = str(onnx_dir(model_dir, args.work / "onnx-model"))
    sys.path.insert(0, str(Path(__file__).parent))
    from serve_load import infinity_model_dir

    # transformers 4 (sentence-transformers 5.7, infinity) reads the tokenizer of a copy whose class is renamed
    transformers4_dir = str(infinity_model_dir(str(model_dir), args.work / "model-transformers4"))
    for spec in specs:
        if spec.venv in ("st5-onnx", "st5-openvino"):
            spec.options["model_dir"] = transformers4_dir
    if "infinity" in peers:
        # its optimum engine looks for an ONNX file in the model directory and exports none itself
        infinity_dir = infinity_model_dir(str(model_dir), args.work / "infinity-model")
        shutil.copy(Path(common["onnx_dir"]) / "model.onnx", infinity_dir / "model.onnx")
        common["infinity_dir"] = str(infinity_dir)

    workers: list[Worker] = []
    skipped: dict[str, str] = {}
    failed_venvs: dict[str, str] = {}
    for spec in specs:
        try:
            if spec.venv in failed_venvs:
                raise RuntimeError(failed_venvs[spec.venv])
            try:
                python = Path(sys.executable) if spec.venv is None else venv_python(venvs, spec.venv)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                failed_venvs[str(spec.venv)] = str(exc)
                raise
            worker = Worker(spec, python, args.work / f"{spec.name.replace(' ', '_').replace(',', '')}.log",
                            args.threads)
            started = time.perf_counter()
            options = {**common, **spec.options, "dim": 384}
            info = worker.call(op="load", kind=spec.kind, model=str(model_dir), backend=spec.backend,
                               threads=args.threads, options=options)["info"]
            print(f"loaded {spec.name} in {time.perf_counter() - started:.1f}s {info}", file=sys.stderr)
            workers.append(worker)
        except Exception as exc:  # a peer that cannot be installed or loaded: said, and left out
            skipped[spec.name] = str(exc).splitlines()[0][:300]
            print(f"skipped {spec.name}: {skipped[spec.name]}", file=sys.stderr)
            if spec.name == REFERENCE:
                raise SystemExit(f"the reference engine could not run: {exc}") from exc
    names = [w.spec.name for w in workers]
    tps: dict[str, dict[str, list[float]]] = {n: {"q": [], "p": [], "1": []} for n in names}
    vectors_dir = args.work / "vectors"
    vectors_dir.mkdir(exist_ok=True)
    for r in range(warm + rounds):
        order = workers[r % len(workers):] + workers[: r % len(workers)]
        for worker in order:
            name = worker.spec.name
            save = r == warm
            key = hashlib.sha1(name.encode()).hexdigest()[:8]
            q = worker.call(op="encode", texts=queries, batch=args.batch,
                            save=str(vectors_dir / f"{key}-q.npy") if save else None)["seconds"]
            p = worker.call(op="encode", texts=passages, batch=args.batch,
                            save=str(vectors_dir / f"{key}-p.npy") if save else None)["seconds"]
            one = worker.call(op="single", texts=queries[:n_single])["latencies"]
            if r >= warm:
                tps[name]["q"].append(len(queries) / q)
                tps[name]["p"].append(len(passages) / p)
                tps[name]["1"].append(statistics.median(one))
        print(f"round {r + 1}/{warm + rounds} done (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    for worker in workers:
        worker.close()

    def vectors(name: str) -> np.ndarray:
        key = hashlib.sha1(name.encode()).hexdigest()[:8]
        return np.concatenate([np.load(vectors_dir / f"{key}-q.npy"), np.load(vectors_dir / f"{key}-p.npy")])

    reference = vectors(REFERENCE)
    rows = []
    for name in names:
        ratio = {k: statistics.median(a / b for a, b in zip(tps[name][k], tps[REFERENCE][k], strict=True))
                 for k in ("q", "p")}
        single = statistics.median(a / b for a, b in zip(tps[name]["1"], tps[REFERENCE]["1"], strict=True))
        mine = vectors(name)
        cosine = float(((mine * reference).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(reference, axis=1)).min())
        rows.append({"engine": name, "queries_x": round(ratio["q"], 2), "passages_x": round(ratio["p"], 2),
                     "single_p50_x": round(single, 2), "single_p50_ms": round(statistics.median(tps[name]["1"]) * 1e3, 2),
                     "queries_per_s": round(statistics.median(tps[name]["q"]), 1),
                     "passages_per_s": round(statistics.median(tps[name]["p"]), 1), "cosine_min": round(cosine, 5)})
    print(f"\n{cpu_line()}")
    print(f"model {model_dir.name}; {len(queries)} queries, {len(passages)} passages, batch {args.batch}, "
          f"{args.threads} threads; {warm} + {rounds} rounds, order rotated; calibration: {source}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("\n| engine | queries x | passages x | single-text p50 x | cosine min |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['engine']} | {row['queries_x']:.2f} | {row['passages_x']:.2f} | {row['single_p50_x']:.2f} | "
              f"{row['cosine_min']:.5f} |")
    for name, why in skipped.items():
        print(f"| {name} | not run: {why} | | | |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_line(), "rows": rows, "skipped": skipped}, indent=2))


if __name__ == "__main__":
    main()
