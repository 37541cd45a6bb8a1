"""`m3e serve`: an OpenAI-compatible /v1/embeddings server with dynamic batching; with --reranker, /v1/rerank
(Cohere / Jina) and TEI's /rerank; with --index, /v1/search and the search page /search."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from m3e.backends import AUTO, BACKEND_CHOICES
from m3e.errors import M3EError
from m3e.extras import require

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker
    from m3e.serving import ServeConfig

logger = logging.getLogger(__name__)


def _cores() -> int:
    """Inference threads: $M3E_NUM_THREADS or the physical cores (the backends' rule)."""
    from m3e.backends.threads import inference_threads

    return inference_threads()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL[=NAME]",
        help="model directories or hub ids ('default': the default model), served under their own names or "
        "NAME (none given: the default model)",
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="serve MODEL under the public name NAME (repeatable)",
    )
    parser.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="ALIAS=NAME",
        help="another name for a served model, e.g. --alias m3e-base=default (repeatable; in /v1/models)",
    )
    parser.add_argument(
        "--reranker",
        action="append",
        default=[],
        metavar="MODEL[=NAME]",
        help="also serve this cross-encoder reranker ('default': the default reranker) on /v1/rerank and /rerank, "
        "under its own name or NAME (repeatable; the first is the default; --alias names it too)",
    )
    parser.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve the index in DIR (from `m3e index build`) as NAME on /v1/search and the search page /search "
        "(repeatable); it reloads when `m3e index add` commits",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("M3E_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $M3E_API_KEY; none = open)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header names NAME ('*' for any; repeatable). On loopback the "
        "server answers only localhost, 127.0.0.1 and [::1] (a web page cannot reach it by DNS rebinding); "
        "bound beyond, any name unless some are given",
    )
    parser.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser calls from ORIGIN ('*' for any; repeatable)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=AUTO,
        help="inference backend (default auto: the fastest for this CPU and the installed engines)",
    )
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="truncate inputs at N tokens (default: the model's maximum)",
    )
    parser.add_argument(
        "--on-long-input",
        choices=["truncate", "reject"],
        default="truncate",
        help="inputs longer than the max length: truncate (reported in the X-M3E-Truncated header) or "
        "reject with 400",
    )
    parser.add_argument(
        "--default-side",
        choices=["query", "document", "none"],
        default=None,
        help="prompt for texts sent with no input_type, prompt_name or NAME:query / NAME:document model "
        "name: the model's query prompt, its document prompt, or none (default query, measured best in "
        "docs/benchmarks.md)",
    )
    parser.add_argument(
        "--token-ids",
        choices=["openai", "model"],
        default="openai",
        help="integer inputs are cl100k_base token ids, decoded to text as OpenAI and LangChain mean them "
        "(openai, the default), or the served model's own token ids (model)",
    )
    parser.add_argument(
        "--max-batch-tokens", type=int, default=8192, help="token budget of one forward pass (default 8192)"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="texts per forward pass at most (default 64)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a text may wait for its batch to fill (default 5)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=4096,
        help="texts queued at most; beyond, 429 with Retry-After (default 4096)",
    )
    parser.add_argument(
        "--max-queue-seconds",
        type=float,
        default=5.0,
        help="429 with Retry-After when the queued work would take longer, estimated from the measured "
        "throughput (default 5)",
    )
    parser.add_argument(
        "--max-documents",
        type=int,
        default=1000,
        help="documents one rerank request may send; beyond, 400 (default 1000)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="request body limit; beyond, 413 (default 16 MiB)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a request body not arrived by then is answered 408 and its connection closed (default 30)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM / Ctrl-C, requests in flight may finish for this long, then get 503 (default 30)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="inference threads (default: $M3E_NUM_THREADS or the physical cores)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="access log lines (one per request, on stderr): Common Log Format with model, texts, tokens "
        "and ms (text, the default) or one JSON object per line (json)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="write no line per request")
    parser.add_argument(
        "--log-level", default=None, choices=["debug", "info", "warning", "error"], help="server log level"
    )


# The word that names the default model wherever a model is named (MODEL, --name NAME=MODEL, --alias).
DEFAULT_MODEL = "default"


def _model_specs(args: argparse.Namespace) -> list[tuple[str | None, str | None]]:
    """(public name or None, model path or None: the default model) in serving order; the first is the
    default of requests that name no model."""
    specs = [_positional_spec(item) for item in args.models]
    for item in args.name:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise M3EError(f"--name expects NAME=MODEL, got {item!r}")
        specs.append((name, _model_path(path)))
    return specs or [(None, None)]


def _positional_spec(item: str) -> tuple[str | None, str | None]:
    """MODEL or MODEL=NAME (an existing path with '=' in it is a path)."""
    path, sep, name = item.rpartition("=")
    if sep and path and name and not Path(item).exists():
        return name, _model_path(path)
    return None, _model_path(item)


def _model_path(spec: str) -> str | None:
    return None if spec == DEFAULT_MODEL else spec


def _reranker_specs(args: argparse.Namespace) -> list[tuple[str | None, str | None]]:
    """(public name or None, reranker path or None: the default reranker) in serving order."""
    return [_positional_spec(item) for item in args.reranker]


def _index_specs(args: argparse.Namespace) -> dict[str, str]:
    """--index NAME=DIR as name -> directory."""
    indexes: dict[str, str] = {}
    for item in args.index:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise M3EError(f"--index expects NAME=DIR, got {item!r}")
        if name in indexes:
            raise M3EError(f"--index {item}: two indexes are named {name!r}")
        indexes[name] = path
    return indexes


def _aliases(args: argparse.Namespace, served: list[str], default_name: str | None) -> dict[str, str]:
    """--alias ALIAS=NAME as alias -> served name (a model's or a reranker's); NAME 'default' is the default
    model's served name."""
    aliases: dict[str, str] = {}
    for item in args.alias:
        alias, sep, target = item.partition("=")
        if not sep or not alias or not target:
            raise M3EError(f"--alias expects ALIAS=NAME, got {item!r}")
        if target == DEFAULT_MODEL and target not in served:
            if default_name is None:
                raise M3EError(f"--alias {item}: the default model is not served")
            target = default_name
        if target not in served:
            raise M3EError(
                f"--alias {item}: no served model is named {target!r} (served: {', '.join(served)})"
            )
        if alias in served or alias in aliases:
            raise M3EError(f"--alias {item}: {alias!r} is already a name")
        aliases[alias] = target
    return aliases


def _check_limits(args: argparse.Namespace) -> None:
    for opt in (
        "max_batch_tokens",
        "max_batch_size",
        "max_queue",
        "max_request_bytes",
        "max_documents",
        "port",
    ):
        if getattr(args, opt) < (0 if opt == "port" else 1):
            raise M3EError(f"--{opt.replace('_', '-')} must be positive")
    if args.threads is not None and args.threads < 1:
        raise M3EError("--threads must be >= 1")
    if args.max_wait_ms < 0:
        raise M3EError("--max-wait-ms must be >= 0")
    for opt in ("max_queue_seconds", "body_timeout", "shutdown_grace"):
        if getattr(args, opt) <= 0:
            raise M3EError(f"--{opt.replace('_', '-')} must be > 0")


def run(args: argparse.Namespace) -> int:
    _check_limits(args)
    _require_serve_extra()
    from m3e.serving import create_app, run_server

    threads = args.threads or _cores()
    _set_inference_threads(threads)
    indexes = _index_specs(args)
    models, default_name = _load_models(args)
    rerankers = _load_rerankers(args, models)
    config = _serve_config(args, threads, _aliases(args, [*models, *rerankers], default_name))
    app = create_app(models, config, rerankers=rerankers, indexes=indexes)
    _configure_access_log(enabled=not args.no_access_log)
    _announce(models, config, args, rerankers, indexes)
    level = args.log_level or ("info" if args.verbose else "warning")
    run_server(app, args.host, args.port, log_level=level)
    print("m3e serve: stopped", file=sys.stderr)
    return 0


def _configure_access_log(enabled: bool) -> None:
    """The access log's lines, as they are, on stderr (its own handler; the CLI's log level is for the
    rest)."""
    from m3e.serving.access_log import ACCESS_LOGGER

    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled and not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)


