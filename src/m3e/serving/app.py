"""The FastAPI application: OpenAI-compatible /v1/embeddings over the dynamic batcher, reranking and search.

Routes: ``POST /v1/embeddings`` and ``/embeddings``, ``GET /v1/models`` (``/models``,
``/v1/models/{id}``), ``GET /health`` (503 until warm-up is done), ``GET /metrics``
(Prometheus); with rerankers, ``POST /v1/rerank`` (Cohere / Jina; also ``/v2/rerank``, and ``/rerank``,
which reads TEI's shape too: :mod:`m3e.serving.reranking`); with indexes, ``POST /v1/search``,
``GET /v1/indexes`` and the search page ``GET /search`` (:mod:`m3e.serving.searching`). Every error, unknown routes and unexpected exceptions included, has OpenAI's body
``{"error": {"message", "type", "param", "code"}}``.

Shutdown (SIGTERM, Ctrl-C, ``ServerThread.stop``): new requests get 503; requests in flight finish,
or get 503 when still waiting ``shutdown_grace_s`` later. A client that disconnects takes its queued
texts out of the batcher and is counted as 499 (client closed request), not as a server error.

:func:`create_app` builds the app in named steps: an :class:`EmbeddingService` holds what the
handlers share (served models, batcher, metrics, settings), the steps every endpoint takes (the key, the JSON
body, the batcher's answer, the error body: :meth:`EmbeddingService.answer`) and answers the embedding
endpoints; :class:`~m3e.serving.reranking.RerankService` and :class:`~m3e.serving.searching.SearchService`
answer theirs with the same steps. The ``_add_*`` functions put CORS, the error handlers and each route group
on the app.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request

from m3e.errors import M3EError
from m3e.serving import openapi
from m3e.serving.access_log import LOG_FORMATS, AccessLog
from m3e.serving.batcher import Batcher
from m3e.serving.errors import ApiError, bad_request
from m3e.serving.hosts import HostAllowList
from m3e.serving.openai_tokens import TOKEN_IDS
from m3e.serving.served import (
    ON_LONG_INPUT,
)
from m3e.serving.sides import SIDES
from m3e.version import __version__

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker
    from m3e.serving.reranking import RerankService
    from m3e.serving.searching import SearchService

from m3e.serving.service import (
    CLIENT_CLOSED_REQUEST,
    DRAIN_TIMEOUT_S,
    TRUNCATED_HEADER,
    EmbeddingService,
    ServeConfig,
    check_api_key,
    check_json_body,
    internal_error,
)

__all__ = ["CLIENT_CLOSED_REQUEST", "TRUNCATED_HEADER", "EmbeddingService", "ServeConfig", "check_api_key", "check_json_body", "create_app"]

logger = logging.getLogger(__name__)

def create_app(
    models: Mapping[str, EmbeddingModel],
    config: ServeConfig | None = None,
    *,
    rerankers: Mapping[str, Reranker] | None = None,
    indexes: Mapping[str, str | os.PathLike[str]] | None = None,
) -> FastAPI:
    """An ASGI app serving ``models`` (public name -> EmbeddingModel; the first is the default), ``rerankers``
    (public name -> Reranker; the first is the default of /v1/rerank) and ``indexes`` (public name -> index
    directory, searched with a served model when it built the index)."""
    from m3e.serving.reranking import RerankService
    from m3e.serving.searching import SearchService

    rerankers = dict(rerankers or {})
    config = _checked_config(models, config, rerankers)
    service = EmbeddingService(models, config, rerankers)
    reranking = RerankService(service)
    searching = SearchService(service, reranking, indexes or {})
    app = FastAPI(
        title="m3e embeddings",
        version=__version__,
        lifespan=_lifespan(service.batcher, searching.close),
    )
    app.state.batcher = service.batcher
    app.state.metrics = service.metrics
    app.state.served = service.served
    app.state.service = service
    app.state.reranking = reranking
    app.state.searching = searching
    # What m3e.serving.server calls when a shutdown starts, and how long it lets requests finish.
    app.state.begin_shutdown = service.begin_shutdown
    app.state.shutdown_grace_s = config.shutdown_grace_s
    _add_cors(app, config.cors_origins)
    app.add_middleware(HostAllowList, allowed=config.allowed_hosts)  # outside CORS: refused before anything
    app.add_middleware(AccessLog, log_format=config.log_format)  # outermost: every request has its line
    _add_error_handlers(app, service)
    _add_embedding_routes(app, service)
    _add_rerank_routes(app, reranking)
    _add_search_routes(app, searching)
    _add_model_routes(app, service)
    _add_health_route(app, service)
    _add_metrics_route(app, service)
    openapi.install_openapi(app, service.schema_limits())
    return app


def _checked_config(
    models: Mapping[str, EmbeddingModel], config: ServeConfig | None, rerankers: Mapping[str, Reranker]
) -> ServeConfig:
    if not models:
        raise M3EError("no model to serve")
    config = config or ServeConfig()
    if config.max_rerank_documents < 1:
        raise M3EError(f"max_rerank_documents must be >= 1, not {config.max_rerank_documents!r}")
    _check_rerankers(models, rerankers)
    if config.on_long_input not in ON_LONG_INPUT:
        raise M3EError(f"on_long_input must be one of {ON_LONG_INPUT}, not {config.on_long_input!r}")
    if config.default_side not in SIDES:
        raise M3EError(f"default_side must be one of {SIDES}, not {config.default_side!r}")
    if config.token_ids not in TOKEN_IDS:
        raise M3EError(f"token_ids must be one of {TOKEN_IDS}, not {config.token_ids!r}")
    for name in ("body_timeout_s", "shutdown_grace_s", "max_queue_seconds"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise M3EError(f"{name} must be > 0, not {value!r}")
    if config.log_format not in LOG_FORMATS:
        raise M3EError(f"log_format must be one of {LOG_FORMATS}, not {config.log_format!r}")
    served = [*models, *rerankers]
    for alias, target in config.aliases.items():
        if alias in served:
            raise M3EError(f"alias {alias!r} is already the name of a served model")
        if target not in served:
            raise M3EError(
                f"alias {alias!r} names {target!r}, which is not served (served: {', '.join(served)})"
            )
    return config


def _check_rerankers(models: Mapping[str, EmbeddingModel], rerankers: Mapping[str, Reranker]) -> None:
    for name, reranker in rerankers.items():
        if name in models:
            raise M3EError(f"{name!r} names an embedding model and a reranker; give one another name")
        if reranker.num_labels != 1:
            raise M3EError(
                f"reranker {name!r} has {reranker.num_labels} labels; the server ranks with one-label rerankers"
            )


def _lifespan(
    batcher: Batcher, close: Callable[[], None]
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()  # warms up in the inference thread; /health says 503 until then
        yield
        # uvicorn has already let in-flight requests finish; drain anything left and stop.
        await asyncio.to_thread(batcher.stop, DRAIN_TIMEOUT_S)
        await asyncio.to_thread(close)

    return lifespan


def _add_cors(app: FastAPI, origins: list[str]) -> None:
    """Browser calls from ``origins``, with the headers a client reads (truncation count, Retry-After)."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=[TRUNCATED_HEADER, "Retry-After"],
    )


