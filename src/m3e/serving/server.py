"""Run the app under uvicorn: in the foreground (the CLI) or in a background thread (tests, notebooks)."""

from __future__ import annotations

import ctypes
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

# uvicorn waits this long for in-flight requests after SIGTERM / Ctrl-C before cancelling them.
GRACEFUL_SHUTDOWN_S = 30
# Buffers from this size up get their own memory mapping (see return_big_buffers_to_the_os).
_MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_big_buffers_to_the_os() -> None:
    """Make a burst of big requests leave RSS where it was.

    glibc raises its mmap threshold to the size of each big buffer freed (up to 32 MiB), after which an 8 MB
    request body or text is carved from the heap and, once freed, stays in the process. A fixed threshold
    keeps every buffer of 1 MiB or more in its own mapping, returned to the OS when freed. Other C libraries
    are left alone.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def _config(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    import uvicorn

    # The app answers 503 to requests still waiting when its own grace ends; uvicorn's, a little later,
    # only cancels what is left after that.
    grace = float(getattr(_state(app), "shutdown_grace_s", GRACEFUL_SHUTDOWN_S))
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # m3e.serving.access_log writes one line per request instead
        timeout_graceful_shutdown=max(GRACEFUL_SHUTDOWN_S, math.ceil(grace) + 5),
        lifespan="on",
    )


def _state(app: ASGIApp) -> object:
    return getattr(app, "state", None)


def _server(app: ASGIApp, config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that tells the app when a shutdown starts (``app.state.begin_shutdown``), before
    uvicorn waits for the requests in flight."""
    import uvicorn

    begin_shutdown: Callable[[], None] | None = getattr(_state(app), "begin_shutdown", None)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if begin_shutdown is not None:
                begin_shutdown()
            await super().shutdown(sockets)

    return Server(config)


def run_server(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve until SIGINT / SIGTERM; in-flight requests finish before the process exits."""

    return_big_buffers_to_the_os()
    server = _server(app, _config(app, host, port, log_level))
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    # uvicorn re-raises the stop signal once it has shut down gracefully; with these no-op
    # handlers in place that re-raise ends quietly and a requested stop exits with status 0.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _stopped)
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(signum: int, frame: FrameType | None) -> None:
    pass


class ServerThread:
    """A uvicorn server on a background thread, on a socket bound before it starts (no port race)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):

        return_big_buffers_to_the_os()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = _server(app, _config(app, self.host, self.port, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> ServerThread:
        """Start and wait until /health answers 200 (models warmed up)."""
        import httpx

        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError("server thread exited during start-up")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server at {self.url} not ready after {ready_timeout:.0f} s")

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