def _require_serve_extra() -> None:
    """Fail before loading any model when the serve extra is missing."""
    for module in ("fastapi", "prometheus_client", "uvicorn"):
        require(module, purpose="m3e serve", extra="serve")


def _set_inference_threads(threads: int) -> None:
    import torch

    # The int8 (ONNX Runtime) backend sizes its thread pool from this variable when it loads.
    os.environ["M3E_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _load_models(args: argparse.Namespace) -> tuple[dict[str, EmbeddingModel], str | None]:
    """The models to serve by public name, in serving order (the first is the default), and the public name
    of the default model when it is one of them."""
    from m3e.loading import load_model

    models: dict[str, EmbeddingModel] = {}
    default_name: str | None = None
    for name, path in _model_specs(args):
        model = load_model(path, device=args.device, backend=args.backend, max_length=args.max_length)
        public = name or model.name
        if public in models:
            raise M3EError(f"two models are named {public!r}; give one another name with MODEL=NAME")
        models[public] = model
        if path is None and default_name is None:
            default_name = public
    return models, default_name


def _load_rerankers(args: argparse.Namespace, models: dict[str, EmbeddingModel]) -> dict[str, Reranker]:
    """The rerankers to serve by public name, in serving order (the first is /v1/rerank's default)."""
    from m3e.loading import load_reranker

    rerankers: dict[str, Reranker] = {}
    for name, path in _reranker_specs(args):
        reranker = load_reranker(path, device=args.device, backend=args.backend)
        public = name or reranker.name
        if public in rerankers or public in models:
            raise M3EError(f"two models are named {public!r}; give one another name with MODEL=NAME")
        rerankers[public] = reranker
    return rerankers


def _serve_config(
    args: argparse.Namespace, threads: int, aliases: dict[str, str] | None = None
) -> ServeConfig:
    from m3e.serving import ServeConfig
    from m3e.serving.sides import DEFAULT_SIDE

    return ServeConfig(
        api_key=args.api_key or None,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_queue_seconds=args.max_queue_seconds,
        max_request_bytes=args.max_request_bytes,
        body_timeout_s=args.body_timeout,
        shutdown_grace_s=args.shutdown_grace,
        on_long_input=args.on_long_input,
        cors_origins=list(args.cors),
        allowed_hosts=allowed_hosts(args.host, args.allow_host),
        aliases=dict(aliases or {}),
        log_format=args.log_format,
        torch_threads=threads,
        default_side=args.default_side or DEFAULT_SIDE,
        token_ids=args.token_ids,
        max_rerank_documents=args.max_documents,
    )


def allowed_hosts(bind: str, extra: list[str]) -> list[str]:
    """Host names the server answers to: the loopback names and ``extra``; any name when bound beyond
    loopback and none is given."""
    from m3e.serving.hosts import ANY_HOST, LOOPBACK_HOSTS, is_loopback

    if not is_loopback(bind) and not extra:
        return [ANY_HOST]
    return [*LOOPBACK_HOSTS, *extra]


def exposure_warning(bind: str, api_key: str | None) -> str | None:
    """The startup warning for a server others can reach without a key, else None."""
    from m3e.serving.hosts import is_loopback

    if is_loopback(bind) or api_key:
        return None
    return (
        f"m3e serve: warning: listening on {bind} without --api-key: anyone who can reach this port can use "
        "the server (set --api-key KEY or $M3E_API_KEY, or bind 127.0.0.1)"
    )


def _sides_line(model: EmbeddingModel, config: ServeConfig) -> str:
    """The model's prompts per side and the default side, as the startup log shows them."""
    from m3e.serving.sides import side_prompt

    prompts = f"query prompt {model.query_prompt!r}, document prompt {model.document_prompt!r}"
    default = side_prompt(model, config.default_side)
    return f"{prompts}; texts with no side: {config.default_side} ({default!r})"


def _announce(
    models: dict[str, EmbeddingModel],
    config: ServeConfig,
    args: argparse.Namespace,
    rerankers: dict[str, Reranker] | None = None,
    indexes: dict[str, str] | None = None,
) -> None:
    """What is served and where, on stderr, before the server starts."""
    warning = exposure_warning(args.host, config.api_key)
    if warning:
        print(warning, file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    for public, model in models.items():
        aliases = [alias for alias, target in config.aliases.items() if target == public]
        also = f", also as {', '.join(aliases)}" if aliases else ""
        print(
            f"m3e serve: {public}{also} (dim {model.dim}, max length {model.max_length}, "
            f"backend {model.backend}; "
            f"{_sides_line(model, config)})",
            file=sys.stderr,
        )
    for public, reranker in (rerankers or {}).items():
        aliases = [alias for alias, target in config.aliases.items() if target == public]
        also = f", also as {', '.join(aliases)}" if aliases else ""
        print(
            f"m3e serve: reranker {public}{also} (max length {reranker.max_length}, activation "
            f"{reranker.activation}, backend {reranker.backend}) on /v1/rerank and /rerank",
            file=sys.stderr,
        )
    for name, path in (indexes or {}).items():
        print(
            f"m3e serve: index {name} ({path}) on /v1/search; page http://{host}:{args.port}/search",
            file=sys.stderr,
        )
    print(
        f"m3e serve: http://{host}:{args.port}/v1/embeddings"
        f"{' (API key required)' if config.api_key else ''}; /health turns ready after warm-up",
        file=sys.stderr,
        flush=True,
    )
