"""A LangChain ``Embeddings`` backed by an m3e model.

    from m3e.integrations.langchain import M3EEmbeddings
    embeddings = M3EEmbeddings("path/to/model")      # or an EmbeddingModel, or None: the default
    vectors = embeddings.embed_documents(["保险理赔需要哪些材料？"])
    query = embeddings.embed_query("理赔材料")

Documents get the model's document prompt and queries its query prompt, so instruction
models (BGE, E5) work as their authors intended inside any LangChain vector store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from m3e.extras import require
from m3e.integrations._model import resolve_model

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from m3e.integrations._model import ModelSpec
else:
    Embeddings = require(
        "langchain_core.embeddings", purpose="m3e.integrations.langchain", extra="integrations",
        package="langchain-core",
    ).Embeddings


class M3EEmbeddings(Embeddings):
    def __init__(self, model: ModelSpec = None, *, batch_size: int = 32, normalize: bool = True, **load_kw: Any):
        self.model = resolve_model(model, **load_kw)
        self.batch_size = batch_size
        self.normalize = normalize

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors: np.ndarray = self.model.encode_documents(
            list(texts), batch_size=self.batch_size, normalize=self.normalize, show_progress=False
        )
        rows: list[list[float]] = vectors.tolist()
        return rows

    def embed_query(self, text: str) -> list[float]:
        vector: np.ndarray = self.model.encode_queries(
            [text], batch_size=1, normalize=self.normalize, show_progress=False
        )
        row: list[float] = vector[0].tolist()
        return row
