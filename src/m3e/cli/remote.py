"""`--server URL`: `m3e encode`, `similarity` and `search` ask a running `m3e serve` instead of loading a model.

A model loaded once in `m3e serve` answers every later command in the time of an HTTP round trip; the command
itself then imports neither torch nor transformers (the standard library's urllib speaks HTTP here, numpy
decodes the vectors). :class:`RemoteModel` offers the part of :class:`m3e.model.EmbeddingModel` those commands
use (``encode``, ``encode_queries``, ``encode_documents``, ``similarity``, ``dim``, ``name``) over the server's
OpenAI-compatible ``/v1/embeddings``, with the texts' side sent as ``input_type``; ``search`` posts to
``/v1/search``. The key is ``--api-key`` or ``$M3E_API_KEY`` (what `m3e serve` reads too).

A server that cannot be reached is one line and exit status 1 (the command could not run, the input was not
at fault); a request the server refuses is its own message, exit status 2.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from m3e.errors import M3EError

if TYPE_CHECKING:
    import urllib.request

    import numpy as np
    from numpy.typing import NDArray

    from m3e.model import EmbeddingModel

# Texts per request: well under the server's 2048 (schemas.MAX_INPUTS), small enough that a progress bar moves.
REQUEST_TEXTS = 256
# How often a request the server's queue turned away (429) is sent again, after the Retry-After it names.
RETRIES_WHEN_BUSY = 5
TIMEOUT_S = 600.0  # one request of REQUEST_TEXTS long texts on a busy CPU server


class ServerUnreachable(M3EError):
    """No answer from the server: the command could not run (exit status 1, not a bad-input 2)."""

    exit_code = 1


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=None, metavar="URL",
                        help="ask a running `m3e serve` at URL (e.g. http://127.0.0.1:8000) instead of loading "
                        "a model; -m then names a served model (default: the server's first)")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="with --server: the server's API key (default: $M3E_API_KEY)")


class ServerClient:
    """JSON over HTTP to one `m3e serve`; errors as one line."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = TIMEOUT_S):
        if not url.startswith(("http://", "https://")):
            raise M3EError(f"--server must be an http:// or https:// URL, not {url!r}")
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):  # the OpenAI client's base URL works too
            self.url = self.url[: -len("/v1")]
        self.api_key = api_key if api_key is not None else os.environ.get("M3E_API_KEY") or None
        self.timeout = timeout

    def get(self, path: str) -> Any:
        import urllib.request  # here, not at the top: a command that loads a model locally never needs it

        return self._send(urllib.request.Request(self.url + path, headers=self._headers()))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import urllib.request

        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {**self._headers(), "Content-Type": "application/json"}
        return self._send(urllib.request.Request(self.url + path, data=data, headers=headers, method="POST"))

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "m3e-cli"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _send(self, request: urllib.request.Request) -> Any:
        import urllib.error
        import urllib.request

        for attempt in range(RETRIES_WHEN_BUSY + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                if exc.code == 429 and attempt < RETRIES_WHEN_BUSY:
                    time.sleep(_retry_after(exc.headers.get("Retry-After")))
                    continue
                raise self._refused(request, exc) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ServerUnreachable(
                    f"cannot reach the m3e server at {self.url} ({reason}); start it with `m3e serve` or check "
                    "--server"
                ) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def _refused(self, request: urllib.request.Request, exc: urllib.error.HTTPError) -> M3EError:
        """The server's own message (OpenAI's error body) and status; 5xx and 401/403 name what to check."""
        import urllib.parse

        message = _error_message(exc.read())
        where = f"{self.url}{urllib.parse.urlparse(request.full_url).path}"
        if exc.code in (401, 403):
            hint = " (set --api-key or $M3E_API_KEY)" if not self.api_key else " (check --api-key / $M3E_API_KEY)"
            return M3EError(f"the server at {where} refused the request ({exc.code}): {message}{hint}")
        if exc.code >= 500:
            return ServerUnreachable(f"the server at {where} failed ({exc.code}): {message}")
        return M3EError(f"the server at {where} refused the request ({exc.code}): {message}")


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 0.1), 30.0)
    except ValueError:
        return 1.0


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body.decode("utf-8")).get("error") or {}
        return str(error.get("message") or body.decode("utf-8", "replace")).strip()
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace").strip()[:300] or "no message"


