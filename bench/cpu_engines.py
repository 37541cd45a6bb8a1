"""CPU engine candidates for fast inference, forward pass only, same token batches, one run.

    python bench/cpu_engines.py [--model PATH] [--repeats 5] [--threads 2] [--work DIR]

Times the transformer forward (tokenised once; no pooling) of: torch fp32 and bf16 autocast,
ONNX Runtime int8 (m3e's int8 backend: fused graph, dynamic quantisation), OpenVINO fp32 / bf16
(m3e's openvino backend), OpenVINO with int8 weights and per-group dynamic activation
quantisation, and OpenVINO running statically quantised QDQ graphs (ONNX Runtime's MinMax
calibrator on offline-data texts). Batches: 32 short queries (~15 tokens), 32 passages
(~128 tokens), one query. Prints ms per forward, the ratio to torch fp32 and the mean cosine
of mean-pooled vectors to torch fp32. Needs openvino and the offline data (`m3e data build`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (docs/benchmarks.md)

import numpy as np

Features = dict[str, np.ndarray]


def texts(tokenizer) -> tuple[list[str], list[str], list[str]]:  # type: ignore[no-untyped-def]
    from m3e.data.paths import data_dir

    rng = random.Random(0)
    pairs = json.loads((data_dir() / "tasks" / "HSKBitextMining" / "full.json").read_text(encoding="utf-8"))["pairs"]
    pool = [p["sentence1"] for p in pairs] + [p["sentence2"] for p in pairs]
    with open(data_dir() / "distill" / "news_paragraphs.jsonl", encoding="utf-8") as fh:
        paragraphs = [json.loads(line)["text"] for _, line in zip(range(2000), fh, strict=False)]
    queries = [rng.choice(pool) for _ in range(32)]
    passages = [p for p in paragraphs if 100 < len(tokenizer(p)["input_ids"]) < 140][:32]
    calibration = [rng.choice(pool) for _ in range(64)] + paragraphs[500:564]
    return queries, passages, calibration


def static_qdq(src: Path, dst: Path, calibration: list[Features], nodes: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.rows = iter(calibration)

        def get_next(self) -> Features | None:
            return next(self.rows, None)

        def rewind(self) -> None:
            self.rows = iter(calibration)

    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def int8_weights(src: Path, dst: Path, nodes: set[str]) -> None:
    """Weight-only int8 (one scale per output channel) as DequantizeLinear -> MatMul, the pattern OpenVINO
    compiles to int8-weight kernels with dynamic activation quantisation."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes_out = []
    for node in graph.node:
        if node.name in nodes:
            name = next(x for x in node.input if x in inits)
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            scale = np.abs(w).max(axis=0) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            graph.initializer.remove(inits[name])
            graph.initializer.extend([numpy_helper.from_array(q, name + "_q"),
                                      numpy_helper.from_array(scale.astype(np.float32), name + "_s"),
                                      numpy_helper.from_array(np.zeros_like(q[0]), name + "_z")])
            nodes_out.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name],
                                              axis=1, name=name + "_dq"))
        nodes_out.append(node)
    del graph.node[:]
    graph.node.extend(nodes_out)
    onnx.save(model, str(dst))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="where the graphs are written (default: a temporary directory)")
    args = parser.parse_args()

    import tempfile

    import onnxruntime as ort
    import openvino as ov
    import torch

    import m3e
    from m3e.backends import artefacts
    from m3e.backends import onnx_int8 as oi

    torch.set_num_threads(args.threads)
    model = m3e.load(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="m3e-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    tok = model.tokenizer

    def feats(batch: list[str], padding: str | bool = True) -> Features:
        f = tok(batch, padding=padding, truncation=True, max_length=128, return_tensors="np")
        return {"input_ids": f["input_ids"].astype(np.int64), "attention_mask": f["attention_mask"].astype(np.int64)}

    queries, passages, calibration_texts = texts(tok)
    batches = {"q": feats(queries), "p": feats(passages), "1": feats(queries[:1])}
    calibration = [feats(calibration_texts[i : i + 8], "max_length") for i in range(0, len(calibration_texts), 8)]

    plain, fused, dynamic = work / "plain.onnx", work / "fused.onnx", work / "int8_dynamic.onnx"
    artefacts.export_fp32_onnx(model, plain)
    oi.fuse(plain, fused, model.transformer.config)
    oi.quantize(fused, dynamic)
    layers = oi.weight_matmuls_by_layer(plain)
    first = min(layers)
    later = [n for layer, names in layers.items() if layer != first for n in names]
    ffn_out = [n for n in later if n.endswith("output/dense/MatMul") and "attention" not in n]
    static_qdq(plain, work / "static_all.onnx", calibration, later)
    static_qdq(plain, work / "static_no_ffn_out.onnx", calibration, [n for n in later if n not in ffn_out])
    int8_weights(plain, work / "int8_weights.onnx", {n for names in layers.values() for n in names})

    def torch_engine(bf16: bool) -> Callable[[Features], np.ndarray]:
        transformer = model.transformer.eval()

        def run(f: Features) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = transformer(input_ids=torch.from_numpy(f["input_ids"]), attention_mask=torch.from_numpy(f["attention_mask"]))
            return out.last_hidden_state.float().numpy()

        return run

    def ort_engine(path: Path) -> Callable[[Features], np.ndarray]:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda f: session.run(["last_hidden_state"], f)[0]

    core = ov.Core()

    def ov_engine(path: Path, precision: str, group: int = 0) -> Callable[[Features], np.ndarray]:
        config = {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": precision,
                  "PERFORMANCE_HINT": "LATENCY", "DYNAMIC_QUANTIZATION_GROUP_SIZE": group}
        request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()
        return lambda f: next(iter(request.infer(f).values())).copy()

    engines = {
        "torch fp32": torch_engine(False),
        "torch bf16 autocast (m3e bf16)": torch_engine(True),
        "ORT int8 dynamic, fused (m3e int8)": ort_engine(dynamic),
        "OpenVINO fp32": ov_engine(plain, "f32"),
        "OpenVINO bf16 (m3e openvino)": ov_engine(plain, "bf16"),
        "OpenVINO int8 weights, dyn. act. g128": ov_engine(work / "int8_weights.onnx", "f32", 128),
        "OpenVINO int8 weights, dyn. act. g128, bf16": ov_engine(work / "int8_weights.onnx", "bf16", 128),
        "OpenVINO static int8 (all but layer 0)": ov_engine(work / "static_all.onnx", "f32"),
        "OpenVINO static int8 (no FFN out), bf16": ov_engine(work / "static_no_ffn_out.onnx", "bf16"),
    }

    def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask[..., None].astype(np.float32)
        v = (hidden * m).sum(1) / m.sum(1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    reference = {k: pooled(engines["torch fp32"](f), f["attention_mask"]) for k, f in batches.items()}
    cosine, times = {}, {name: {k: [] for k in batches} for name in engines}
    for name, run in engines.items():
        cosine[name] = [float((pooled(run(batches[k]), batches[k]["attention_mask"]) * reference[k]).sum(1).mean()) for k in "qp"]
    calls = {"q": 3, "p": 1, "1": 10}
    for _ in range(args.repeats):  # interleaved: the machine is shared
        for name, run in engines.items():
            for key, f in batches.items():
                started = time.perf_counter()
                for _ in range(calls[key]):
                    run(f)
                times[name][key].append((time.perf_counter() - started) / calls[key])
    base = {k: statistics.median(times["torch fp32"][k]) for k in batches}
    shapes = ", ".join(f"{k} {tuple(f['input_ids'].shape)}" for k, f in batches.items())
    print(f"model {model.name}; {args.threads} threads; shapes {shapes}; median of {args.repeats}; load {os.getloadavg()[0]:.1f}")
    print("\n| engine | 32 queries ms | x | 32 passages ms | x | 1 query ms | x | cosine q / p |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in engines:
        m = {k: statistics.median(times[name][k]) for k in batches}
        cells = " | ".join(f"{m[k] * 1e3:.1f} | {base[k] / m[k]:.2f}" for k in batches)
        print(f"| {name} | {cells} | {cosine[name][0]:.4f} / {cosine[name][1]:.4f} |")


if __name__ == "__main__":
    main()
