"""One access-log line per request, on the ``m3e.access`` logger at INFO.

The text format is the Common Log Format (what nginx and Apache write) followed by the embedding fields,
on one line (cut in two here):

    127.0.0.1 - - [06/Dec/2025:04:42:25 +0000] "POST /v1/embeddings HTTP/1.1" 200 1834
        model=m3e texts=2 tokens=14 ms=12.3

``json`` writes one JSON object per line with the same fields (``time``, ``client``, ``method``, ``path``,
``protocol``, ``status``, ``bytes``, ``model``, ``texts``, ``tokens``, ``ms``). Fields a request does not have
are ``-`` (text) or null (json). Status 499: the client left before the answer.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal, get_args

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
ACCESS_LOGGER = "m3e.access"
_SCOPE_KEY = "m3e.access"


@dataclass
class AccessRecord:
    """What a handler knows of its request for the log line (set through :func:`access_record`)."""

    model: str | None = None
    texts: int | None = None
    tokens: int | None = None


def access_record(scope: Scope) -> AccessRecord:
    """The request's record, to fill in (a fresh one when the app runs without the middleware)."""
    record = scope.get(_SCOPE_KEY)
    return record if isinstance(record, AccessRecord) else AccessRecord()


class AccessLog:
    """ASGI middleware writing one line per HTTP request once its answer is sent (or it failed)."""

    def __init__(self, app: ASGIApp, log_format: LogFormat = "text", logger: logging.Logger | None = None):
        self.app = app
        self.format = log_format
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        record = scope[_SCOPE_KEY] = AccessRecord()
        start = time.perf_counter()
        response = {"status": 0, "bytes": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = int(message["status"])
            elif message["type"] == "http.response.body":
                response["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            response["status"] = response["status"] or 500
            raise
        finally:
            ms = (time.perf_counter() - start) * 1000
            self.logger.info("%s", self.line(scope, record, response["status"], response["bytes"], ms))

    def line(self, scope: Scope, record: AccessRecord, status: int, size: int, ms: float) -> str:
        now = datetime.now(timezone.utc)
        client = scope.get("client")
        fields: dict[str, str | int | float | None] = {
            "client": client[0] if client else None,
            "method": scope.get("method", ""),
            "path": scope.get("path", "") + _query(scope),
            "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
            "status": status,
            "bytes": size,
            "model": record.model,
            "texts": record.texts,
            "tokens": record.tokens,
            "ms": round(ms, 1),
        }
        if self.format == "json":
            when = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return json.dumps({"time": when, **fields}, ensure_ascii=False)
        return _common_log_line(now, fields)


def _query(scope: Scope) -> str:
    query = scope.get("query_string", b"")
    return "?" + query.decode("latin-1") if query else ""


def _common_log_line(now: datetime, fields: dict[str, str | int | float | None]) -> str:
    request_line = f"{fields['method']} {fields['path']} {fields['protocol']}"
    extras = " ".join(f"{key}={_value(fields[key])}" for key in ("model", "texts", "tokens", "ms"))
    return (
        f'{_value(fields["client"])} - - [{now.strftime("%d/%b/%Y:%H:%M:%S %z")}] "{request_line}" '
        f"{fields['status']} {fields['bytes']} {extras}"
    )


def _value(value: object) -> str:
    """A field as logfmt writes it: - when missing, quoted when it holds a space or a quote."""
    if value is None:
        return "-"
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c.isspace() or c == '"' for c in text) else text
