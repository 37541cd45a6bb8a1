"""Resolve the model an adapter wraps: an EmbeddingModel, a name/path, or the default."""

from __future__ import annotations

from typing import Any


def resolve_model(model: Any = None, **load_kw: Any) -> Any:
    if model is None or isinstance(model, str) or hasattr(model, "__fspath__"):
        import m3e

        return m3e.load(None if model is None else str(model), **load_kw)
    if not hasattr(model, "encode_queries") or not hasattr(model, "encode_documents"):
        raise TypeError(f"expected an m3e EmbeddingModel, a model name or a path, not {type(model).__name__}")
    return model
