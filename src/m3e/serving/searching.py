"""The search endpoints: ``POST /v1/search``, ``GET /v1/indexes`` and the search page ``GET /search``.

A search takes the steps every request takes (:meth:`EmbeddingService.answer`: the key, a JSON body within
the limits, OpenAI's error body) and runs on one search thread, so searches never compete with each other
for the two cores the inference thread also uses. The search thread embeds the query, retrieves and fuses;
a reranked search then sends its candidates through the dynamic batcher like any rerank request, and the
hits are ordered and grouped as :meth:`m3e.index.Index.search` orders and groups them, so the results are
the objects ``m3e search --json`` prints. A search is refused (429, Retry-After) when the searches ahead of
it would take longer than ``max_queue_seconds`` at their measured duration.

The page is one HTML file of the package (``search_page.html``: no build step, a little JS); it calls
``/v1/indexes`` and ``/v1/search`` like any client, with the API key typed into it when the server has one.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from m3e.errors import M3EError
from m3e.index.index import CHUNKS_PER_DOCUMENT, reranked_hits
from m3e.index.results import group_hits
from m3e.serving.access_log import access_record
from m3e.serving.errors import ApiError, bad_request
from m3e.serving.search_schemas import SearchRequest, index_not_found, parse_search_request
from m3e.serving.served_index import ServedIndex, query_terms

if TYPE_CHECKING:
    import os

    from m3e.index import Hit
    from m3e.serving.reranking import RerankService
    from m3e.serving.served_reranker import ServedReranker
    from m3e.serving.service import EmbeddingService

logger = logging.getLogger(__name__)

PAGE_FILE = "search_page.html"
# The page runs its own inline script and style, talks to this server only, and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass
class Retrieved:
    """What the search thread hands back: the hits in retrieval order, the resolved mode, the query's words."""

    hits: list[Hit]
    mode: str
    terms: list[str]


class SearchQueue:
    """Searches waiting or running, and the duration of recent ones: a search that would wait longer than
    ``max_seconds`` is refused with the time the ones ahead need."""

    def __init__(self, max_seconds: float | None, max_pending: int, window: int = 32):
        self.max_seconds = max_seconds
        self.max_pending = max_pending
        self.pending = 0
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=window)

    def admit(self) -> None:
        with self._lock:
            mean = sum(self._recent) / len(self._recent) if self._recent else None
            # This search waits for those ahead, then runs: at the recent mean duration each.
            over_time = (
                self.max_seconds is not None
                and mean is not None
                and (self.pending + 1) * mean > self.max_seconds
            )
            if self.pending and (self.pending >= self.max_pending or over_time):
                retry = int(min(3600, max(1, math.ceil(self.pending * (mean or 0.0)))))
                raise ApiError(
                    429,
                    f"The server is overloaded ({self.pending} searches queued). Retry after {retry} s.",
                    type="requests",
                    param=None,
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry)},
                )
            self.pending += 1

    def done(self, seconds: float | None) -> None:
        with self._lock:
            self.pending -= 1
            if seconds is not None:
                self._recent.append(seconds)


