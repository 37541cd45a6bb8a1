"""One access-log line per request: Common Log Format with model, texts, tokens and ms, or JSON."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import m3e
from m3e.serving import ServeConfig, ServerThread, create_app
from m3e.serving.access_log import ACCESS_LOGGER

CLF = re.compile(
    r"^(?P<client>\S+) - - \[(?P<time>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] "
    r'"(?P<method>\S+) (?P<path>\S+) HTTP/1\.1" (?P<status>\d{3}) (?P<bytes>\d+) '
    r"model=(?P<model>\S+) texts=(?P<texts>\S+) tokens=(?P<tokens>\S+) ms=(?P<ms>[\d.]+)$"
)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def lines() -> Iterator[list[str]]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def model(tiny_st_model_dir: Path) -> Any:
    return m3e.load(str(tiny_st_model_dir))


def _requests(url: str) -> None:
    httpx.post(url + "/v1/embeddings", json={"model": "tiny:query", "input": ["hello", "北京"]})
    httpx.post(url + "/v1/embeddings", json={"input": ""})
    httpx.get(url + "/v1/models?x=1")
    httpx.get(url + "/nowhere")
    httpx.get(url + "/health", headers={"host": "evil.example"})


def test_one_common_log_line_per_request(model: Any, lines: list[str]) -> None:
    with ServerThread(create_app({"tiny": model}, ServeConfig(warmup=False))) as srv:
        lines.clear()  # the start-up's health checks
        _requests(srv.url)
    parsed = [CLF.match(line) for line in lines]
    assert all(parsed), lines
    fields = [m.groupdict() for m in parsed if m]
    assert [(f["method"], f["path"], f["status"]) for f in fields] == [
        ("POST", "/v1/embeddings", "200"),
        ("POST", "/v1/embeddings", "400"),
        ("GET", "/v1/models?x=1", "200"),
        ("GET", "/nowhere", "404"),
        ("GET", "/health", "403"),
    ]
    assert (fields[0]["model"], fields[0]["texts"], fields[0]["tokens"]) == ("tiny:query", "2", "7")
    assert (fields[1]["model"], fields[1]["texts"], fields[1]["tokens"]) == ("-", "-", "-")
    assert fields[0]["client"] == "127.0.0.1" and int(fields[0]["bytes"]) > 100


def test_json_lines(model: Any, lines: list[str]) -> None:
    with ServerThread(create_app({"tiny": model}, ServeConfig(warmup=False, log_format="json"))) as srv:
        lines.clear()
        _requests(srv.url)
    records = [json.loads(line) for line in lines]
    assert [r["status"] for r in records] == [200, 400, 200, 404, 403]
    first = records[0]
    assert set(first) == {
        "time",
        "client",
        "method",
        "path",
        "protocol",
        "status",
        "bytes",
        "model",
        "texts",
        "tokens",
        "ms",
    }
    assert (first["model"], first["texts"], first["tokens"], first["method"]) == ("tiny:query", 2, 7, "POST")
    assert first["time"].endswith("Z") and isinstance(first["ms"], float)
    assert records[1]["model"] is None
