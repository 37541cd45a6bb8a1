"""The server's OpenAPI schema: what ``/openapi.json`` and ``/docs`` show, what clients are generated from.

The handlers validate requests by hand (:mod:`m3e.serving.schemas`, so every error names its ``param`` in
OpenAI's body); these pydantic models only describe the same contract. They live at module level, so every
name they refer to resolves when the schema is built.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from m3e.serving.schemas import MAX_INPUTS

NonEmptyText = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]
TokenIdArray = Annotated[list[TokenId], Field(min_length=1)]
InputType = Literal[
    "query",
    "search_query",
    "retrieval.query",
    "document",
    "search_document",
    "passage",
    "retrieval.passage",
    "classification",
    "clustering",
]


class EmbeddingRequestBody(BaseModel):
    """``POST /v1/embeddings``: OpenAI's request, and the texts' side (``input_type``, ``prompt_name``)."""

    model_config = ConfigDict(title="EmbeddingRequest")

    input: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_INPUTS)]
        | TokenIdArray
        | Annotated[list[TokenIdArray], Field(min_length=1, max_length=MAX_INPUTS)]
    ) = Field(
        description="A text, texts, one text as token ids, or texts as token ids. Token ids are cl100k_base "
        "ids as OpenAI reads them (a server started with --token-ids model reads the model's own ids)."
    )
    model: str | None = Field(
        None,
        description="A served model or alias (default: the first served); NAME:query or NAME:document also "
        "sets the side of the texts.",
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default) or base64: little-endian float32 bytes."
    )
    dimensions: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Keep the first N dimensions, normalised again."
    )
    user: str | None = Field(None, description="Accepted and ignored, as OpenAI's end-user id.")
    input_type: InputType | None = Field(
        None,
        description="The side of the texts: query / search_query / retrieval.query get the model's query "
        "prompt, document / search_document / passage / retrieval.passage its document prompt, "
        "classification / clustering the model's prompt of that name or else its default prompt. None: the "
        "server's --default-side.",
    )
    prompt_name: str | None = Field(
        None, description="Any prompt the model defines, by name (GET /v1/models)."
    )


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="The vector, or its float32 bytes in base64.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body, on every error."""

    error: ErrorDetail


