"""m3e: Chinese-first bilingual text embeddings.

``m3e.load`` is the entry point: it returns an :class:`EmbeddingModel` that encodes texts to
vectors equal to sentence-transformers' for the same checkpoint. Heavy optional parts
(training, evaluation, serving) are imported only when used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Idle OpenMP workers that spin steal the cores from the next forward pass; on a small or shared
# CPU that made single-query encoding up to 25x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "BGEM3Model", "EmbeddingModel", "FineTuner", "M3EError", "RerankFineTuner", "Reranker", "__version__", "load",
    "load_bge_m3", "load_reranker",
]

from m3e.errors import M3EError
from m3e.version import __version__

if TYPE_CHECKING:
    from m3e.bge_m3 import BGEM3Model
    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker
    from m3e.training.finetuner import FineTuner
    from m3e.training.rerank import RerankFineTuner


def load(name_or_path: str | None = None, **kwargs: Any) -> EmbeddingModel:
    """Load a model by local path or hub id (``None``: the project's default model).

    See :func:`m3e.loading.load_model` for the keyword arguments.
    """
    from m3e.loading import load_model

    return load_model(name_or_path, **kwargs)


def load_reranker(name_or_path: str | None = None, **kwargs: Any) -> Reranker:
    """Load a cross-encoder reranker by local path or hub id (``None``: the default reranker); see
    :func:`m3e.loading.load_reranker`."""
    from m3e.loading import load_reranker as _load_reranker

    return _load_reranker(name_or_path, **kwargs)


def load_bge_m3(name_or_path: str, **kwargs: Any) -> BGEM3Model:
    """Load a BGE-M3 checkpoint with its three outputs (dense, lexical weights, ColBERT vectors); see
    :func:`m3e.loading.load_bge_m3`. ``m3e.load`` of the same checkpoint gives the dense side alone."""
    from m3e.loading import load_bge_m3 as _load_bge_m3

    return _load_bge_m3(name_or_path, **kwargs)


def __getattr__(name: str) -> Any:
    # Lazy attributes keep `import m3e` light: no torch until a model is used.
    if name == "EmbeddingModel":
        from m3e.model import EmbeddingModel

        return EmbeddingModel
    if name == "Reranker":
        from m3e.reranker import Reranker

        return Reranker
    if name == "BGEM3Model":
        from m3e.bge_m3 import BGEM3Model

        return BGEM3Model
    if name == "FineTuner":
        from m3e.training.finetuner import FineTuner

        return FineTuner
    if name == "RerankFineTuner":
        from m3e.training.rerank import RerankFineTuner

        return RerankFineTuner
    raise AttributeError(f"module 'm3e' has no attribute {name!r}")
