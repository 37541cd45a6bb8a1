"""Which ``Host`` names the server answers to: on a workstation, a page in the browser must not reach it.

A server bound to loopback is out of the network's reach, but not of a web page's: a page on evil.example
can make its name resolve to 127.0.0.1 (DNS rebinding) and then call the server as a same-origin site, with
``Host: evil.example``. Answering only the loopback names (``localhost``, ``127.0.0.1``, ``[::1]``, and those
given with ``--allow-host``) stops that. A server bound beyond loopback answers any name unless told which.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from m3e.serving.errors import ApiError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a ``Host`` header, without port, brackets, trailing dot or case."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class HostAllowList:
    """ASGI middleware: 403 in OpenAI's error body for a request whose ``Host`` is not one of ``allowed``
    (``"*"``: any). A request without ``Host`` (HTTP/1.0 tools) is let in: browsers always send one."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]):
        self.app = app
        names = [host_name(h) for h in allowed]
        self.any = ANY_HOST in names
        self.allowed = frozenset(names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if header is None or host_name(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        await _send_error(send, self.refusal(header))

    def refusal(self, header: str) -> ApiError:
        names = ", ".join(sorted(self.allowed))
        return ApiError(
            403,
            f"This server does not answer to Host {header!r} (it answers to {names}). Name another with "
            "`m3e serve --allow-host NAME`.",
            param=None,
            code="host_not_allowed",
        )


async def _send_error(send: Send, error: ApiError) -> None:
    body = error.json_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
