"""Reading a request body: within a size limit, within a time limit, and noticing a client that left.

A body over the limit is read to its end and dropped before the 413 goes out: a server that answers before
the body is read and then closes the connection makes the client see a connection reset instead of the
answer. A client that announces ``Expect: 100-continue`` gets the 413 before sending anything. A body that
arrives slower than the time limit is answered 408 and its connection closed.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive

from m3e.serving.errors import ApiError

# Bytes of an oversized body read and dropped so its client can read the 413; beyond, the connection closes.
DISCARD_LIMIT_BYTES = 256 * 1024 * 1024


class ClientGone(Exception):
    """The client closed its connection before the answer."""


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes.",
        param=None,
        code="request_too_large",
    )


def too_slow(timeout: float) -> ApiError:
    return ApiError(
        408,
        f"The request body did not arrive within {timeout:g} s.",
        param=None,
        code="request_timeout",
        headers={"Connection": "close"},
    )


async def read_body(receive: Receive, headers: dict[str, str], limit: int, timeout: float) -> bytearray:
    """The body, at most ``limit`` bytes, all arrived within ``timeout`` seconds: else 413 (once the body is
    read and dropped) or 408. Raises ClientGone when the client disconnects meanwhile."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        if headers.get("expect", "").lower() == "100-continue":
            raise _closing(too_large(limit))  # not a byte sent yet: answer before asking for the body
        raise _oversized(limit, await discard_body(receive, timeout))
    deadline = asyncio.get_running_loop().time() + timeout
    body = bytearray()
    more = True
    while more:
        message = await _next_message(receive, deadline, timeout)
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
        if len(body) > limit:
            del body[:]
            left = max(deadline - asyncio.get_running_loop().time(), 0.0)
            raise _oversized(limit, not more or await discard_body(receive, left))
    return body


async def discard_body(receive: Receive, timeout: float, limit: int = DISCARD_LIMIT_BYTES) -> bool:
    """Read the rest of a body without keeping it: True once read to its end, False when it ran past
    ``timeout`` seconds or ``limit`` bytes (the answer then closes the connection)."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen = 0
    more = True
    while more:
        try:
            message = await _next_message(receive, deadline, timeout)
        except ApiError:
            return False
        seen += len(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if more and seen > limit:
            return False
    return True


def _oversized(limit: int, read_to_end: bool) -> ApiError:
    error = too_large(limit)
    return error if read_to_end else _closing(error)


async def _next_message(receive: Receive, deadline: float, timeout: float) -> Message:
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise too_slow(timeout)
    try:
        message = await asyncio.wait_for(receive(), left)
    except asyncio.TimeoutError:
        raise too_slow(timeout) from None
    if message["type"] == "http.disconnect":
        raise ClientGone
    return message


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects (call once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _closing(error: ApiError) -> ApiError:
    error.headers["Connection"] = "close"
    return error
