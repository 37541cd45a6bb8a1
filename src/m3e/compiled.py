"""A model compiled for this CPU, run without torch: the fast start of one-off commands.

Loading an :class:`~m3e.model.EmbeddingModel` imports torch and transformers and fingerprints the weights before
a backend runs them: for ``m3e similarity "a" "b"`` that start-up is most of the wall time. So when a model fresh
from its directory is put on a compiled backend (``openvino``, ``openvino-int8``, ``int8``), ``loading`` writes a
*compiled record* (``m3e.loading``): the artefact the backend runs, the tokenizer file, and everything the encode
loop does after the transformer (pooling, prompts, maximum length, normalisation), keyed by the model directory
and the load options and tied to the sizes and times of the model's files. A later command with the same
options finds the record (:func:`find_compiled`), sees those files unchanged, and runs :class:`CompiledModel`:
the Rust tokenizer, the engine and numpy, no torch. Its vectors are the backend's own: the same graph, the same
token ids (checked on probe texts before a record is written), the same pooling.

A record is an optimisation, never a source of truth: anything missing, changed or unreadable makes
:func:`find_compiled` return None, and the caller loads the model the ordinary way (which writes a new record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from m3e.backends.openvino import BATCH_TOKENS as OPENVINO_BATCH_TOKENS
from m3e.backends.threads import inference_threads
from m3e.errors import M3EError
from m3e.length_sorting import length_sorted_batches
from m3e.paths import cache_root
from m3e.prompts import document_prompt, query_prompt, resolve_prompt
from m3e.truncation import truncated_token_ids
from m3e.vectors import cosine_matrix
from m3e.version import __version__

logger = logging.getLogger(__name__)

FORMAT = 1
# The backends whose artefact runs without torch, and the engine each needs.
ENGINES = {"openvino": "openvino", "openvino-int8": "openvino", "int8": "onnxruntime"}
POOLINGS = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean")
# A single text of at most this many tokens runs on one thread (as the openvino backend does: splitting one
# short query's small matrix products over threads costs more than it saves).
SINGLE_TEXT_TOKENS = 64
DEFAULT_BATCH_SIZE = 32
# A model directory with more files than this is not signed (a record is for a model, not a checkout).
MAX_SIGNED_FILES = 256



@dataclass(frozen=True)
class LoadRequest:
    """The options of a load that decide what a record is for (a record answers exactly this request)."""

    model_dir: str
    backend: str
    max_length: int | None = None
    pooling: str | None = None

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class CompiledRecord:
    """What :class:`CompiledModel` needs, as written to ``<cache>/compiled/<key>.json``."""

    request: dict[str, Any]
    backend: str  # the backend that ran (``auto`` resolved)
    graph: str  # the artefact's graph file
    tokenizer: str  # tokenizer.json
    files: list[list[Any]]  # [relative path, size, mtime_ns] of the model's files when it was loaded
    name: str
    dim: int
    max_length: int
    pooling: str
    pad_token_id: int
    truncation_side: str = "right"
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    include_prompt: bool = True
    do_lower_case: bool = False
    normalize_module: bool = False
    format: int = FORMAT
    m3e: str = __version__


def records_dir() -> Path:
    return cache_root() / "compiled"


def record_path(request: LoadRequest) -> Path:
    return records_dir() / f"{request.key}.json"


def model_files(model_dir: Path) -> list[list[Any]] | None:
    """[relative path, size, mtime_ns] of every file of the model (its artefact directories left out), or None
    for a directory too large to sign."""
    out: list[list[Any]] = []
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if relative.parts[0].startswith(("m3e-", ".")) or not path.is_file():
            continue
        stat = path.stat()
        out.append([relative.as_posix(), stat.st_size, stat.st_mtime_ns])
        if len(out) > MAX_SIGNED_FILES:
            return None
    return out


# ---------------------------------------------------------------------------------------------- read
def find_compiled(request: LoadRequest) -> CompiledModel | None:
    """The compiled model for ``request`` when a record of it exists, its model's files are as they were, its
    artefact and tokenizer are still there and its engine is installed; otherwise None."""
    import importlib.util

    try:
        data = json.loads(record_path(request).read_text(encoding="utf-8"))
        record = CompiledRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    if record.format != FORMAT or record.m3e != __version__ or record.request != asdict(request):
        return None
    if not (Path(record.graph).is_file() and Path(record.tokenizer).is_file()):
        return None
    if importlib.util.find_spec(ENGINES.get(record.backend, "-")) is None:
        return None
    try:
        if model_files(Path(request.model_dir)) != record.files:
            return None
    except OSError:
        return None
    return CompiledModel(record)


class CompiledTokenizer:
    """The model's tokenization with the ``tokenizers`` library alone: prompt, lower-casing, truncation at the
    model's maximum length, special tokens."""

    def __init__(self, record: CompiledRecord):
        from tokenizers import Tokenizer

        self.record = record
        self._tokenizer = Tokenizer.from_file(record.tokenizer)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(record.max_length, direction=record.truncation_side)

    def _prepare(self, texts: list[str], prompt: str) -> list[str]:
        out = [prompt + t for t in texts] if prompt else texts
        return [t.lower() for t in out] if self.record.do_lower_case else out

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=True)]

    def tokenize(self, texts: Sequence[str], prompt: str = "") -> list[list[int]]:
        return truncated_token_ids(texts, self.record.max_length, lambda cut: self._prepare(cut, prompt), self._ids)

    def prompt_length(self, prompt: str) -> int:
        """Tokens of the prompt left out of pooling (sentence-transformers' rule, as the model counts them)."""
        if not prompt or self.record.include_prompt:
            return 0
        return len(self._ids(self._prepare([prompt], ""))[0]) - 1