def _add_error_handlers(app: FastAPI, service: EmbeddingService) -> None:
    """Errors raised by the framework (unknown path, wrong method, invalid request) and unexpected
    exceptions in OpenAI's body, never a plain-text 500."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return service.error_response(_http_api_error(request, exc), "other")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return service.error_response(bad_request(str(exc), param=None), "other")

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        return service.error_response(internal_error(exc), "other")


def _http_api_error(request: Request, exc: StarletteHTTPException) -> ApiError:
    status = exc.status_code
    messages = {
        404: f"Unknown path {request.url.path}.",
        405: f"Method {request.method} is not allowed on {request.url.path}.",
    }
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return ApiError(
        status, messages.get(status, str(exc.detail)), param=None, code=code, headers=dict(exc.headers or {})
    )


def _add_embedding_routes(app: FastAPI, service: EmbeddingService) -> None:
    app.add_api_route(
        "/v1/embeddings",
        service.embeddings,
        methods=["POST"],
        summary="Create embeddings",
        response_class=JSONResponse,
        responses=openapi.EMBEDDING_RESPONSES,
    )
    app.add_api_route("/embeddings", service.embeddings, methods=["POST"], include_in_schema=False)


def _add_rerank_routes(app: FastAPI, reranking: RerankService) -> None:
    """Cohere's and Jina's /v1/rerank (Cohere v2's /v2/rerank), and /rerank, which reads TEI's shape too;
    in the schema only when a reranker is served."""
    served = bool(reranking.served)
    app.add_api_route(
        "/v1/rerank",
        reranking.rerank,
        methods=["POST"],
        summary="Rerank documents (Cohere / Jina)",
        response_class=JSONResponse,
        responses=openapi.RERANK_RESPONSES,
        include_in_schema=served,
    )
    app.add_api_route(
        "/v2/rerank",
        reranking.rerank,
        methods=["POST"],
        summary="Rerank documents (Cohere v2)",
        response_class=JSONResponse,
        responses=openapi.RERANK_RESPONSES,
        include_in_schema=served,
    )
    app.add_api_route(
        "/rerank",
        reranking.rerank,
        methods=["POST"],
        summary="Rerank texts (TEI's shape with 'texts'; Cohere's with 'documents')",
        response_class=JSONResponse,
        responses=openapi.TEI_RERANK_RESPONSES,
        include_in_schema=served,
    )


def _add_search_routes(app: FastAPI, searching: SearchService) -> None:
    """POST /v1/search, GET /v1/indexes and the search page; in the schema only when an index is served."""
    served = bool(searching.indexes)
    app.add_api_route(
        "/v1/search",
        searching.search,
        methods=["POST"],
        summary="Search a served index",
        response_class=JSONResponse,
        responses=openapi.SEARCH_RESPONSES,
        include_in_schema=served,
    )
    app.add_api_route(
        "/v1/indexes",
        searching.list_indexes,
        methods=["GET"],
        summary="List served indexes",
        responses=openapi.INDEXES_RESPONSES,
        include_in_schema=served,
    )
    app.add_api_route(
        "/search",
        searching.page,
        methods=["GET"],
        summary="The search page",
        response_class=Response,
        responses=openapi.PAGE_RESPONSES,
        include_in_schema=served,
    )


def _add_model_routes(app: FastAPI, service: EmbeddingService) -> None:
    app.add_api_route(
        "/v1/models",
        service.list_models,
        methods=["GET"],
        summary="List models",
        responses=openapi.MODELS_RESPONSES,
    )
    app.add_api_route("/models", service.list_models, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/v1/models/{model:path}",
        service.get_model,
        methods=["GET"],
        summary="Retrieve a model",
        responses=openapi.MODEL_RESPONSES,
    )
    app.add_api_route("/models/{model:path}", service.get_model, methods=["GET"], include_in_schema=False)


def _add_health_route(app: FastAPI, service: EmbeddingService) -> None:
    app.add_api_route(
        "/health",
        service.health,
        methods=["GET"],
        summary="Ready once warmed up",
        responses=openapi.HEALTH_RESPONSES,
    )


def _add_metrics_route(app: FastAPI, service: EmbeddingService) -> None:
    app.add_api_route(
        "/metrics",
        service.prometheus_metrics,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=Response,
        responses=openapi.METRICS_RESPONSES,
    )


# ---------------------------------------------------------------------- the handlers


