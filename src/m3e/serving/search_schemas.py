"""The ``POST /v1/search`` request, validated by hand (every error names its ``param``, as for embeddings).

``index`` (a served name; optional when one is served), ``query``, ``k``, ``mode`` (dense / sparse / hybrid;
default the index's), ``filter`` (metadata field -> value, all must match), ``fusion`` and ``dense_weight``
(hybrid), ``group`` (documents, the default, or chunks), ``rerank`` (a served reranker's name, or true for the
first one) with ``candidates``, and ``colbert`` (BGE-M3's re-scoring). The answer is
``{"object": "search", "index", "query", "mode", "terms", "results"}``: ``results`` are the objects
``m3e search --json`` prints (``rank`` first), ``terms`` the query's words as the sparse side segments them
(what a page highlights).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from m3e.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_FUSION, FUSIONS, RRF_K, Fusion
from m3e.index import MODES
from m3e.serving.errors import ApiError, bad_request
from m3e.serving.schemas import check_encodable, json_type, required_query

MAX_K = 1000
MAX_CANDIDATES = 1000
DEFAULT_K = 10
DEFAULT_CANDIDATES = 50


@dataclass
class SearchRequest:
    index: str | None
    query: str
    k: int = DEFAULT_K
    mode: str | None = None
    filters: dict[str, str] | None = None
    fusion: Fusion | None = None
    group: bool = True
    rerank: str | bool | None = None  # a reranker's name, True for the first served, None / False: none
    candidates: int = DEFAULT_CANDIDATES
    colbert: bool = False


def parse_search_request(obj: Any) -> SearchRequest:
    """Validate a decoded JSON body; raises ApiError(400) naming the bad parameter."""
    if not isinstance(obj, dict):
        raise bad_request("The request body must be a JSON object.", param=None)
    query = required_query(obj)
    return SearchRequest(
        index=_string(obj, "index"),
        query=query,
        k=_bounded_int(obj, "k", DEFAULT_K, MAX_K),
        mode=_choice(obj, "mode", MODES),
        filters=_filters(obj.get("filter")),
        fusion=_fusion(obj),
        group=_boolean(obj, "group", True),
        rerank=_rerank(obj.get("rerank")),
        candidates=_bounded_int(obj, "candidates", DEFAULT_CANDIDATES, MAX_CANDIDATES),
        colbert=_boolean(obj, "colbert", False),
    )


def _string(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{key}' must be a string, not {json_type(value)}.", param=key)
    return value


def _boolean(obj: dict[str, Any], key: str, default: bool) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{key}' must be a boolean, not {json_type(value)}.", param=key)
    return value


def _bounded_int(obj: dict[str, Any], key: str, default: int, most: int) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise bad_request(
            f"Invalid value for '{key}': {value!r}. It must be an integer from 1 to {most}.",
            param=key,
            code="invalid_value",
        )
    return value


def _choice(obj: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = obj.get(key)
    if value is not None and value not in allowed:
        raise bad_request(
            f"Invalid value for '{key}': {value!r}. Allowed values: {', '.join(allowed)}.",
            param=key,
            code="invalid_value",
        )
    return value


def _filters(value: Any) -> dict[str, str] | None:
    """``{"field": value}``: all must match; a number or boolean matches its text (metadata is kept as text)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(
            f"'filter' must be an object of field -> value, not {json_type(value)}.", param="filter"
        )
    out: dict[str, str] = {}
    for field, wanted in value.items():
        if isinstance(wanted, bool):
            out[field] = "true" if wanted else "false"
        elif isinstance(wanted, (str, int, float)):
            out[field] = str(wanted)
        else:
            raise bad_request(
                f"filter[{field!r}] is {json_type(wanted)}; a filter value is a string or a number.",
                param="filter",
            )
        check_encodable(out[field], "filter", f"filter[{field!r}]")
    return out or None


def _fusion(obj: dict[str, Any]) -> Fusion:
    method = _choice(obj, "fusion", FUSIONS) or DEFAULT_FUSION
    weight = obj.get("dense_weight", DEFAULT_DENSE_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise bad_request(
            f"Invalid value for 'dense_weight': {weight!r}. It must be a number from 0 to 1.",
            param="dense_weight",
            code="invalid_value",
        )
    return Fusion(method, dense_weight=float(weight), rrf_k=RRF_K)


def _rerank(value: Any) -> str | bool | None:
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value):
        return value
    raise bad_request(
        f"'rerank' must be a served reranker's name or true, not {json_type(value)}.", param="rerank"
    )


def index_not_found(name: str, served: Iterable[str]) -> ApiError:
    return ApiError(
        404,
        f"The index `{name}` is not served. Served indexes: {', '.join(served) or 'none'}.",
        param="index",
        code="index_not_found",
    )
