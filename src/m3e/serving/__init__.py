"""OpenAI-compatible embeddings server with dynamic batching (``m3e serve``).

``create_app(models, ServeConfig(...))`` builds the ASGI app; ``run_server`` runs it in the
foreground and ``ServerThread`` in a background thread. Needs the ``serve`` extra
(fastapi, uvicorn, prometheus-client; tiktoken for OpenAI token-id inputs).

Modules: ``app`` (the app and one handler per endpoint), ``served`` (a model as served: prompts, inputs
to token ids), ``sides`` (which prompt a request's texts get), ``openai_tokens`` (cl100k_base ids to
text), ``schemas`` (requests checked by hand, responses rendered), ``openapi`` (the schema that
describes them), ``body`` (reading a body within size and time limits), ``hosts`` (the Host
allow-list), ``access_log`` (one line per request), ``batcher`` (dynamic batching and admission),
``errors``, ``metrics``, ``server`` (uvicorn in the foreground or a thread, shutdown).
"""

from __future__ import annotations

from m3e.serving.app import ServeConfig, create_app
from m3e.serving.server import ServerThread, run_server

__all__ = ["ServeConfig", "ServerThread", "create_app", "run_server"]