class CompiledModel:
    """A recorded model run by its engine: the part of :class:`~m3e.model.EmbeddingModel` that ``m3e encode``
    and ``m3e similarity`` use (``encode``, ``encode_queries``, ``encode_documents``, ``similarity``, ``dim``,
    ``name``, ``backend``)."""

    def __init__(self, record: CompiledRecord):
        self.record = record
        self.name = record.name
        self.dim = record.dim
        self.backend = record.backend
        self.max_length = record.max_length
        self.tokenizer = CompiledTokenizer(record)
        self._engine = _Engine(Path(record.graph), ENGINES[record.backend])

    def __repr__(self) -> str:
        return f"CompiledModel(name={self.name!r}, backend={self.backend!r}, graph={self.record.graph})"

    @property
    def query_prompt(self) -> str:
        return query_prompt(self.record.prompts)

    @property
    def document_prompt(self) -> str:
        return document_prompt(self.record.prompts)

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
        return resolve_prompt(self.record.prompts, self.record.default_prompt_name, prompt, prompt_name, self.name)

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = None,
        normalize: bool = True,
        prompt: str | None = None,
        prompt_name: str | None = None,
        show_progress: bool | None = None,
        long_text: str | None = None,
        max_batch_tokens: int | None = None,
    ) -> NDArray[np.float32]:
        """float32 [n, dim] in input order ([dim] for a single string), as ``EmbeddingModel.encode``."""
        if long_text not in (None, "truncate"):
            raise M3EError("a compiled model truncates long texts; load the model for long_text='windows'")
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise M3EError(f"texts[{i}] is {type(t).__name__}, expected str")
        resolved = self.resolve_prompt(prompt, prompt_name)
        ids = self.tokenizer.tokenize(items, resolved)
        skip = self.tokenizer.prompt_length(resolved)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if max_batch_tokens is None and self._engine.engine == "openvino":
            max_batch_tokens = OPENVINO_BATCH_TOKENS  # the openvino backend's cache-sized batches
        batches = length_sorted_batches([len(x) for x in ids], batch_size or DEFAULT_BATCH_SIZE, max_batch_tokens)
        for batch in batches:
            input_ids, mask = self._pad([ids[i] for i in batch])
            tokens = self._engine.run(input_ids, mask)
            if skip:
                mask = mask.copy()
                mask[:, :skip] = 0
            out[batch] = pool_numpy(self.record.pooling, tokens, mask)
        if normalize or self.record.normalize_module:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out

    def encode_queries(self, texts: str | Sequence[str], **kwargs: Any) -> NDArray[np.float32]:
        kwargs.setdefault("prompt", self.query_prompt)
        return self.encode(texts, **kwargs)

    def encode_documents(self, texts: str | Sequence[str], **kwargs: Any) -> NDArray[np.float32]:
        kwargs.setdefault("prompt", self.document_prompt)
        return self.encode(texts, **kwargs)

    def similarity(self, a: Any, b: Any) -> NDArray[np.float32]:
        """Cosine similarity matrix of two sets of vectors (or texts)."""
        return cosine_matrix(self._as_vectors(a), self._as_vectors(b))

    def _as_vectors(self, x: Any) -> NDArray[np.float32]:
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], str)):
            x = self.encode([x] if isinstance(x, str) else list(x))
        arr = np.asarray(x, dtype=np.float32)
        return arr[None, :] if arr.ndim == 1 else arr

    def _pad(self, batch: list[list[int]]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        width = max(1, *(len(x) for x in batch))
        input_ids = np.full((len(batch), width), self.record.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return input_ids, mask


class _Engine:
    """The artefact's graph on its engine (OpenVINO or ONNX Runtime), compiled on first use. OpenVINO keeps its
    compiled blobs in ``<cache>/openvino-blobs`` so a later process skips most of the compilation."""

    def __init__(self, graph: Path, engine: str):
        self.graph = graph
        self.engine = engine
        self._lock = threading.Lock()
        self._compiled: dict[int, tuple[Any, list[str]]] = {}  # threads -> (request or session, input names)

    def run(self, input_ids: NDArray[np.int64], mask: NDArray[np.int64]) -> NDArray[np.float32]:
        rows, width = input_ids.shape
        threads = 1 if rows == 1 and width <= SINGLE_TEXT_TOKENS else inference_threads()
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        with self._lock:
            runner, names = self._compiled.get(threads) or self._compile(threads)
            inputs = {name: feeds[name] for name in names}
            if self.engine == "openvino":
                result = runner.infer(inputs)
                return np.array(next(iter(result.values())), dtype=np.float32)  # a copy: the request reuses it
            (hidden,) = runner.run(None, inputs)
            return np.asarray(hidden, dtype=np.float32)

    def _compile(self, threads: int) -> tuple[Any, list[str]]:
        if self.engine == "openvino":
            import openvino as ov

            from m3e.backends.openvino import keep_signal_stack

            core = ov.Core()
            blobs = cache_root() / "openvino-blobs"
            os.makedirs(blobs, exist_ok=True)
            core.set_property({"CACHE_DIR": str(blobs)})
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            with keep_signal_stack():
                compiled = core.compile_model(str(self.graph), "CPU", config)
            self._compiled[threads] = (compiled.create_infer_request(), [p.get_any_name() for p in compiled.inputs])
            return self._compiled[threads]
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(self.graph), options, providers=["CPUExecutionProvider"])
        self._compiled[threads] = (session, [i.name for i in session.get_inputs()])
        return self._compiled[threads]


def pool_numpy(mode: str, tokens: NDArray[np.float32], mask: NDArray[np.int64]) -> NDArray[np.float32]:
    """``m3e.pooling.pool`` in numpy for the modes a compiled record allows (right-padded inputs)."""
    m = mask.astype(np.float32)[:, :, None]
    rows = np.arange(tokens.shape[0])
    pooled: NDArray[Any]
    if mode == "cls":
        pooled = tokens[rows, mask.argmax(axis=1)]
    elif mode == "mean":
        pooled = (tokens * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    elif mode == "mean_sqrt_len_tokens":
        pooled = (tokens * m).sum(axis=1) / np.sqrt(np.maximum(m.sum(axis=1), 1e-9))
    elif mode == "max":
        pooled = np.where(m > 0, tokens, -np.inf).max(axis=1)
    elif mode == "weightedmean":
        weighted = m * np.arange(1, tokens.shape[1] + 1, dtype=np.float32)[None, :, None]
        pooled = (tokens * weighted).sum(axis=1) / np.maximum(weighted.sum(axis=1), 1e-9)
    elif mode == "lasttoken":
        pooled = tokens[rows, np.maximum(mask.sum(axis=1) - 1, 0)]
    else:
        raise M3EError(f"pooling {mode!r} does not run in a compiled model")
    return np.asarray(pooled, dtype=np.float32)
