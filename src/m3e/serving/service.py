"""What every handler shares: the served models, the batcher, metrics and settings (:class:`ServeConfig`),
and the steps every endpoint takes (the key, the JSON body, the batcher's answer, the error body:
:meth:`EmbeddingService.answer`); it also answers the embedding endpoints. :mod:`m3e.serving.app` puts it on a
FastAPI app beside the rerank and search services, which take the same steps through it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from m3e.serving import openapi
from m3e.serving.access_log import LogFormat, access_record
from m3e.serving.batcher import Backend, Batcher, QueueFull, ShuttingDown
from m3e.serving.body import ClientGone, discard_body, read_body, wait_for_disconnect
from m3e.serving.errors import SERVER_ERROR, ApiError, bad_request
from m3e.serving.hosts import LOOPBACK_HOSTS
from m3e.serving.metrics import Metrics
from m3e.serving.openai_tokens import CL100K_MAX_TOKEN, OpenAITokenDecoder, TokenIds
from m3e.serving.schemas import (
    EmbeddingRequest,
    finish_vectors,
    parse_embedding_request,
    parse_json,
    render_embeddings,
    render_model,
    render_models,
)
from m3e.serving.served import (
    OnLongInput,
    Prompt,
    ServedModel,
    TokenizedInputs,
    warm_up,
)
from m3e.serving.served_reranker import ServedReranker
from m3e.serving.sides import DEFAULT_SIDE, INPUT_TYPES, Side, SideChoice

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker

logger = logging.getLogger(__name__)

TRUNCATED_HEADER = "X-M3E-Truncated"
# Requests with fewer characters are tokenized on the event loop; bigger ones in a thread
# so that one 2048-text request does not stall every other connection.
_INLINE_TOKENIZE_CHARS = 4096
# How long shutdown waits for the inference thread to finish what is queued.
DRAIN_TIMEOUT_S = 60.0
# nginx's status for a request whose client went away before the answer (no response is sent).
CLIENT_CLOSED_REQUEST = 499
_T = TypeVar("_T")


@dataclass
class ServeConfig:
    api_key: str | None = None
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 4096
    # 429 when the queued work, a request's own included, would take longer (at the measured throughput).
    max_queue_seconds: float | None = 5.0
    max_request_bytes: int = 16 * 1024 * 1024
    body_timeout_s: float = 30.0  # a body not arrived by then: 408, connection closed
    shutdown_grace_s: float = 30.0  # in-flight requests still waiting this long into a shutdown: 503
    on_long_input: OnLongInput = "truncate"
    cors_origins: list[str] = field(default_factory=list)
    # Other names of served models: alias -> served name (also listed by /v1/models).
    aliases: dict[str, str] = field(default_factory=dict)
    # The access log's lines (m3e.serving.access_log): the Common Log Format and fields, or JSON.
    log_format: LogFormat = "text"
    # Host names answered (m3e.serving.hosts): the loopback names by default, "*" for any.
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))
    torch_threads: int | None = None
    warmup: bool = True
    # The side of texts sent with no input_type / prompt_name / model suffix (m3e.serving.sides).
    default_side: Side = DEFAULT_SIDE
    # Integer inputs: cl100k_base ids as OpenAI reads them, or the model's own (m3e.serving.openai_tokens).
    token_ids: TokenIds = "openai"
    # Documents (or TEI texts) one rerank request may send.
    max_rerank_documents: int = 1000


# ---------------------------------------------------------------------- the app, step by step


class EmbeddingService:
    """What the routes share (served models and rerankers, batcher, metrics, settings), the steps of every
    request (:meth:`answer`, :meth:`read_json`, :meth:`submit`, :meth:`wait_result`) and one handler per
    embedding and model endpoint."""

    def __init__(
        self,
        models: Mapping[str, EmbeddingModel],
        config: ServeConfig,
        rerankers: Mapping[str, Reranker] | None = None,
    ):
        self.config = config
        self.served = {name: ServedModel(name, m, config.default_side) for name, m in models.items()}
        self.rerankers = {name: ServedReranker(name, r) for name, r in (rerankers or {}).items()}
        self.default_name = next(iter(self.served))
        # Every name a request may use: the served names, then the aliases (of embedders; of rerankers).
        aliases = config.aliases.items()
        self.names = {**self.served, **{a: self.served[t] for a, t in aliases if t in self.served}}
        self.reranker_names = {
            **self.rerankers,
            **{a: self.rerankers[t] for a, t in aliases if t in self.rerankers},
        }
        self.created = int(time.time())
        self.metrics = Metrics()
        self.openai_tokens = OpenAITokenDecoder()
        # Requests inside a handler; the batcher waits for company only if > 1.
        self.in_flight = 0
        self.draining = False  # a shutdown has started: new requests get 503
        self._grace_over = asyncio.Event()  # set shutdown_grace_s into a shutdown: waiting requests get 503
        backends: dict[str, Backend] = {name: s.model for name, s in self.served.items()}
        backends.update(self.rerankers)
        self.batcher = Batcher(
            backends,
            max_batch_tokens=config.max_batch_tokens,
            max_batch_size=config.max_batch_size,
            max_wait=config.max_wait_ms / 1000.0,
            max_queue=config.max_queue,
            max_queue_seconds=config.max_queue_seconds,
            metrics=self.metrics,
            warmup=self._warm_up if config.warmup else None,
            torch_threads=config.torch_threads,
        )
        self.batcher.load_hint = lambda: self.in_flight

    def schema_limits(self) -> openapi.SchemaLimits:
        """Bounds of the request schema: the largest token id read, dimensions, prompt names."""
        served = list(self.served.values())
        if self.config.token_ids == "openai":
            max_token_id = CL100K_MAX_TOKEN
        else:
            max_token_id = max(s.vocab_size for s in served) - 1
        names = sorted({name for s in served for name in s.model.prompts})
        return openapi.SchemaLimits(max_token_id, max(s.dim for s in served), names)

    def _warm_up(self) -> None:
        for name, (tokens, seconds) in warm_up(self.served.values()).items():
            self.batcher.seed_throughput(name, tokens, seconds)
        for name, reranker in self.rerankers.items():
            self.batcher.seed_throughput(name, *reranker.warm_up())
        if self.config.token_ids == "openai":
            try:
                self.openai_tokens.load()
            except ApiError as exc:  # text requests are served anyway; token-id ones say why not
                logger.warning("%s", exc.message)

    # ------------------------------------------------------------------ shutdown
    def begin_shutdown(self) -> None:
        """A shutdown starts (called on the event loop): refuse new requests, and answer 503 to those still
        waiting ``shutdown_grace_s`` from now."""
        if self.draining:
            return
        self.draining = True
        asyncio.get_running_loop().call_later(self.config.shutdown_grace_s, self._grace_over.set)

    # ------------------------------------------------------------------ POST /v1/embeddings
    async def embeddings(self, request: Request) -> Response:
        return await self.answer(request, "embeddings", self._embed)

    async def answer(
        self, request: Request, endpoint: str, handle: Callable[[Request, float], Awaitable[Response]]
    ) -> Response:
        """Run a request's handler (given the request and its start time): a client that left is 499, an
        ApiError its body (after reading what is left of the request), anything else 500."""
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        self.in_flight += 1
        try:
            return await handle(request, start)
        except ClientGone:
            self.metrics.count_request(endpoint, CLIENT_CLOSED_REQUEST, "client_closed_request")
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it
        except ApiError as exc:
            await self._finish_reading(request, exc)
            return self.error_response(exc, endpoint)
        except Exception as exc:
            logger.exception("%s request failed", endpoint)
            return self.error_response(internal_error(exc), endpoint)
        finally:
            self.metrics.in_flight.dec()
            self.in_flight -= 1

    async def _embed(self, request: Request, start: float) -> Response:
        """Admit, read, resolve the model and side, tokenize, wait for the batcher, answer."""
        self._admit(request)
        req = await self._read_request(request)
        logged = access_record(request.scope)
        logged.model, logged.texts = req.model or self.default_name, req.count
        model, suffix = self.resolve_model(req)
        prompt = model.prompt_for(SideChoice(req.input_type, req.prompt_name, suffix))
        inputs = await self._tokenize(model, prompt, req)
        tokens = logged.tokens = sum(len(x) for x in inputs.ids)
        pooled = await self.wait_result(request, self._submit(model.name, inputs))
        vectors = finish_vectors(pooled, req.dimensions, model.dim)
        body = render_embeddings(vectors, req.encoding_format, req.model or model.name, tokens)
        self._count_embedded(model.name, inputs, tokens, time.perf_counter() - start)
        headers = {TRUNCATED_HEADER: str(inputs.truncated)}
        return Response(body, media_type="application/json", headers=headers)

    def _admit(self, request: Request) -> None:
        """Refusals that need no body: a shutdown under way, a missing key, a body that is not JSON."""
        if self.draining:
            raise _shutting_down()
        self.check_key(request)
        check_json_body(request)

    async def _read_request(self, request: Request) -> EmbeddingRequest:
        return parse_embedding_request(await self.read_json(request))

    async def admitted_json(self, request: Request) -> Any:
        """The JSON body of a request that passes the refusals needing no body (:meth:`_admit`)."""
        self._admit(request)
        return await self.read_json(request)

    async def read_json(self, request: Request) -> Any:
        """The decoded JSON body, read within the size and time limits (after :meth:`_admit`)."""
        config = self.config
        try:
            raw = await read_body(
                request.receive, _headers(request), config.max_request_bytes, config.body_timeout_s
            )
        finally:
            # Read to its end, or as far as an answer that closes the connection: nothing left to drain.
            request.scope["m3e.body_read"] = True
        return parse_json(raw)

    def resolve_model(self, req: EmbeddingRequest) -> tuple[ServedModel, str | None]:
        """The model the request names (or the default) and the side after a ``:`` in its name, if any,
        checked against the request's ``dimensions``."""
        name = req.model or self.default_name
        model, suffix = self.names.get(name), None
        if model is None and ":" in name:
            base, _, suffix = name.rpartition(":")
            model = self.names.get(base)
        if model is None:
            raise ApiError(
                404,
                f"The model `{name}` does not exist. Served models: {', '.join(self.names)} "
                "(each also as NAME:query and NAME:document).",
                param="model",
                code="model_not_found",
            )
        if req.dimensions is not None and req.dimensions > model.dim:
            raise bad_request(
                f"Invalid value for 'dimensions': {req.dimensions}. "
                f"Model `{name}` has {model.dim} dimensions.",
                param="dimensions",
                code="invalid_value",
            )
        return model, suffix

    async def _tokenize(self, model: ServedModel, prompt: Prompt, req: EmbeddingRequest) -> TokenizedInputs:
        """The request's inputs as token ids; a big request is tokenized in a thread, off the event loop."""
        if model.read_cost(req.texts, req.token_ids) <= _INLINE_TOKENIZE_CHARS:
            return self._inputs(model, prompt, req)
        return await asyncio.to_thread(self._inputs, model, prompt, req)

    def _inputs(self, model: ServedModel, prompt: Prompt, req: EmbeddingRequest) -> TokenizedInputs:
        on_long = self.config.on_long_input
        if req.texts is not None:
            return model.tokenize_texts(req.texts, prompt, on_long)
        ids = req.token_ids or []
        if self.config.token_ids == "model":
            return model.prepare_token_ids(ids, prompt, on_long)
        texts = self.openai_tokens.decode(ids, model.max_read_ids)
        return model.tokenize_texts(texts, prompt, on_long)

    def _submit(self, model_name: str, inputs: TokenizedInputs) -> Future[np.ndarray]:
        return self.submit(model_name, inputs.ids, inputs.prompt_length)

    def submit(
        self,
        model_name: str,
        ids: list[list[int]],
        prompt_length: int = 0,
        segments: list[list[int]] | None = None,
    ) -> Future[np.ndarray]:
        """Queue token ids (a reranker's pairs with their segment ids); a full queue is 429 with Retry-After,
        a stopping server 503."""
        try:
            return self.batcher.submit(model_name, ids, prompt_length, segments=segments)
        except QueueFull as exc:
            raise _overloaded(exc) from None
        except ShuttingDown:
            raise _shutting_down() from None

    async def wait_result(self, request: Request, future: Future[_T]) -> _T:
        """The job's result (pooled vectors, a reranker's scores, a search's hits); if the client disconnects
        first, or the shutdown's grace runs out, the job is cancelled (it leaves the batcher or the search
        queue) and this raises ClientGone or 503."""
        result = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(wait_for_disconnect(request.receive))
        over = asyncio.ensure_future(self._grace_over.wait())
        waiting: list[asyncio.Future[Any]] = [result, gone, over]
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            over.cancel()
        if result in done:
            return result.result()
        result.cancel()  # the batcher skips a cancelled job
        if gone in done:
            raise ClientGone
        raise _shutting_down()

    async def _finish_reading(self, request: Request, error: ApiError) -> None:
        """Before an error answer, read what is left of the body (bounded): a client still sending it would
        see a connection reset instead of the answer."""
        if request.scope.get("m3e.body_read") or error.headers.get("Connection") == "close":
            return
        if not await discard_body(request.receive, self.config.body_timeout_s):
            error.headers["Connection"] = "close"

    def _count_embedded(self, model_name: str, inputs: TokenizedInputs, tokens: int, seconds: float) -> None:
        metrics = self.metrics
        metrics.texts.labels(model_name).inc(len(inputs.ids))
        metrics.tokens.labels(model_name).inc(tokens)
        if inputs.truncated:
            metrics.truncated.labels(model_name).inc(inputs.truncated)
        metrics.latency.labels(model_name).observe(seconds)
        metrics.count_request("embeddings", 200)

    # ------------------------------------------------------------------ GET /v1/models[/{model}]
    async def list_models(self, request: Request) -> Response:
        try:
            self.check_key(request)
        except ApiError as exc:
            return self.error_response(exc, "models")
        self.metrics.count_request("models", 200)
        names = [*self.names, *self.reranker_names]
        details = {name: self.model_details(name) for name in names}
        return JSONResponse(render_models(names, self.created, details=details))

    async def get_model(self, request: Request, model: str) -> Response:
        try:
            self.check_key(request)
            name = model
            if name not in self.names and name not in self.reranker_names:
                raise ApiError(
                    404, f"The model `{name}` does not exist.", param="model", code="model_not_found"
                )
        except ApiError as exc:
            return self.error_response(exc, "models")
        self.metrics.count_request("models", 200)
        return JSONResponse(render_model(name, self.created, details=self.model_details(name)))

    def model_details(self, name: str) -> dict[str, object]:
        """m3e's fields of a served name: size, prompts, how a request picks its side, and its aliases (or,
        for an alias, the model it names); a reranker's say so (``type``)."""
        if name in self.reranker_names:
            return self._reranker_details(name)
        served = self.names[name]
        details: dict[str, object] = {
            "type": "embedding",
            "dimensions": served.dim,
            "max_length": served.max_length,
            "prompts": dict(served.model.prompts),
            "default_side": served.default_side,
            "input_types": list(INPUT_TYPES),
        }
        if name == served.name:
            details["aliases"] = [alias for alias, target in self.config.aliases.items() if target == name]
        else:
            details["alias_of"] = served.name
        return details

    def _reranker_details(self, name: str) -> dict[str, object]:
        served = self.reranker_names[name]
        details: dict[str, object] = {
            "type": "reranker",
            "max_length": served.max_length,
            "max_windows": served.max_windows,
            "activation": served.reranker.activation,
        }
        if name == served.name:
            details["aliases"] = [alias for alias, target in self.config.aliases.items() if target == name]
        else:
            details["alias_of"] = served.name
        return details

    # ------------------------------------------------------------------ GET /health, GET /metrics
    async def health(self) -> Response:
        if not self.batcher.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        if self.batcher.warmup_error:
            return JSONResponse({"status": "error", "error": self.batcher.warmup_error}, status_code=503)
        body: dict[str, object] = {"status": "ok", "models": list(self.served)}
        if self.rerankers:
            body["rerankers"] = list(self.rerankers)
        return JSONResponse(body)

    async def prometheus_metrics(self) -> Response:
        data, content_type = self.metrics.render()
        return Response(data, media_type=content_type)

    # ------------------------------------------------------------------ shared by the handlers
    def check_key(self, request: Request) -> None:
        """Raise 401 unless the request carries the configured API key (none configured: open)."""
        check_api_key(request, self.config.api_key)

    def error_response(self, exc: ApiError, endpoint: str) -> Response:
        self.metrics.count_request(endpoint, exc.status, exc.code or exc.type)
        return Response(
            exc.json_bytes(), status_code=exc.status, media_type="application/json", headers=exc.headers
        )


