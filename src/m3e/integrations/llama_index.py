"""A LlamaIndex ``BaseEmbedding`` backed by an m3e model.

    from llama_index.core import Settings, VectorStoreIndex, Document
    from m3e.integrations.llama_index import M3EEmbedding
    Settings.embed_model = M3EEmbedding("path/to/model")   # or an EmbeddingModel, or None: the default model
    index = VectorStoreIndex.from_documents([Document(text="保险理赔需要保单和事故证明。")])
    nodes = index.as_retriever(similarity_top_k=3).retrieve("理赔要什么材料")

LlamaIndex embeds the nodes it stores with ``get_text_embedding(s)`` and the questions it retrieves with
``get_query_embedding``: here the first get the model's document prompt and the second its query prompt
(sides), so instruction models (BGE, E5, m3e's default) work as their authors intended. Batches of
``embed_batch_size`` texts go to ``encode_documents`` at once; the async variants run the same call on a
worker thread, one encode at a time, so an event loop is never blocked by a forward pass.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from m3e.extras import require
from m3e.integrations._model import resolve_model

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    from m3e.integrations._model import ModelSpec
    from m3e.model import EmbeddingModel
else:
    _core = require(
        "llama_index.core.base.embeddings.base", purpose="m3e.integrations.llama_index", extra="integrations",
        package="llama-index-core",
    )
    BaseEmbedding = _core.BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr


class M3EEmbedding(BaseEmbedding):
    """m3e's model as LlamaIndex's embedding model: documents on the document side, queries on the query side."""

    normalize: bool = True
    _model: EmbeddingModel = PrivateAttr()
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self, model: ModelSpec = None, *, embed_batch_size: int = 32, normalize: bool = True, **load_kw: Any
    ) -> None:
        loaded = resolve_model(model, **load_kw)
        super().__init__(model_name=str(loaded.name), embed_batch_size=embed_batch_size)
        self.normalize = normalize
        self._model = loaded

    @classmethod
    def class_name(cls) -> str:
        return "M3EEmbedding"

    @property
    def model(self) -> EmbeddingModel:
        return self._model

    # ------------------------------------------------------------------ the sides
    def _get_query_embedding(self, query: str) -> list[float]:
        return self._queries([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._documents([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._documents(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await asyncio.to_thread(self._queries, [query]))[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await asyncio.to_thread(self._documents, [text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._documents, texts)

    # ------------------------------------------------------------------ encoding
    def _queries(self, texts: list[str]) -> list[list[float]]:
        with self._lock:  # one forward pass at a time: the async variants run on worker threads
            vectors = self._model.encode_queries(
                texts, batch_size=self.embed_batch_size, normalize=self.normalize, show_progress=False
            )
        rows: list[list[float]] = vectors.tolist()
        return rows

    def _documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            vectors = self._model.encode_documents(
                texts, batch_size=self.embed_batch_size, normalize=self.normalize, show_progress=False
            )
        rows: list[list[float]] = vectors.tolist()
        return rows


__all__ = ["M3EEmbedding"]