class SearchService:
    """The search handlers and the served indexes, on the shared steps of an :class:`EmbeddingService`."""

    def __init__(
        self, core: EmbeddingService, reranking: RerankService, indexes: Mapping[str, str | os.PathLike[str]]
    ):
        self.core = core
        self.reranking = reranking
        embedders = [served.model for served in core.served.values()]
        self.indexes = {name: ServedIndex.open(name, path, embedders) for name, path in indexes.items()}
        config = core.config
        self.queue = SearchQueue(config.max_queue_seconds, config.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3e-search")
        self._page: bytes | None = None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for served in self.indexes.values():
            served.close()

    # ------------------------------------------------------------------ POST /v1/search
    async def search(self, request: Request) -> Response:
        return await self.core.answer(request, "search", self._search)

    async def _search(self, request: Request, start: float) -> Response:
        """Admit, read, resolve the index (and reranker), retrieve on the search thread, rerank, answer."""
        self._check_served()
        req = parse_search_request(await self.core.admitted_json(request))
        served = self.resolve(req.index)
        reranker = self._reranker(req.rerank)
        logged = access_record(request.scope)
        logged.model, logged.texts = served.name, 1
        self.queue.admit()
        self.core.metrics.searches_queued.inc()
        began: float | None = None

        def retrieve() -> Retrieved:
            nonlocal began
            began = time.perf_counter()
            return self._retrieve(served, req, reranked=reranker is not None)

        try:
            found = await self.core.wait_result(request, self._executor.submit(retrieve))
        finally:
            self.queue.done(None if began is None else time.perf_counter() - began)
            self.core.metrics.searches_queued.dec()
        hits = found.hits
        if reranker is not None:
            hits = await self._reranked(request, reranker, req.query, hits)
        records = (
            [d.to_dict() for d in group_hits(hits, req.k)]
            if req.group
            else [h.to_dict() for h in hits[: req.k]]
        )
        body = {
            "object": "search",
            "index": served.name,
            "query": req.query,
            "mode": found.mode,
            "terms": found.terms,
            "results": [{"rank": rank, **record} for rank, record in enumerate(records, start=1)],
        }
        self.core.metrics.search_latency.labels(served.name).observe(time.perf_counter() - start)
        self.core.metrics.count_request("search", 200)
        return Response(json.dumps(body, ensure_ascii=False).encode("utf-8"), media_type="application/json")

    def _check_served(self) -> None:
        if not self.indexes:
            raise ApiError(
                404,
                "This server serves no index; start it with --index NAME=DIR.",
                param="index",
                code="index_not_found",
            )

    def resolve(self, name: str | None) -> ServedIndex:
        """The index a request names; with one index served, a request may leave the name out."""
        if name is None:
            if len(self.indexes) == 1:
                return next(iter(self.indexes.values()))
            raise bad_request(
                f"Missing required parameter: 'index' (served: {', '.join(self.indexes)}).",
                param="index",
                code="missing_required_parameter",
            )
        served = self.indexes.get(name)
        if served is None:
            raise index_not_found(name, self.indexes)
        return served

    def _reranker(self, rerank: str | bool | None) -> ServedReranker | None:
        if rerank is None or rerank is False:
            return None
        if not self.reranking.served:
            raise bad_request(
                "'rerank' needs a served reranker; start the server with --reranker MODEL.",
                param="rerank",
                code="invalid_value",
            )
        return self.reranking.resolve(None if rerank is True else str(rerank), "rerank")

    def _retrieve(self, served: ServedIndex, req: SearchRequest, *, reranked: bool) -> Retrieved:
        """On the search thread: the chunks ``Index.search`` groups or cuts to k, in its order (all the
        candidates when they are re-scored: the reranker orders them after, on the batcher)."""
        try:
            index = served.current()
            mode = req.mode or index.default_mode
            options: dict[str, Any] = {
                "filters": req.filters,
                "mode": mode,
                "fusion": req.fusion,
                "candidates": req.candidates,
                "colbert": req.colbert,
            }
            wanted = req.k * CHUNKS_PER_DOCUMENT if req.group else req.k
            if reranked or req.colbert:
                wanted = max(wanted, req.candidates)
            hits = index.search(req.query, k=wanted, **options)
            return Retrieved(hits, mode, query_terms(index, req.query))
        except (
            M3EError
        ) as exc:  # the index's refusals are the request's mistakes (a mode it lacks, a bad filter)
            raise bad_request(str(exc), param=None) from None

    async def _reranked(
        self, request: Request, reranker: ServedReranker, query: str, hits: list[Hit]
    ) -> list[Hit]:
        """The hits reordered by the reranker's score, as ``Index.search(rerank=...)`` orders them (ties keep
        the retrieval order)."""
        if not hits:
            return hits
        weight = reranker.reranker.rerank_weight
        fused = weight is not None and weight < 1
        scores, _ = await self.reranking.scores(request, reranker, query, [h.text for h in hits], raw=fused)
        return reranked_hits(hits, [float(s) for s in scores], weight)

    # ------------------------------------------------------------------ GET /v1/indexes
    async def list_indexes(self, request: Request) -> Response:
        try:
            self.core.check_key(request)
            self._check_served()
            data = [served.describe() for served in self.indexes.values()]
        except ApiError as exc:
            return self.core.error_response(exc, "indexes")
        except M3EError as exc:
            return self.core.error_response(ApiError(500, str(exc), type="server_error"), "indexes")
        self.core.metrics.count_request("indexes", 200)
        return JSONResponse({"object": "list", "data": data})

    # ------------------------------------------------------------------ GET /search
    async def page(self) -> Response:
        """The search page (no key needed: it holds no data; its calls carry the key)."""
        if not self.indexes:
            return self.core.error_response(
                ApiError(
                    404, "This server serves no index; start it with --index NAME=DIR.", code="not_found"
                ),
                "page",
            )
        if self._page is None:
            self._page = resources.files("m3e.serving").joinpath(PAGE_FILE).read_bytes()
        self.core.metrics.count_request("page", 200)
        return Response(self._page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