class ModelObject(BaseModel):
    """OpenAI's model object, then m3e's fields."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    type: Literal["embedding", "reranker"] | None = Field(None, description="What the model does.")
    dimensions: int | None = None
    max_length: int | None = None
    prompts: dict[str, str] | None = None
    default_side: Literal["query", "document", "none"] | None = None
    input_types: list[str] | None = None
    aliases: list[str] | None = Field(None, description="Other names of this model (on a served model).")
    alias_of: str | None = Field(None, description="The served model this name stands for (on an alias).")
    max_windows: int | None = Field(None, description="A reranker's windows read per long document.")
    activation: str | None = Field(
        None, description="A reranker's score function: sigmoid, tanh or identity."
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankRequestBody(BaseModel):
    """``POST /v1/rerank``: Cohere's and Jina's request."""

    model_config = ConfigDict(title="RerankRequest")

    query: NonEmptyText
    documents: list[str | RerankDocument] = Field(
        min_length=1, description="Strings, or objects with 'text' (other fields are echoed back)."
    )
    model: str | None = Field(None, description="A served reranker or alias (default: the first served).")
    top_n: Annotated[int, Field(ge=1)] | None = Field(None, description="Keep the best N (default: all).")
    return_documents: bool | None = Field(None, description="Echo each document (default true; never on v2).")
    rank_fields: list[str] | None = Field(None, description="Score these fields of object documents.")
    max_chunks_per_doc: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None, description="Windows read per long document (default: the reranker's)."
    )
    max_tokens_per_doc: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Cut each document after this many tokens."
    )


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    meta: dict[str, Any]
    usage: Usage


class TeiRerankRequestBody(BaseModel):
    """``POST /rerank`` with ``texts``: TEI's request (with ``documents`` it is Cohere's)."""

    model_config = ConfigDict(title="TeiRerankRequest")

    query: NonEmptyText
    texts: list[str] = Field(min_length=1)
    raw_scores: bool | None = Field(None, description="The logits instead of the activation's scores.")
    return_text: bool | None = None
    truncate: bool | None = Field(None, description="true: the first window only; else the best window.")
    truncation_direction: Literal["Right", "right"] | None = None


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class SearchRequestBody(BaseModel):
    """``POST /v1/search``."""

    model_config = ConfigDict(title="SearchRequest")

    query: NonEmptyText
    index: str | None = Field(None, description="A served index (optional when one is served).")
    k: Annotated[int, Field(ge=1, le=1000)] | None = Field(None, description="Results (default 10).")
    mode: Literal["dense", "sparse", "hybrid"] | None = Field(None, description="Default: the index's.")
    filter: dict[str, str | int | float | bool] | None = Field(None, description="Field -> value, all match.")
    fusion: Literal["rrf", "weighted"] | None = None
    dense_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    group: bool | None = Field(None, description="Documents (default) or chunks.")
    rerank: bool | str | None = Field(None, description="A served reranker, or true for the first.")
    candidates: Annotated[int, Field(ge=1, le=1000)] | None = Field(None, description="Default 50.")
    colbert: bool | None = None


class SearchResponse(BaseModel):
    object: Literal["search"]
    index: str
    query: str
    mode: str
    terms: list[str] = Field(description="The query's words as the sparse side segments them.")
    results: list[dict[str, Any]] = Field(description="As `m3e search --json` prints them.")


class IndexObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["index"]


class IndexList(BaseModel):
    object: Literal["list"]
    data: list[IndexObject]


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    models: list[str] | None = None
    rerankers: list[str] | None = None
    error: str | None = None


def _error(description: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()
        }
    return out


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _error("No or a wrong API key (a server started with --api-key).")
}
EMBEDDING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": EmbeddingResponse,
        "description": "One embedding per input, in input order.",
        "headers": {
            "X-M3E-Truncated": {
                "description": "How many inputs were cut at the model's max length.",
                "schema": {"type": "string"},
            }
        },
    },
    400: _error("Invalid request: the message names the parameter."),
    **UNAUTHORIZED,
    404: _error("Unknown model."),
    408: _error("The body did not arrive within the server's time limit (the connection is closed)."),
    413: _error("The body is larger than the server's limit."),
    415: _error("The body is not declared as JSON (Content-Type: application/json)."),
    429: _error("The server is overloaded.", {"Retry-After": "Seconds until the queued work is done."}),
    500: _error("An error inside the server."),
    501: _error("Token ids cannot be decoded on this server (tiktoken or its cl100k_base file missing)."),
    503: _error("The server is shutting down."),
}
_REQUEST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request: the message names the parameter."),
    **UNAUTHORIZED,
    408: _error("The body did not arrive within the server's time limit (the connection is closed)."),
    413: _error("The body is larger than the server's limit."),
    415: _error("The body is not declared as JSON (Content-Type: application/json)."),
    429: _error("The server is overloaded.", {"Retry-After": "Seconds until the queued work is done."}),
    500: _error("An error inside the server."),
    503: _error("The server is shutting down."),
}
RERANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": RerankResponse, "description": "The documents by score, best first."},
    **_REQUEST_ERRORS,
    404: _error("Unknown reranker, or none served."),
}
TEI_RERANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": list[TeiRank], "description": "The texts by score, best first (TEI's shape)."},
    **_REQUEST_ERRORS,
    404: _error("Unknown reranker, or none served."),
}
SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SearchResponse},
    **_REQUEST_ERRORS,
    404: _error("Unknown index or reranker."),
}
INDEXES_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": IndexList}, **UNAUTHORIZED}
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The search page."}
}
MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": ModelList}, **UNAUTHORIZED}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelObject},
    **UNAUTHORIZED,
    404: _error("Unknown model."),
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "Ready."},
    503: {"model": Health, "description": "Warming up, or warm-up failed."},
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}
}


@dataclass(frozen=True)
class SchemaLimits:
    """What the request schema can say of the served models: largest token id, dimensions, prompt names."""

    max_token_id: int
    max_dimensions: int
    prompt_names: list[str]


def install_openapi(app: FastAPI, limits: SchemaLimits) -> None:
    """Build ``app``'s schema once, with the embeddings request body the handler validates by hand, and
    the pages that show it (:func:`install_docs`)."""
    install_docs(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _drop_validation_errors(schema)
            _add_host_refusal(schema)
            _add_request_body(schema, limits)
            _add_other_request_bodies(schema)
            _add_bearer_auth(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema


DOCS_ASSETS_PATH = "/docs-assets"


def offline_docs_assets() -> Path | None:
    """Swagger UI's and ReDoc's scripts as the PyPI package fastapi-offline (serve extra) ships them."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    static = Path(spec.origin).parent / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` in place of FastAPI's own pages.

    Their scripts come from this server when fastapi-offline is installed, so the pages render on a
    machine without network; else from FastAPI's default CDN, as FastAPI's pages load them."""
    app.router.routes[:] = [
        r for r in app.router.routes if getattr(r, "path", None) not in ("/docs", "/redoc")
    ]
    assets = offline_docs_assets()
    if assets is not None:
        app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=assets), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui() -> HTMLResponse:
        title = f"{app.title} - Swagger UI"
        if assets is None:
            return get_swagger_ui_html(openapi_url=openapi_url, title=title)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
        )

    async def redoc() -> HTMLResponse:
        title = f"{app.title} - ReDoc"
        if assets is None:
            return get_redoc_html(openapi_url=openapi_url, title=title)
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
        )

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)


def _drop_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 for the parameters it validates; the server answers 400 (OpenAI's body)."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _add_host_refusal(schema: dict[str, Any]) -> None:
    """Every path answers 403 to a Host name it does not answer to (m3e.serving.hosts)."""
    refusal = {
        "description": "The Host header names no host this server answers to.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation["responses"].setdefault("403", refusal)


def _add_request_body(schema: dict[str, Any], limits: SchemaLimits) -> None:
    body = EmbeddingRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")
    _set_limits(body["properties"], limits)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(body.pop("$defs", {}))
    components["EmbeddingRequest"] = body
    schema["paths"]["/v1/embeddings"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}},
    }


# Hand-validated bodies of the other POST routes: path -> the model that describes it.
_OTHER_BODIES: dict[str, type[BaseModel]] = {
    "/v1/rerank": RerankRequestBody,
    "/v2/rerank": RerankRequestBody,
    "/rerank": TeiRerankRequestBody,
    "/v1/search": SearchRequestBody,
}


def _add_other_request_bodies(schema: dict[str, Any]) -> None:
    """The rerank and search bodies, for the routes in the schema (those of a server that serves them)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, model in _OTHER_BODIES.items():
        if path not in schema["paths"]:
            continue
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        name = str(body.get("title", model.__name__))
        components[name] = body
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }


def _set_limits(properties: dict[str, Any], limits: SchemaLimits) -> None:
    """The served models' bounds on token ids, dimensions and prompt names, into the generated schema."""

    def bound_ids(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer":
                node["maximum"] = limits.max_token_id
            for child in node.values():
                bound_ids(child)
        elif isinstance(node, list):
            for child in node:
                bound_ids(child)

    bound_ids(properties["input"])
    for option in properties["dimensions"]["anyOf"]:
        if option.get("type") == "integer":
            option["maximum"] = limits.max_dimensions
    if limits.prompt_names:
        for option in properties["prompt_name"]["anyOf"]:
            if option.get("type") == "string":
                option["enum"] = list(limits.prompt_names)


def _add_bearer_auth(schema: dict[str, Any]) -> None:
    """The API key, as OpenAI's clients send it (needed only when the server has one)."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "--api-key KEY of the server"}
    for path in ("/v1/embeddings", "/v1/models", "/v1/models/{model}", *_OTHER_BODIES, "/v1/indexes"):
        for operation in schema["paths"].get(path, {}).values():
            operation["security"] = [{}, {"bearer": []}]
