"""The OpenAI embeddings request and response, validated and rendered by hand.

Hand validation (not a pydantic union) keeps the contract exact: a list of booleans or of
fractional numbers is not silently read as token ids, and every error names the offending
``param`` with OpenAI's error body. :mod:`m3e.serving.openapi` describes the same contract.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from m3e.deprecation import renamed_attributes
from m3e.errors import M3EError
from m3e.serving.errors import bad_request

MAX_INPUTS = 2048
ENCODING_FORMATS = ("float", "base64")


@dataclass
class EmbeddingRequest:
    model: str | None
    texts: list[str] | None  # text inputs, or
    token_ids: list[list[int]] | None  # token-id inputs (exactly one of the two is set)
    encoding_format: str
    dimensions: int | None
    input_type: str | None = None  # the texts' side, Cohere / Voyage style (m3e.serving.sides)
    prompt_name: str | None = None  # a prompt of the model by name, TEI style

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


def _is_int(x: Any) -> bool:
    """An integer as JSON means it: 3 or 3.0 (JSON Schema's "integer"), not 3.5, and not true/false, which
    arrive as bool, a subclass of int."""
    if isinstance(x, float):
        return x.is_integer()
    return isinstance(x, int) and not isinstance(x, bool)


def _ints(values: list[Any]) -> list[int]:
    """Checked token ids as Python ints (3.0 becomes 3); the list itself when it already holds ints."""
    return values if all(type(v) is int for v in values) else [int(v) for v in values]


def parse_json(raw: bytes | bytearray) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad_request(
            f"We could not parse the JSON body of your request ({exc}). The body must be a JSON object.",
            param=None,
        ) from None


def parse_embedding_request(obj: Any) -> EmbeddingRequest:
    """Validate a decoded JSON body; raises ApiError(400) naming the bad parameter."""
    if not isinstance(obj, dict):
        raise bad_request("The request body must be a JSON object.", param=None)
    model = _optional_string(obj, "model")

    if "input" not in obj or obj["input"] is None:
        raise bad_request(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    texts, token_ids = _parse_input(obj["input"])
    fmt = _parse_encoding_format(obj.get("encoding_format"))
    dims = _parse_dimensions(obj.get("dimensions"))
    _optional_string(obj, "user")
    input_type = _optional_string(obj, "input_type")
    prompt_name = _optional_string(obj, "prompt_name")
    return EmbeddingRequest(model, texts, token_ids, fmt, dims, input_type, prompt_name)


def _optional_string(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{key}' must be a string, not {json_type(value)}.", param=key)
    if value is not None:
        check_encodable(value, key, f"'{key}'")
    return value


def _parse_encoding_format(fmt: Any) -> str:
    if fmt is None:
        return "float"
    if fmt not in ENCODING_FORMATS:
        raise bad_request(
            f"Invalid value for 'encoding_format': {fmt!r}. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return str(fmt)


def _parse_dimensions(dims: Any) -> int | None:
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise bad_request(
            f"Invalid value for 'dimensions': {dims!r}. It must be a positive integer.",
            param="dimensions",
            code="invalid_value",
        )
    return None if dims is None else int(dims)


def _parse_input(value: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, None) or (None, token-id lists); the kind is read from the first item."""
    if isinstance(value, str):
        if value == "":
            raise bad_request("'input' cannot be an empty string.", code="invalid_value")
        check_encodable(value, "input", "'input'")
        return [value], None
    _check_input_array(value, flat_ids=isinstance(value, list) and bool(value) and _is_int(value[0]))
    first = value[0]
    if isinstance(first, str):
        return _parse_texts(value), None
    if _is_int(first):
        return None, [_parse_token_ids(value)]
    if isinstance(first, list):
        return None, _parse_token_id_arrays(value)
    raise bad_request(f"input[0] is {json_type(first)}; expected a string, a token id or a token-id array.")


def _check_input_array(value: Any, flat_ids: bool = False) -> None:
    """An array of inputs within MAX_INPUTS; a flat token-id array is one input, whose ids are bounded as the
    ids of each array in the nested form are (by the body size, and only the first max-length ids are read)."""
    if not isinstance(value, list):
        raise bad_request(
            f"'input' must be a string, an array of strings, an array of token ids or an array of "
            f"token-id arrays, not {json_type(value)}."
        )
    if not value:
        raise bad_request("'input' cannot be an empty array.", code="invalid_value")
    if len(value) > MAX_INPUTS and not flat_ids:
        raise bad_request(
            f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed per request.",
            code="invalid_value",
        )


def _parse_texts(value: list[Any]) -> list[str]:
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise bad_request(f"input[{i}] is {json_type(item)}; all items of a text array must be strings.")
        if item == "":
            raise bad_request(
                f"input[{i}] is an empty string; empty strings cannot be embedded.", code="invalid_value"
            )
        check_encodable(item, "input", f"input[{i}]")
    return list(value)


# JSON's \uD800-\uDFFF escapes decode to lone surrogates: no character, not encodable as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_encodable(text: str, param: str, where: str) -> None:
    """400 for a lone surrogate (a JSON escape such as \\ud800 that encodes no character)."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise bad_request(
            f"{where} holds an unpaired surrogate (\\u{ord(found.group()):04x}) at character "
            f"{found.start()}, which is not valid Unicode text. Send the text as UTF-8.",
            param=param,
            code="invalid_value",
        )


def _parse_token_ids(value: list[Any]) -> list[int]:
    """One token-id array (the whole input)."""
    for i, item in enumerate(value):
        if not _is_int(item):
            raise bad_request(f"input[{i}] is {json_type(item)}; a token-id array holds integers only.")
    return _ints(value)


def _parse_token_id_arrays(value: list[Any]) -> list[list[int]]:
    out: list[list[int]] = []
    for i, item in enumerate(value):
        if not isinstance(item, list):
            raise bad_request(f"input[{i}] is {json_type(item)}; all items must be token-id arrays.")
        if not item:
            raise bad_request(f"input[{i}] is an empty token-id array.", code="invalid_value")
        for j, tok in enumerate(item):
            if not _is_int(tok):
                raise bad_request(f"input[{i}][{j}] is {json_type(tok)}; token ids are integers.")
        out.append(_ints(item))
    return out


def json_type(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, list):
        return "an array"
    if isinstance(x, dict):
        return "an object"
    return type(x).__name__


# ---------------------------------------------------------------------- vectors


def finish_vectors(pooled: np.ndarray, dimensions: int | None, dim: int) -> np.ndarray:
    """Unit vectors as ``encode`` makes them; with ``dimensions``, truncated and re-normalised."""
    if dimensions is not None and dimensions > dim:
        raise M3EError(f"dimensions {dimensions} > model dimension {dim}")
    x: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    if dimensions is not None and dimensions < dim:
        x = x[:, :dimensions]
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float32, copy=False)


def render_embeddings(vectors: np.ndarray, fmt: str, model: str, tokens: int) -> bytes:
    """The response body, serialised directly (faster than building nested dicts for JSON)."""
    parts: list[str] = ['{"object":"list","data":[']
    for i in range(vectors.shape[0]):
        if i:
            parts.append(",")
        parts.append(f'{{"object":"embedding","index":{i},"embedding":{_render_vector(vectors[i], fmt)}}}')
    parts.append(f'],"model":{json.dumps(model, ensure_ascii=False)},')
    parts.append(f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}')
    return "".join(parts).encode("utf-8")


def _render_vector(v: np.ndarray, fmt: str) -> str:
    if fmt == "base64":
        # Little-endian float32 bytes, what the official client decodes with np.frombuffer.
        return '"' + base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii") + '"'
    if not np.isfinite(v).all():  # JSON has no NaN / Infinity
        v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    return json.dumps(v.tolist())


def render_models(
    names: Sequence[str],
    created: int,
    owner: str = "m3e",
    details: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The body of ``GET /v1/models``; ``details``: extra fields of each model by name."""
    details = details or {}
    return {"object": "list", "data": [render_model(n, created, owner, details.get(n)) for n in names]}


def render_model(
    name: str, created: int, owner: str = "m3e", details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """OpenAI's model object (``GET /v1/models/{id}``), then m3e's own fields (``details``: dimensions,
    prompts, sides, aliases); not a model card (:mod:`m3e.model_card`)."""
    return {"id": name, "object": "model", "created": created, "owned_by": owner, **(details or {})}


__getattr__ = renamed_attributes(__name__, {"model_card": "render_model"}, globals())


def required_query(obj: dict[str, Any]) -> str:
    """The request's "query": a non-empty, encodable string (rerank and search requests)."""
    query = obj.get("query")
    if query is None:
        raise bad_request(
            "Missing required parameter: 'query'.", param="query", code="missing_required_parameter"
        )
    if not isinstance(query, str):
        raise bad_request(f"'query' must be a string, not {json_type(query)}.", param="query")
    if not query.strip():
        raise bad_request("'query' cannot be empty.", param="query", code="invalid_value")
    check_encodable(query, "query", "'query'")
    return query
