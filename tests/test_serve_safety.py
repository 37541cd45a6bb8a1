"""Safe by default on a workstation: JSON bodies only, a Host allow-list on loopback (no DNS rebinding), a
warning when bound beyond loopback without an API key."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

import m3e
from m3e.cli.serve import allowed_hosts, exposure_warning
from m3e.serving import ServeConfig, ServerThread, create_app
from m3e.serving.hosts import host_name, is_loopback


@pytest.fixture(scope="module")
def model(tiny_st_model_dir: Path) -> Any:
    return m3e.load(str(tiny_st_model_dir))


@pytest.fixture(scope="module")
def server(model: Any):
    with ServerThread(create_app({"tiny": model}, ServeConfig(warmup=False))) as srv:
        yield srv


def _post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", timeout=60, **kwargs)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ],
)
def test_only_json_bodies_are_read(server: ServerThread, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    resp = _post(server.url, content=b'{"input": "hello"}', headers=headers)
    assert resp.status_code == 415
    err = resp.json()["error"]
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]


def test_json_with_a_charset_is_read(server: ServerThread) -> None:
    resp = _post(
        server.url, content=b'{"input": "hello"}', headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert resp.status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io", "10.0.0.5", "[::2]:8000"]
)
def test_a_foreign_host_name_is_refused_on_loopback(server: ServerThread, host: str) -> None:
    for method, path in (
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/health"),
    ):
        resp = httpx.request(method, server.url + path, json={"input": "x"}, headers={"host": host})
        assert resp.status_code == 403, (method, path)
        err = resp.json()["error"]
        assert err["code"] == "host_not_allowed" and "--allow-host" in err["message"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "127.0.0.1", "[::1]"])
def test_loopback_names_are_answered(server: ServerThread, host: str) -> None:
    resp = _post(server.url, json={"input": "x"}, headers={"host": f"{host}:{server.port}"})
    assert resp.status_code == 200


def test_a_request_without_host_is_answered(server: ServerThread) -> None:
    """HTTP/1.0 tools send no Host; a browser always does."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")


def test_allowed_hosts_can_be_widened(model: Any) -> None:
    config = ServeConfig(allowed_hosts=["localhost", "127.0.0.1", "my.box"], warmup=False)
    with ServerThread(create_app({"tiny": model}, config)) as srv:
        assert _post(srv.url, json={"input": "x"}, headers={"host": "my.box"}).status_code == 200
        assert _post(srv.url, json={"input": "x"}, headers={"host": "other.box"}).status_code == 403
    with ServerThread(create_app({"tiny": model}, ServeConfig(allowed_hosts=["*"], warmup=False))) as srv:
        assert _post(srv.url, json={"input": "x"}, headers={"host": "any.name"}).status_code == 200


def test_host_names_and_bind_addresses() -> None:
    assert [host_name(h) for h in ("LocalHost:8000", "[::1]:8000", "127.0.0.1", "a.example.")] == [
        "localhost",
        "::1",
        "127.0.0.1",
        "a.example",
    ]
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "my.host"))


def test_the_cli_allow_list_and_exposure_warning() -> None:
    assert allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "::1"]
    assert allowed_hosts("127.0.0.1", ["my.box"]) == ["localhost", "127.0.0.1", "::1", "my.box"]
    assert allowed_hosts("0.0.0.0", []) == ["*"]
    assert allowed_hosts("0.0.0.0", ["api.example"]) == ["localhost", "127.0.0.1", "::1", "api.example"]
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "key") is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning is not None and "without --api-key" in warning


def test_the_startup_log_warns_when_exposed_without_a_key(
    model: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from m3e.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    for argv, warned in (
        (["--host", "0.0.0.0"], True),
        (["--host", "0.0.0.0", "--api-key", "k"], False),
        ([], False),
    ):
        args = parser.parse_args(argv)
        serve._announce({"tiny": model}, serve._serve_config(args, 1), args)
        err = capsys.readouterr().err
        assert ("warning: listening on 0.0.0.0 without --api-key" in err) == warned, err
        assert "texts with no side: query" in err
