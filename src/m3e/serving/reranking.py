"""The rerank endpoints: ``POST /v1/rerank``, ``/v2/rerank`` and ``/rerank`` (shapes: m3e.serving.rerank_schemas).

A request takes the steps an embedding request takes (:meth:`EmbeddingService.answer`): the API key, a JSON
body within the limits, the model by name (or the first served reranker), its pairs made into windows
(in a thread when large), the windows through the dynamic batcher with everyone else's texts and pairs (429
with Retry-After when the queued work would take too long), the scores folded per pair, the answer in the
client's shape. Search requests rerank their candidates through :meth:`RerankService.scores` too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np
from fastapi.responses import Response
from starlette.requests import Request

from m3e.serving.access_log import access_record
from m3e.serving.errors import ApiError, bad_request
from m3e.serving.rerank_schemas import RerankRequest, parse_rerank_request, render_rerank, rerank_shape
from m3e.serving.served_reranker import ServedReranker

if TYPE_CHECKING:
    from m3e.serving.service import EmbeddingService

# Requests with fewer characters are made into windows on the event loop; bigger ones in a thread.
_INLINE_TOKENIZE_CHARS = 4096
_P = ParamSpec("_P")
_R = TypeVar("_R")


class RerankService:
    """The rerank handlers, on the shared steps and batcher of an :class:`EmbeddingService`."""

    def __init__(self, core: EmbeddingService):
        self.core = core
        self.served = core.rerankers
        self.names = core.reranker_names

    async def rerank(self, request: Request) -> Response:
        return await self.core.answer(request, "rerank", self._rerank)

    async def _rerank(self, request: Request, start: float) -> Response:
        """Admit, read, resolve the reranker, make windows, wait for the batcher, answer."""
        self._check_served()
        obj = await self.core.admitted_json(request)
        req = parse_rerank_request(
            obj, rerank_shape(obj, request.url.path), self.core.config.max_rerank_documents
        )
        served = self.resolve(req.model, "model")
        logged = access_record(request.scope)
        logged.model, logged.texts = served.name, len(req.documents)
        documents = req.documents
        if req.max_tokens_per_doc is not None:
            documents = await off_loop(
                _chars(documents), served.cut_documents, documents, req.max_tokens_per_doc
            )
        scores, tokens = await self.scores(
            request, served, req.query, documents, req.max_windows, req.raw_scores
        )
        logged.tokens = tokens
        body = render_rerank(req, scores, req.model or served.name, tokens)
        self._count(served.name, req, tokens, time.perf_counter() - start)
        return Response(json.dumps(body, ensure_ascii=False).encode("utf-8"), media_type="application/json")

    def _check_served(self) -> None:
        if not self.served:
            raise ApiError(
                404,
                "This server serves no reranker; start it with --reranker MODEL (e.g. --reranker default).",
                param="model",
                code="model_not_found",
            )

    def resolve(self, name: str | None, param: str) -> ServedReranker:
        """The reranker a request names (``param`` says where), or the first served one."""
        self._check_served()
        if name is None:
            return next(iter(self.served.values()))
        served = self.names.get(name)
        if served is not None:
            return served
        listed = ", ".join(self.names)
        if name in self.core.names:
            raise bad_request(
                f"`{name}` is an embedding model; reranking needs a reranker: {listed}.",
                param=param,
                code="invalid_value",
            )
        raise ApiError(
            404,
            f"The reranker `{name}` does not exist. Served rerankers: {listed}.",
            param=param,
            code="model_not_found",
        )

    async def scores(
        self,
        request: Request,
        served: ServedReranker,
        query: str,
        documents: Sequence[str],
        max_windows: int | None = None,
        raw: bool = False,
    ) -> tuple[np.ndarray, int]:
        """Each document's score for ``query`` as ``Reranker.predict`` gives it (``raw``: the logits), through
        the batcher; and the tokens read."""
        size = len(query) * len(documents) + _chars(documents)
        windows = await off_loop(size, served.windows, query, documents, max_windows)
        future = self.core.submit(served.name, windows.ids, segments=windows.segments)
        logits = await self.core.wait_result(request, future)
        return served.pair_scores(windows, logits, "identity" if raw else None), windows.tokens

    def _count(self, model: str, req: RerankRequest, tokens: int, seconds: float) -> None:
        metrics = self.core.metrics
        metrics.reranked.labels(model).inc(len(req.documents))
        metrics.rerank_tokens.labels(model).inc(tokens)
        metrics.rerank_latency.labels(model).observe(seconds)
        metrics.count_request("rerank", 200)


async def off_loop(size: int, work: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``work`` on the event loop when its input is small (``size`` characters), else in a thread, so that
    one request of a thousand long documents does not stall every other connection."""
    if size <= _INLINE_TOKENIZE_CHARS:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


def _chars(texts: Sequence[str]) -> int:
    return sum(len(t) for t in texts)
