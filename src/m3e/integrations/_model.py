"""Resolve the model an adapter wraps: an EmbeddingModel, a name/path, or the default."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias

    from m3e.model import EmbeddingModel

    # What an adapter accepts as its model: a loaded model, a hub id or local path, or None (the default model).
    ModelSpec: TypeAlias = EmbeddingModel | str | os.PathLike[str] | None


def resolve_model(model: ModelSpec = None, **load_kw: Any) -> EmbeddingModel:
    if model is None or isinstance(model, (str, os.PathLike)):
        from m3e.loading import load_model  # lazily: importing an adapter does not load torch

        return load_model(None if model is None else str(model), **load_kw)
    if not hasattr(model, "encode_queries") or not hasattr(model, "encode_documents"):
        raise TypeError(f"expected an m3e EmbeddingModel, a model name or a path, not {type(model).__name__}")
    return model
