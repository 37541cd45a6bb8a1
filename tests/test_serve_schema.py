"""`m3e serve`'s OpenAPI schema: valid, rendered by /docs, and the server keeps to it under schemathesis."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

import m3e
from m3e.serving import ServeConfig, ServerThread, create_app
from m3e.serving.openapi import InputType
from m3e.serving.sides import INPUT_TYPES

pytestmark = pytest.mark.slow  # schemathesis over the whole schema


@pytest.fixture(scope="module")
def server(tiny_st_model_dir: Path):
    model = m3e.load(str(tiny_st_model_dir))
    model.prompts = {"query": "query: ", "document": "document: "}
    with ServerThread(create_app({"tiny": model}, ServeConfig(max_request_bytes=64 * 1024))) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(server: ServerThread) -> Any:
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_openapi_json_is_a_valid_schema(server: ServerThread) -> None:
    from openapi_spec_validator import validate

    resp = httpx.get(server.url + "/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    validate(schema)
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EmbeddingRequest"}
    request = schema["components"]["schemas"]["EmbeddingRequest"]
    assert {"input", "model", "encoding_format", "dimensions", "user", "input_type", "prompt_name"} <= set(
        request["properties"]
    )
    assert request["required"] == ["input"]


def test_the_schema_lists_every_input_type() -> None:
    assert set(get_args(InputType)) == set(INPUT_TYPES)


def test_docs_render(server: ServerThread) -> None:
    for path in ("/docs", "/redoc"):
        page = httpx.get(server.url + path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/openapi.json" in page.text


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_server_keeps_to_its_schema(api_schema: Any, mode: str) -> None:
    """Generated requests for every operation (bounded, loopback): no server error, and every answer is what
    the schema says (status, content type, body, headers)."""
    from hypothesis import given
    from schemathesis.checks import positive_data_acceptance

    generation = schemathesis.GenerationMode(mode)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} == {
        "POST /v1/embeddings",
        "GET /v1/models",
        "GET /v1/models/{model}",
        "GET /health",
        "GET /metrics",
    }
    if mode == "negative":  # the only operation with input that can break its schema
        operations = [op for op in operations if op.label == "POST /v1/embeddings"]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def run(case: Any) -> None:
            # A schema-valid request may still be refused (a model that does not exist, more dimensions than
            # the model has): that heuristic is left out, every other check runs.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        run()
