"""`m3e export MODEL --backend int8|openvino`: write the optimised inference artefact next to a model.

The artefact (``MODEL/m3e-int8/``: the int8 ONNX graph and its meta.json) makes later
``m3e.load(MODEL, backend="int8")`` calls load it directly instead of converting the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from m3e.backends import ARTEFACT_BACKENDS

if TYPE_CHECKING:
    from m3e.backends.base import ModelParts

# A few mixed Chinese/English texts for the check printed after an export.
_CHECK_TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "The weather is nice today, let's take a walk in the park.",
    "保险理赔需要准备哪些材料？",
    "What documents do I need for an insurance claim?",
    "向量检索模型把句子表示成向量，再用余弦相似度比较它们。",
    "北京和上海是中国最大的城市 Beijing and Shanghai are the largest cities",
    "笔记本电脑",
    "A laptop with a good price for students.",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--backend", choices=ARTEFACT_BACKENDS, default="int8", help="artefact to build (default: int8)")
    parser.add_argument("--out", default=None,
                        help="write here instead of MODEL/m3e-int8 or MODEL/m3e-openvino (then it is not found on load)")
    parser.add_argument("--force", action="store_true", help="rebuild even when an up-to-date artefact exists")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip comparing the backend's vectors with fp32 on a few texts")


def run(args: argparse.Namespace) -> int:
    from m3e.backends import runner_for_artefact
    from m3e.loading import is_reranker_dir, load_model, resolve_model_dir

    if args.model is not None and is_reranker_dir(resolve_model_dir(args.model)[0]):
        return _export_reranker(args)
    model = load_model(args.model)
    target = _export(model, args)
    if args.check:
        import numpy as np

        reference = model.encode(_CHECK_TEXTS)
        model.use_runner(args.backend, runner_for_artefact(args.backend, target))
        optimised = model.encode(_CHECK_TEXTS)
        cos = (reference * optimised).sum(axis=1)
        print(f"cosine {args.backend} vs fp32 on {len(cos)} texts: mean {np.mean(cos):.4f}, min {np.min(cos):.4f}", file=sys.stderr)
    return 0


def _export(model: ModelParts, args: argparse.Namespace) -> Path:
    """Build the ``--backend`` artefact of ``model`` and say where, how large and how long it took."""
    from m3e.backends import export_artefact

    started = time.perf_counter()
    target = export_artefact(model, args.out, force=args.force, kind=args.backend)
    size = sum(f.stat().st_size for f in target.iterdir() if f.is_file()) / 2**20
    print(f"wrote {target} ({size:.1f} MiB, {time.perf_counter() - started:.1f}s)", file=sys.stderr)
    return target


def _export_reranker(args: argparse.Namespace) -> int:
    """A cross-encoder's artefact (its logits graph), checked by the scores of (query, document) pairs."""
    import numpy as np

    from m3e.backends import runner_for_artefact
    from m3e.loading import load_reranker

    reranker = load_reranker(args.model)
    target = _export(reranker, args)
    if args.check:
        pairs = [(q, d) for q in _CHECK_TEXTS[:2] for d in _CHECK_TEXTS]
        reference = np.asarray(reranker.predict(pairs))
        reranker.use_runner(args.backend, runner_for_artefact(args.backend, target))
        optimised = np.asarray(reranker.predict(pairs))
        same_order = bool((np.argsort(-reference) == np.argsort(-optimised)).all())
        print(f"scores {args.backend} vs fp32 on {len(pairs)} pairs: max difference "
              f"{np.abs(reference - optimised).max():.4f}, same order: {'yes' if same_order else 'no'}", file=sys.stderr)
    return 0
