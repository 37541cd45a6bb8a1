"""The FastAPI application: OpenAI-compatible /v1/embeddings over the dynamic batcher.

Routes: ``POST /v1/embeddings`` and ``/embeddings``, ``GET /v1/models`` (``/models``,
``/v1/models/{id}``), ``GET /health`` (503 until warm-up is done), ``GET /metrics``
(Prometheus). Every error, unknown routes included, has OpenAI's body
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request

from m3e.errors import M3EError
from m3e.serving.batcher import Batcher, QueueFull, ShuttingDown
from m3e.serving.errors import SERVER_ERROR, ApiError, bad_request
from m3e.serving.metrics import Metrics
from m3e.serving.schemas import (
    EmbeddingRequest,
    finish_vectors,
    model_card,
    parse_embedding_request,
    parse_json,
    render_embeddings,
    render_models,
)

logger = logging.getLogger(__name__)

ON_LONG_INPUT = ("truncate", "reject")
TRUNCATED_HEADER = "X-M3E-Truncated"
# Requests with fewer characters are tokenized on the event loop; bigger ones in a thread
# so that one 2048-text request does not stall every other connection.
_INLINE_TOKENIZE_CHARS = 4096


@dataclass
class ServeConfig:
    api_key: str | None = None
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 4096
    max_request_bytes: int = 16 * 1024 * 1024
    on_long_input: str = "truncate"
    cors_origins: list[str] = field(default_factory=list)
    torch_threads: int | None = None
    warmup: bool = True


class ServedModel:
    """A model under a public name, with what requests need precomputed."""

    def __init__(self, name: str, model: Any):
        self.name = name
        self.model = model
        self.dim = int(model.dim)
        self.max_length = int(model.max_length)
        tok = model.tokenizer
        self.wrap = model.add_special_tokens
        self.n_special = len(self.wrap([]))
        self.vocab_size = int(getattr(model.transformer.config, "vocab_size", 0) or len(tok))
        # encode() applies the model's default prompt (if any); the server does the same for texts.
        self.prompt = model.resolve_prompt()
        self.prompt_length = model.prompt_length(self.prompt) if self.prompt else 0

    def tokenize_texts(self, texts: list[str], on_long: str) -> tuple[list[list[int]], int]:
        """Token ids as ``encode`` makes them, and how many texts were truncated."""
        ids = self.model.tokenize(texts, prompt=self.prompt or None)
        maybe = [i for i, x in enumerate(ids) if len(x) >= self.max_length]
        if not maybe:
            return ids, 0
        full = self.model.count_tokens([self.prompt + texts[i] for i in maybe])
        long = [(i, n) for i, n in zip(maybe, full, strict=True) if n > self.max_length]
        if long and on_long == "reject":
            i, n = long[0]
            raise _too_long(i, n, self.max_length, len(long))
        return ids, len(long)

    def prepare_token_ids(self, batch: list[list[int]], on_long: str) -> tuple[list[list[int]], int]:
        """Token-id inputs: range-checked, truncated, wrapped in special tokens as the tokenizer would."""
        room = max(self.max_length - self.n_special, 1)
        out: list[list[int]] = []
        truncated = 0
        for i, ids in enumerate(batch):
            lo, hi = min(ids), max(ids)
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise bad_request(
                    f"input[{i}] holds token id {bad}, outside this model's vocabulary (0..{self.vocab_size - 1}). "
                    "Token ids are read in the served model's own vocabulary; a client that tokenizes with "
                    "tiktoken (e.g. LangChain's OpenAIEmbeddings) should send text instead "
                    "(check_embedding_ctx_length=False).",
                    code="invalid_value",
                )
            if len(ids) > room:
                if on_long == "reject":
                    raise _too_long(i, len(ids) + self.n_special, self.max_length, None)
                ids = ids[:room]
                truncated += 1
            out.append(self.wrap(ids))
        return out, truncated


def _too_long(index: int, tokens: int, limit: int, count: int | None) -> ApiError:
    more = f" ({count} inputs are too long)" if count and count > 1 else ""
    return bad_request(
        f"input[{index}] has {tokens} tokens, more than this model's maximum of {limit}{more}. "
        "Shorten the input, or start the server with --on-long-input truncate.",
        code="context_length_exceeded",
    )


def create_app(models: dict[str, Any], config: ServeConfig | None = None) -> Any:
    """An ASGI app serving ``models`` (public name -> EmbeddingModel); the first is the default."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if not models:
        raise M3EError("no model to serve")
    config = config or ServeConfig()
    if config.on_long_input not in ON_LONG_INPUT:
        raise M3EError(f"on_long_input must be one of {ON_LONG_INPUT}, not {config.on_long_input!r}")
    served = {name: ServedModel(name, m) for name, m in models.items()}
    default_name = next(iter(served))
    created = int(time.time())
    metrics = Metrics()
    batcher = Batcher(
        {name: s.model for name, s in served.items()},
        max_batch_tokens=config.max_batch_tokens,
        max_batch_size=config.max_batch_size,
        max_wait=config.max_wait_ms / 1000.0,
        max_queue=config.max_queue,
        metrics=metrics,
        warmup=(lambda: warm_up(served.values())) if config.warmup else None,
        torch_threads=config.torch_threads,
    )

    in_flight = [0]  # requests inside the embeddings handler; the batcher waits for company only if > 1
    batcher.load_hint = lambda: in_flight[0]

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher.start()  # warms up in the inference thread; /health says 503 until then
        yield
        # uvicorn has already let in-flight requests finish; drain anything left and stop.
        await asyncio.to_thread(batcher.stop, 60.0)

    app = FastAPI(title="m3e embeddings", version=_version(), lifespan=lifespan)
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.served = served

    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[TRUNCATED_HEADER, "Retry-After"],
        )

    def error_response(exc: ApiError, endpoint: str) -> Response:
        metrics.count_request(endpoint, exc.status, exc.code or exc.type)
        return Response(exc.json_bytes(), status_code=exc.status, media_type="application/json", headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        message = {404: f"Unknown path {request.url.path}.", 405: f"Method {request.method} is not allowed on {request.url.path}."}.get(
            status, str(exc.detail)
        )
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return error_response(ApiError(status, message, param=None, code=code, headers=dict(exc.headers or {})), "other")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(bad_request(str(exc), param=None), "other")

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            raise ApiError(
                401,
                "You didn't provide an API key. Send it in an Authorization header: 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = config.max_request_bytes
        too_large = ApiError(
            413, f"The request body is larger than this server's limit of {limit} bytes.", param=None, code="request_too_large"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def resolve_model(req: EmbeddingRequest) -> ServedModel:
        name = req.model or default_name
        model = served.get(name)
        if model is None:
            raise ApiError(
                404,
                f"The model `{name}` does not exist. Served models: {', '.join(served)}.",
                param="model",
                code="model_not_found",
            )
        if req.dimensions is not None and req.dimensions > model.dim:
            raise bad_request(
                f"Invalid value for 'dimensions': {req.dimensions}. Model `{name}` has {model.dim} dimensions.",
                param="dimensions",
                code="invalid_value",
            )
        return model

    async def embeddings(request: Request) -> Response:
        start = time.perf_counter()
        metrics.in_flight.inc()
        in_flight[0] += 1
        try:
            check_key(request)
            req = parse_embedding_request(parse_json(await read_body(request)))
            model = resolve_model(req)
            if req.texts is not None:
                texts = req.texts
                if sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS:
                    ids, truncated = model.tokenize_texts(texts, config.on_long_input)
                else:
                    ids, truncated = await asyncio.to_thread(model.tokenize_texts, texts, config.on_long_input)
                prompt_length = model.prompt_length
            else:
                ids, truncated = model.prepare_token_ids(req.token_ids or [], config.on_long_input)
                prompt_length = 0
            try:
                future = batcher.submit(model.name, ids, prompt_length)
            except QueueFull as exc:
                raise ApiError(
                    429,
                    f"The server is overloaded ({exc.queued} texts queued). Retry after {exc.retry_after} s.",
                    type="requests",
                    param=None,
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(exc.retry_after)},
                ) from None
            except ShuttingDown:
                raise ApiError(503, "The server is shutting down.", type=SERVER_ERROR, param=None, code="shutting_down") from None
            pooled: np.ndarray = await asyncio.wrap_future(future)
            vectors = finish_vectors(pooled, req.dimensions, model.dim)
            tokens = sum(len(x) for x in ids)
            body = render_embeddings(vectors, req.encoding_format, model.name, tokens)
            metrics.texts.labels(model.name).inc(len(ids))
            metrics.tokens.labels(model.name).inc(tokens)
            if truncated:
                metrics.truncated.labels(model.name).inc(truncated)
            metrics.latency.labels(model.name).observe(time.perf_counter() - start)
            metrics.count_request("embeddings", 200)
            return Response(body, media_type="application/json", headers={TRUNCATED_HEADER: str(truncated)})
        except ApiError as exc:
            return error_response(exc, "embeddings")
        except Exception as exc:
            logger.exception("embedding request failed")
            return error_response(
                ApiError(500, f"The server had an error processing the request: {type(exc).__name__}.", type=SERVER_ERROR, param=None),
                "embeddings",
            )
        finally:
            metrics.in_flight.dec()
            in_flight[0] -= 1

    app.add_api_route("/v1/embeddings", embeddings, methods=["POST"], include_in_schema=True, summary="Create embeddings")
    app.add_api_route("/embeddings", embeddings, methods=["POST"], include_in_schema=False)

    async def list_models(request: Request) -> Response:
        try:
            check_key(request)
        except ApiError as exc:
            return error_response(exc, "models")
        metrics.count_request("models", 200)
        return JSONResponse(render_models(list(served), created))

    async def get_model(request: Request) -> Response:
        try:
            check_key(request)
            name = request.path_params["model"]
            if name not in served:
                raise ApiError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        except ApiError as exc:
            return error_response(exc, "models")
        metrics.count_request("models", 200)
        return JSONResponse(model_card(name, created))

    app.add_api_route("/v1/models", list_models, methods=["GET"], summary="List models")
    app.add_api_route("/models", list_models, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/models/{model:path}", get_model, methods=["GET"], summary="Retrieve a model")
    app.add_api_route("/models/{model:path}", get_model, methods=["GET"], include_in_schema=False)

    async def health() -> Response:
        if not batcher.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        if batcher.warmup_error:
            return JSONResponse({"status": "error", "error": batcher.warmup_error}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(served)})

    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    app.add_api_route("/health", health, methods=["GET"], summary="Ready once warmed up")
    app.add_api_route("/metrics", prometheus, methods=["GET"], summary="Prometheus metrics")
    return app


def warm_up(models: Any) -> None:
    """A few forwards per model (short, medium, full length) so the first request is not slow."""
    for served in models:
        model = served.model
        tok = model.tokenizer
        filler = tok.unk_token_id if tok.unk_token_id is not None else 100
        room = max(served.max_length - served.n_special, 1)
        for length, count in ((8, 16), (min(64, room), 8), (room, 2)):
            ids = [served.wrap([filler] * length)] * count
            model.embed_token_ids(ids, normalize=False)
        model.tokenize(["warm-up 预热"])  # the tokenizer's first call builds caches too
        logger.info("warmed up %s", served.name)


def _version() -> str:
    from m3e import __version__

    return __version__
