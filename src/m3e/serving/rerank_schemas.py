"""Rerank requests and responses in the shapes clients send: Cohere / Jina and TEI, validated by hand.

``POST /v1/rerank`` (and ``/v2/rerank``, ``/rerank`` with ``documents``) reads Cohere's and Jina's request:
``query``, ``documents`` (strings, or objects with a ``text`` field, or with the fields ``rank_fields``
names), ``top_n``, ``return_documents``, ``max_chunks_per_doc`` (windows read per long document),
``max_tokens_per_doc`` (Cohere v2: each document cut after that many tokens); ``priority`` is accepted and
ignored. It answers ``{"id", "model", "results": [{"index", "relevance_score", "document"}], "meta",
"usage"}``: Cohere's fields and Jina's side by side (each client reads its own). ``return_documents`` is true
by default, as with Jina (Cohere's clients read the documents when present); Cohere v2 never returns them.

``POST /rerank`` with ``texts`` is TEI's: ``query``, ``texts``, ``raw_scores`` (the logits), ``return_text``,
``truncate`` (true: the first window of a long text only; false or absent: its windows, as everywhere in m3e,
where TEI would refuse it), ``truncation_direction`` (``right`` only). It answers ``[{"index", "score",
"text"}]``, best first.

Every error is OpenAI's body naming the ``param``, as for embeddings.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from m3e.serving.errors import bad_request
from m3e.serving.schemas import check_encodable, json_type, required_query
from m3e.serving.served_reranker import MAX_WINDOWS_PER_DOCUMENT

RerankShape = Literal["cohere", "cohere_v2", "tei"]
MAX_DOCUMENTS = 1000
# Cohere's bound on a request's work: documents times the windows read per document.
MAX_WINDOWS_PER_REQUEST = 10_000


@dataclass
class RerankRequest:
    shape: RerankShape
    query: str
    documents: list[str]  # the texts scored
    sent: list[Any]  # the documents as sent (a string or an object), echoed by return_documents
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = True
    max_windows: int | None = None  # windows read per document (None: the model's)
    max_tokens_per_doc: int | None = None
    raw_scores: bool = False  # TEI: the logits, not the activation's scores


def rerank_shape(obj: Any, path: str) -> RerankShape:
    """Which client's request this is: TEI's has ``texts``; Cohere's and Jina's have ``documents``."""
    if not isinstance(obj, dict):
        raise bad_request("The request body must be a JSON object.", param=None)
    if path.startswith("/v2/"):
        return "cohere_v2"
    if path == "/rerank" and "texts" in obj and "documents" not in obj:
        return "tei"
    return "cohere"


def parse_rerank_request(obj: dict[str, Any], shape: RerankShape, max_documents: int) -> RerankRequest:
    """Validate a decoded JSON body of ``shape``; raises ApiError(400) naming the bad parameter."""
    query = required_query(obj)
    if shape == "tei":
        return _parse_tei(obj, query, max_documents)
    return _parse_cohere(obj, query, shape, max_documents)


def _parse_cohere(obj: dict[str, Any], query: str, shape: RerankShape, max_documents: int) -> RerankRequest:
    model = _optional(obj, "model", str)
    rank_fields = _rank_fields(obj.get("rank_fields"))
    sent = _array(obj, "documents", max_documents)
    documents = [_document_text(item, i, rank_fields) for i, item in enumerate(sent)]
    top_n = _positive_int(obj, "top_n")
    return_documents = _optional(obj, "return_documents", bool)
    if obj.get("relevant_spans") is not None:
        raise bad_request(
            "'relevant_spans' is not supported by this server; leave it out.",
            param="relevant_spans",
            code="unsupported_parameter",
        )
    _optional(obj, "priority", int)
    max_windows = _positive_int(obj, "max_chunks_per_doc")
    if max_windows is not None and max_windows > MAX_WINDOWS_PER_DOCUMENT:
        raise bad_request(
            f"'max_chunks_per_doc' is {max_windows}; at most {MAX_WINDOWS_PER_DOCUMENT} windows are read per "
            "document.",
            param="max_chunks_per_doc",
            code="invalid_value",
        )
    if max_windows is not None and max_windows * len(documents) > MAX_WINDOWS_PER_REQUEST:
        raise bad_request(
            f"{len(documents)} documents x max_chunks_per_doc {max_windows} is more than "
            f"{MAX_WINDOWS_PER_REQUEST} windows; send fewer documents or a smaller max_chunks_per_doc.",
            param="max_chunks_per_doc",
            code="invalid_value",
        )
    return RerankRequest(
        shape,
        query,
        documents,
        sent,
        model=model,
        top_n=top_n,
        return_documents=shape != "cohere_v2" and return_documents is not False,
        max_windows=max_windows,
        max_tokens_per_doc=_positive_int(obj, "max_tokens_per_doc"),
    )


def _parse_tei(obj: dict[str, Any], query: str, max_documents: int) -> RerankRequest:
    sent = _array(obj, "texts", max_documents)
    for i, item in enumerate(sent):
        if not isinstance(item, str):
            raise bad_request(f"texts[{i}] is {json_type(item)}; texts are strings.", param="texts")
        check_encodable(item, "texts", f"texts[{i}]")
    direction = _optional(obj, "truncation_direction", str)
    if direction is not None and direction.lower() != "right":
        raise bad_request(
            f"Invalid value for 'truncation_direction': {direction!r}. This server keeps a text's start "
            "(Right).",
            param="truncation_direction",
            code="invalid_value",
        )
    truncate = _optional(obj, "truncate", bool)
    return RerankRequest(
        "tei",
        query,
        list(sent),
        list(sent),
        model=_optional(obj, "model", str),
        return_documents=bool(_optional(obj, "return_text", bool)),
        max_windows=1 if truncate else None,
        raw_scores=bool(_optional(obj, "raw_scores", bool)),
    )


def _array(obj: dict[str, Any], key: str, max_items: int) -> list[Any]:
    value = obj.get(key)
    if value is None:
        raise bad_request(
            f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
        )
    if not isinstance(value, list):
        raise bad_request(f"'{key}' must be an array, not {json_type(value)}.", param=key)
    if not value:
        raise bad_request(f"'{key}' cannot be an empty array.", param=key, code="invalid_value")
    if len(value) > max_items:
        raise bad_request(
            f"'{key}' has {len(value)} items; at most {max_items} are allowed per request.",
            param=key,
            code="invalid_value",
        )
    return value


def _rank_fields(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(f, str) and f for f in value):
        raise bad_request("'rank_fields' must be a non-empty array of field names.", param="rank_fields")
    return list(value)


def _document_text(item: Any, index: int, rank_fields: list[str] | None) -> str:
    """A document's text: the string itself, an object's ``text``, or (``rank_fields``) the named fields of an
    object as ``field: value`` lines, in that order."""
    where = f"documents[{index}]"
    if isinstance(item, str):
        check_encodable(item, "documents", where)
        return item
    if not isinstance(item, dict):
        raise bad_request(
            f"{where} is {json_type(item)}; a document is a string or an object with 'text'.",
            param="documents",
        )
    if rank_fields is None:
        text = item.get("text")
        if not isinstance(text, str):
            raise bad_request(f"{where} has no 'text' string (or give 'rank_fields').", param="documents")
        check_encodable(text, "documents", where)
        return text
    lines = [f"{name}: {_field_text(item[name])}" for name in rank_fields if item.get(name) is not None]
    if not lines:
        raise bad_request(f"{where} has none of the rank_fields {rank_fields}.", param="documents")
    text = "\n".join(lines)
    check_encodable(text, "documents", where)
    return text


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _optional(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        expected = {str: "a string", bool: "a boolean", int: "an integer"}[kind]
        raise bad_request(f"'{key}' must be {expected}, not {json_type(value)}.", param=key)
    if isinstance(value, str):
        check_encodable(value, key, f"'{key}'")
    return value


def _positive_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request(
            f"Invalid value for '{key}': {value!r}. It must be a positive integer.",
            param=key,
            code="invalid_value",
        )
    return value


# ---------------------------------------------------------------------- responses


def ranked(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Document indices by score, best first (ties: input order, as ``Reranker.rank``), the first ``top_n``."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    return order if top_n is None else order[:top_n]


def render_rerank(req: RerankRequest, scores: np.ndarray, model: str, tokens: int) -> Any:
    """The response body of the request's shape."""
    order = ranked(scores, req.top_n)
    if req.shape == "tei":
        return [_tei_result(req, i, float(scores[i])) for i in order]
    results = [_cohere_result(req, i, float(scores[i])) for i in order]
    meta: dict[str, Any] = {
        "api_version": {"version": "2" if req.shape == "cohere_v2" else "1"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": tokens, "output_tokens": 0},
    }
    return {
        "id": str(uuid.uuid4()),
        "model": model,
        "results": results,
        "meta": meta,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _cohere_result(req: RerankRequest, index: int, score: float) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "relevance_score": score}
    if req.return_documents:
        sent = req.sent[index]
        out["document"] = sent if isinstance(sent, dict) else {"text": sent}
    return out


def _tei_result(req: RerankRequest, index: int, score: float) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "score": score}
    if req.return_documents:
        out["text"] = req.documents[index]
    return out
