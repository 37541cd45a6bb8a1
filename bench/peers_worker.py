"""One engine in its own process, for bench/peers.py: reads JSON commands on stdin, answers one JSON line each.

Runs under a peer's virtualenv (sentence-transformers, infinity-emb, fastembed) or m3e's own, and imports only
what its engine needs. Commands: ``load`` (engine, model directory, threads, calibration texts), ``encode``
(texts, batch size: seconds and the vectors, written to an .npy file), ``single`` (texts one at a time:
seconds each), ``quit``. Anything a library prints goes to stderr; stdout carries the answers only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

_OUT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # libraries that print go to stderr


def _unit(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


class Engine:
    def encode(self, texts: list[str], batch: int) -> np.ndarray:
        raise NotImplementedError


class M3E(Engine):
    def __init__(self, model: str, backend: str, options: dict[str, Any]) -> None:
        import m3e

        self.model = m3e.load(model, backend=backend)
        self.info = {"backend": self.model.backend, "runner": repr(self.model._runner)}

    def encode(self, texts: list[str], batch: int) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch)


class SentenceTransformers(Engine):
    """sentence-transformers' documented backends: torch, onnx (+ dynamic qint8 export), openvino (+ static
    qint8 through optimum-intel's quantizer, calibrated on the texts given)."""

    def __init__(self, model: str, backend: str, options: dict[str, Any]) -> None:
        import sentence_transformers
        from sentence_transformers import SentenceTransformer

        work = Path(options["work"])
        base, _, quant = backend.partition("-")
        kwargs: dict[str, Any] = {}
        if base == "torch":
            st = SentenceTransformer(model, device="cpu")
        elif quant == "qint8" and base == "onnx":
            from sentence_transformers import export_dynamic_quantized_onnx_model

            exported = work / "st-onnx"
            if not (exported / "onnx" / "model_qint8_avx512_vnni.onnx").exists():
                SentenceTransformer(model, device="cpu", backend="onnx").save(str(exported))
                export_dynamic_quantized_onnx_model(
                    SentenceTransformer(str(exported), device="cpu", backend="onnx"), options["qconfig"], str(exported)
                )
            kwargs = {"file_name": f"onnx/model_qint8_{options['qconfig']}.onnx"}
            st = SentenceTransformer(str(exported), device="cpu", backend="onnx", model_kwargs=kwargs)
        elif quant == "qint8" and base == "openvino":
            exported = work / "st-openvino-qint8"
            if not (exported / "openvino" / "openvino_model_qint8_quantized.xml").exists():
                _openvino_static_qint8(SentenceTransformer(model, device="cpu", backend="openvino"), exported,
                                       options["calibration"])
            kwargs = {"file_name": "openvino/openvino_model_qint8_quantized.xml"}
            st = SentenceTransformer(str(exported), device="cpu", backend="openvino", model_kwargs=kwargs)
        else:
            st = SentenceTransformer(model, device="cpu", backend=base)
        self.st = st
        self.info = {"sentence-transformers": sentence_transformers.__version__, **kwargs}

    def encode(self, texts: list[str], batch: int) -> np.ndarray:
        return _unit(self.st.encode(texts, batch_size=batch, normalize_embeddings=True))


def _openvino_static_qint8(st: Any, out: Path, calibration: list[str]) -> None:
    """What sentence_transformers.export_static_quantized_openvino_model does, with the calibration texts
    given here instead of a dataset downloaded from the hub."""
    import datasets
    from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer

    st.save(str(out))
    ov_model = st[0].auto_model
    quantizer = OVQuantizer.from_pretrained(ov_model)
    encoded = st.tokenizer(calibration, padding="max_length", max_length=128, truncation=True)
    dataset = datasets.Dataset.from_dict(dict(encoded))
    quantizer.quantize(
        ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(calibration))),
        calibration_dataset=dataset,
        save_directory=str(out / "openvino_qint8_tmp"),
    )
    target = out / "openvino"
    target.mkdir(exist_ok=True)
    saved = next((out / "openvino_qint8_tmp").rglob("openvino_model.xml")).parent  # optimum-intel's layout varies
    for suffix in ("xml", "bin"):
        (saved / f"openvino_model.{suffix}").rename(target / f"openvino_model_qint8_quantized.{suffix}")


class FastEmbed(Engine):
    """fastembed's TextEmbedding over the model's ONNX export, registered as a custom model (mean pooling)."""

    def __init__(self, model: str, backend: str, options: dict[str, Any]) -> None:
        import fastembed
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        name = "m3e-bench/default"
        TextEmbedding.add_custom_model(
            model=name, pooling=PoolingType.MEAN, normalization=True, sources=ModelSource(hf=name),
            dim=int(options["dim"]), model_file="model.onnx",
        )
        self.te = TextEmbedding(model_name=name, specific_model_path=options["onnx_dir"],
                                threads=int(options["threads"]))
        self.info = {"fastembed": fastembed.__version__}

    def encode(self, texts: list[str], batch: int) -> np.ndarray:
        return _unit(list(self.te.embed(texts, batch_size=batch)))


class Infinity(Engine):
    """infinity-emb's engine (optimum: ONNX Runtime, its own qint8 export), through its Python API."""

    def __init__(self, model: str, backend: str, options: dict[str, Any]) -> None:
        import asyncio

        import infinity_emb
        from infinity_emb import AsyncEmbeddingEngine, EngineArgs

        self.loop = asyncio.new_event_loop()
        args = EngineArgs(model_name_or_path=options["infinity_dir"], engine=backend, device="cpu",
                          batch_size=32, bettertransformer=False, model_warmup=False)
        self.engine = AsyncEmbeddingEngine.from_args(args)
        self.loop.run_until_complete(self.engine.astart())
        self.info = {"infinity-emb": infinity_emb.__version__}

    def encode(self, texts: list[str], batch: int) -> np.ndarray:
        vectors, _ = self.loop.run_until_complete(self.engine.embed(sentences=texts))
        return _unit(vectors)


KINDS = {"m3e": M3E, "st": SentenceTransformers, "fastembed": FastEmbed, "infinity": Infinity}


def main() -> None:
    engine: Engine | None = None
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "load":
                threads = int(command["threads"])
                try:
                    import torch

                    torch.set_num_threads(threads)
                except ImportError:
                    pass
                # a copy whose tokenizer files transformers 4 reads, for the peers still on it
                model = command["options"].get("model_dir") or command["model"]
                engine = KINDS[command["kind"]](model, command["backend"], command["options"])
                answer: dict[str, Any] = {"ok": True, "info": getattr(engine, "info", {})}
            elif op == "encode":
                assert engine is not None
                started = time.perf_counter()
                vectors = engine.encode(command["texts"], int(command["batch"]))
                seconds = time.perf_counter() - started
                if command.get("save"):
                    np.save(command["save"], np.asarray(vectors, dtype=np.float32))
                answer = {"ok": True, "seconds": seconds}
            elif op == "single":
                assert engine is not None
                latencies = []
                for text in command["texts"]:
                    started = time.perf_counter()
                    engine.encode([text], 1)
                    latencies.append(time.perf_counter() - started)
                answer = {"ok": True, "latencies": latencies}
            else:
                break
        except Exception as exc:
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}
        _OUT.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