class RemoteModel:
    """The served model, as much of an :class:`~m3e.model.EmbeddingModel` as `m3e encode` / `similarity` use.

    ``encode`` sends no side (the server's default side, which for m3e's default model is the query prompt,
    as ``encode`` applies it); ``encode_queries`` / ``encode_documents`` send ``input_type`` query / document.
    Vectors come back unit length, as the server makes them."""

    def __init__(self, client: ServerClient, model: str | None = None):
        self.client = client
        self.model = model
        self._dim: int | None = None
        self.name = model or client.url

    @property
    def dim(self) -> int:
        """The served model's dimension (GET /v1/models, once; then what the answers say)."""
        if self._dim is None:
            listed = self.client.get("/v1/models").get("data") or []
            names = [str(m.get("id")) for m in listed]
            chosen = next((m for m in listed if self.model is None or m.get("id") == self.model), None)
            if chosen is None or "dimensions" not in chosen:
                raise M3EError(f"the server at {self.client.url} serves no model {self.model!r} "
                               f"(served: {', '.join(names) or 'none'})")
            self._dim = int(chosen["dimensions"])
        return self._dim

    def encode(self, texts: Sequence[str], *, prompt: str | None = None, **options: Any) -> NDArray[np.float32]:
        if prompt is not None:
            raise M3EError("--prompt is not available with --server (the server applies the model's prompts; "
                           "use --query or --document)")
        return self._embed(texts, None, options)

    def encode_queries(self, texts: Sequence[str], **options: Any) -> NDArray[np.float32]:
        return self._embed(texts, "query", options)

    def encode_documents(self, texts: Sequence[str], **options: Any) -> NDArray[np.float32]:
        return self._embed(texts, "document", options)

    def similarity(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        """Cosine similarity: the served vectors are unit length."""
        return a @ b.T

    def _embed(self, texts: Sequence[str], side: str | None, options: dict[str, Any]) -> NDArray[np.float32]:
        import numpy as np

        _check_options(options)
        texts = list(texts)
        empty = sum(1 for t in texts if t == "")
        if empty:  # the server refuses them (as OpenAI's API does), naming only a position in its request
            raise M3EError(f"{empty} empty text(s): a server embeds no empty text (as OpenAI's API); drop the "
                           "blank lines or encode without --server")
        parts: list[NDArray[np.float32]] = []
        bar = _Progress(len(texts), bool(options.get("show_progress")))
        for start in range(0, len(texts), REQUEST_TEXTS):
            chunk = texts[start:start + REQUEST_TEXTS]
            body: dict[str, Any] = {"input": chunk, "encoding_format": "base64"}
            if self.model is not None:
                body["model"] = self.model
            if side is not None:
                body["input_type"] = side
            answer = self.client.post("/v1/embeddings", body)
            parts.append(_decode(answer, len(chunk)))
            self.name = str(answer.get("model") or self.name)
            bar.update(len(chunk))
        bar.close()
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.concatenate(parts)
        self._dim = int(vectors.shape[1])
        return vectors


def _check_options(options: dict[str, Any]) -> None:
    """encode's options a server cannot honour are refused, not silently dropped."""
    if options.get("normalize") is False:
        raise M3EError("--no-normalize is not available with --server (the server returns unit vectors)")
    if options.get("long_text") not in (None, "truncate"):
        raise M3EError("--long-text windows is not available with --server (the server truncates)")


def _decode(answer: Any, expected: int) -> NDArray[np.float32]:
    """The float32 vectors of an OpenAI embeddings answer (base64 or float lists), in input order."""
    import numpy as np

    data = sorted(answer.get("data") or [], key=lambda item: int(item["index"]))
    if len(data) != expected:
        raise ServerUnreachable(f"the server answered {len(data)} vectors for {expected} texts")
    rows = []
    for item in data:
        value = item["embedding"]
        if isinstance(value, str):
            rows.append(np.frombuffer(base64.b64decode(value), dtype="<f4"))
        else:
            rows.append(np.asarray(value, dtype=np.float32))
    return np.stack(rows).astype(np.float32, copy=False)


class _Progress:
    """Texts sent so far, on stderr, when asked for (a tqdm bar; tqdm is light beside a model)."""

    def __init__(self, total: int, show: bool):
        self.bar: Any = None
        if show and total > REQUEST_TEXTS:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="text", desc="encode", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def remote_model(args: argparse.Namespace) -> EmbeddingModel:
    """The model a command's --server / --api-key / -m name; the options that only a local model has are
    refused rather than ignored. Typed as the local model it stands in for: the commands call only the
    methods :class:`RemoteModel` has."""
    local_only = [flag for flag, value in (("--device", getattr(args, "device", None)),
                                           ("--max-length", getattr(args, "max_length", None)),
                                           ("--pooling", getattr(args, "pooling", None))) if value is not None]
    if getattr(args, "backend", "torch") not in (None, "torch", "auto"):
        local_only.append("--backend")
    if local_only:
        raise M3EError(f"{', '.join(local_only)} choose how a local model runs; with --server the server decides")
    return cast("EmbeddingModel", RemoteModel(ServerClient(args.server, args.api_key), args.model))


def search_remote(args: argparse.Namespace, query: str, filters: dict[str, str]) -> list[dict[str, Any]]:
    """`m3e search --server`: the results of the served index named INDEX, as ``m3e search --json`` has them."""
    if args.model is not None:
        raise M3EError("-m/--model does not apply with --server: a served index embeds with its own model")
    body: dict[str, Any] = {"index": args.index, "query": query, "k": args.k, "group": not args.chunks,
                            "fusion": args.fusion, "dense_weight": args.dense_weight, "colbert": args.colbert,
                            "candidates": args.candidates}
    if args.mode is not None:
        body["mode"] = args.mode
    if filters:
        body["filter"] = filters
    if args.rerank is not None:  # --rerank alone: the server's first reranker
        body["rerank"] = True if args.rerank == "default" else args.rerank
    if args.nprobes is not None:
        raise M3EError("--nprobes is not available with --server (the server's index decides)")
    if getattr(args, "rerank_weight", None) is not None:
        raise M3EError("--rerank-weight is not available with --server (the served reranker's own weight applies)")
    answer = ServerClient(args.server, args.api_key).post("/v1/search", body)
    results = answer.get("results") or []
    return [{k: v for k, v in r.items() if k != "rank"} for r in results]