def check_api_key(request: Request, api_key: str | None) -> None:
    """Raise 401 unless ``Authorization: Bearer <api_key>``; ``api_key`` None lets every request in."""
    if api_key is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if not auth:
        raise ApiError(
            401,
            "You didn't provide an API key. Send it in an Authorization header: 'Authorization: Bearer KEY'.",
            code="invalid_api_key",
        )
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


def check_json_body(request: Request) -> None:
    """415 unless the body is declared JSON. A browser page may send a text/plain body to any site without
    asking first (no CORS preflight); an application/json one it may not."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        shown = f"'{media_type}'" if media_type else "none"
        raise ApiError(
            415,
            f"The request body must be JSON, sent with 'Content-Type: application/json' (this one: {shown}).",
            param=None,
            code="unsupported_media_type",
        )


def _headers(request: Request) -> dict[str, str]:
    return {key: request.headers[key] for key in ("content-length", "expect") if key in request.headers}


def _overloaded(exc: QueueFull) -> ApiError:
    work = f", about {exc.queued_seconds:.0f} s of work" if exc.queued_seconds is not None else ""
    return ApiError(
        429,
        f"The server is overloaded ({exc.queued} texts queued{work}). Retry after {exc.retry_after} s.",
        type="requests",
        param=None,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(exc.retry_after)},
    )


def _shutting_down() -> ApiError:
    return ApiError(
        503,
        "The server is shutting down.",
        type=SERVER_ERROR,
        param=None,
        code="shutting_down",
        headers={"Connection": "close"},
    )


def internal_error(exc: Exception) -> ApiError:
    return ApiError(
        500,
        f"The server had an error processing the request: {type(exc).__name__}.",
        type=SERVER_ERROR,
        param=None,
    )
