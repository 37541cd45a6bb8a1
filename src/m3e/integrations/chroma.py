"""A Chroma embedding function backed by an m3e model.

    import chromadb
    from m3e.integrations.chroma import M3EEmbeddingFunction
    collection = chromadb.Client().create_collection("docs", embedding_function=M3EEmbeddingFunction("path/to/model"))

It follows Chroma's ``EmbeddingFunction`` protocol (``__call__(input)`` returning one float32
vector per document, ``embed_query``, ``name``, ``get_config`` / ``build_from_config``,
``default_space`` / ``supported_spaces``) without importing chromadb, so it works with
chromadb installed and is testable without it. When chromadb is importable the class is
also registered as Chroma's ``m3e`` embedding function, so a persisted collection can
rebuild it from its stored config.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3e.integrations._model import resolve_model

if TYPE_CHECKING:
    from m3e.integrations._model import ModelSpec

NAME = "m3e"


class M3EEmbeddingFunction:
    def __init__(self, model: ModelSpec = None, *, batch_size: int = 32, normalize: bool = True, **load_kw: Any):
        # What get_config stores, so that a persisted collection can load the same model again.
        self._model_arg = _model_reference(model)
        self._load_kw = dict(load_kw)
        self.model = resolve_model(model, **load_kw)
        self.batch_size = batch_size
        self.normalize = normalize

    # ------------------------------------------------------------------ embedding
    def __call__(self, input: str | Sequence[str]) -> list[np.ndarray]:
        """Embed documents (Chroma passes a list of strings as ``input``)."""
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            return []
        vectors: np.ndarray = self.model.encode_documents(
            texts, batch_size=self.batch_size, normalize=self.normalize, show_progress=False
        )
        return [np.asarray(v, dtype=np.float32) for v in vectors]

    def embed_query(self, input: str | Sequence[str]) -> list[np.ndarray]:
        """Embed queries with the model's query prompt (Chroma >= 1.0 calls this for queries)."""
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            return []
        vectors: np.ndarray = self.model.encode_queries(
            texts, batch_size=self.batch_size, normalize=self.normalize, show_progress=False
        )
        return [np.asarray(v, dtype=np.float32) for v in vectors]

    # ------------------------------------------------------------------ protocol: identity and config
    @staticmethod
    def name() -> str:
        return NAME

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "ip", "l2"] if self.normalize else ["cosine"]

    def is_legacy(self) -> bool:
        return False

    def get_config(self) -> dict[str, Any]:
        return {"model": self._model_arg, "batch_size": self.batch_size, "normalize": self.normalize,
                **{k: v for k, v in self._load_kw.items() if isinstance(v, (str, int, float, bool))}}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> M3EEmbeddingFunction:
        config = dict(config)
        model = config.pop("model", None)
        return M3EEmbeddingFunction(model, **config)

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        unknown = set(config) - {"model", "batch_size", "normalize", "device", "backend", "max_length", "pooling"}
        if unknown:
            raise ValueError(f"unknown m3e embedding function settings: {', '.join(sorted(unknown))}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if "model" in new_config and new_config["model"] != old_config.get("model"):
            raise ValueError("the model of an existing collection cannot change: its vectors would not match")


def _model_reference(model: ModelSpec) -> str | None:
    """How a persisted collection names its model: a path as given (absolute for a path object), a hub id, or a
    loaded model's source directory (its hub id when it came from the hub)."""
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, os.PathLike):
        return os.fspath(Path(model).expanduser().resolve())
    source = getattr(model, "source_dir", None)
    name = getattr(model, "name", None)
    if name and "/" in str(name) and not Path(str(name)).exists():
        return str(name)  # a hub id
    return str(source) if source is not None else (str(name) if name else None)


def _register_with_chroma() -> None:
    try:
        from chromadb.utils.embedding_functions import register_embedding_function
    except Exception:  # chromadb absent or too old: nothing to register with
        return
    with contextlib.suppress(Exception):  # already registered under this name
        register_embedding_function(M3EEmbeddingFunction)


_register_with_chroma()
