"""OpenAI-compatible embeddings server with dynamic batching (``m3e serve``).

``create_app(models, ServeConfig(...))`` builds the ASGI app; ``run_server`` runs it in the
foreground and ``ServerThread`` in a background thread. Needs the ``serve`` extra
(fastapi, uvicorn, prometheus-client).
"""

from __future__ import annotations

from m3e.serving.app import ServeConfig, create_app
from m3e.serving.server import ServerThread, run_server

__all__ = ["ServeConfig", "ServerThread", "create_app", "run_server"]
