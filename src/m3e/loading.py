"""Resolve a model name or path and build an :class:`EmbeddingModel` from it.

Reads sentence-transformers directories (modules.json, sentence_bert_config.json,
1_Pooling/config.json, Dense/Normalize modules, config_sentence_transformers.json) and plain
Hugging Face checkpoints. Hub ids are fetched with huggingface_hub, as sentence-transformers
does; offline, that fails with a message that says how to use a local directory.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from m3e.atomic import write_atomic
from m3e.compiled import (
    ENGINES,
    POOLINGS,
    CompiledRecord,
    CompiledTokenizer,
    LoadRequest,
    model_files,
    record_path,
)
from m3e.errors import M3EError, ModelNotFoundError
from m3e.st_format import ST_CONFIG_FILE, STModules, read_dense_layers, read_json, read_st_modules  # no torch

if TYPE_CHECKING:
    from m3e.bge_m3 import BGEM3Model
    from m3e.model import EmbeddingModel
    from m3e.reranker import Reranker

logger = logging.getLogger(__name__)

# Architectures whose position ids start after the padding index (two positions unused).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "ernie_m"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_IGNORE_ON_HUB = ["*.onnx", "onnx/*", "openvino/*", "*.msgpack", "*.h5", "*.ot", "flax_model*", "tf_model*", "rust_model*", "coreml/*"]


def load_model(
    name_or_path: str | None = None,
    *,
    device: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    backend: str = "torch",
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    long_text: str = "truncate",
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
) -> EmbeddingModel:
    """Load an embedding model.

    ``name_or_path``: a local directory (sentence-transformers or plain Hugging Face), a hub id
    such as ``moka-ai/m3e-base``, or ``None`` for the project's default model.
    ``pooling`` overrides the checkpoint's pooling (mean, cls, max, first_last_mean,
    last_weighted, ...); ``max_length`` lowers the truncation length; ``backend`` is
    ``torch`` (fp32, the default: vectors equal to sentence-transformers'), ``bf16``, ``int8``, ``openvino``,
    ``openvino-int8`` or ``auto`` (the fastest for this CPU and what is installed; ``m3e.backends.selection``).
    """
    from m3e.pooling import canonical_pooling
    from m3e.registry import defaults_for

    if name_or_path is None:
        from m3e.paths import default_model_path

        name_or_path = str(default_model_path())
    model_dir, model_id = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir)
    # A load that may end on a compiled backend leaves a record for a torch-free start next time
    # (m3e.compiled); the files are signed before they are read, so a record never vouches for newer files.
    compiled_request, signed_files = None, None
    if backend != "torch" and device in (None, "cpu") and query_prompt is None and document_prompt is None:
        compiled_request = LoadRequest(str(model_dir.resolve()), backend, max_length, pooling)
        signed_files = model_files(model_dir)
    known = defaults_for(model_id)
    st = read_st_modules(model_dir) or STModules()

    chosen_pooling = st.pooling or (known.pooling if known else None)
    if pooling is not None:
        chosen_pooling = canonical_pooling(pooling)
    if chosen_pooling is None:
        logger.warning("%s has no pooling config and is not a known model; using mean pooling", name_or_path)
        chosen_pooling = "mean"

    prompts = dict(st.prompts)
    if not prompts and known:
        prompts = dict(known.prompts)
    if query_prompt is not None:
        prompts["query"] = query_prompt
    if document_prompt is not None:
        prompts["document"] = document_prompt

    transformer_dir = model_dir / st.transformer_path
    tokenizer, transformer = _load_hf(transformer_dir, trust_remote_code)
    real_max = _real_max_length(tokenizer, transformer.config)
    configured = st.max_seq_length or (known.max_length if known else None) or real_max
    chosen_max = min(configured, real_max)
    if max_length is not None:
        if max_length < 1:
            raise M3EError("max_length must be >= 1")
        chosen_max = min(int(max_length), real_max)

    from m3e.model import EmbeddingModel

    model = EmbeddingModel(
        transformer,
        tokenizer,
        pooling=chosen_pooling,
        max_length=chosen_max,
        dense=read_dense_layers(model_dir, st.dense_paths),
        normalize_module=st.normalize,
        prompts=prompts,
        default_prompt_name=st.default_prompt_name,
        include_prompt=st.include_prompt,
        do_lower_case=st.do_lower_case,
        name=model_id or _display_name(model_dir),
        long_text=long_text,
    )
    model = _placed(model, model_dir, device, backend)
    if compiled_request is not None:
        remember_compiled(model, compiled_request, signed_files)
    return model


def load_bge_m3(
    name_or_path: str,
    *,
    device: str | None = None,
    max_length: int | None = None,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> BGEM3Model:
    """Load a BGE-M3 checkpoint (``BAAI/bge-m3`` or a directory in its layout: XLM-R, ``sparse_linear.pt``,
    ``colbert_linear.pt``) with all three outputs. ``m3e.load`` of the same directory gives its dense side
    alone, as an ordinary :class:`EmbeddingModel`."""
    from m3e.bge_m3 import COLBERT_HEAD, SPARSE_HEAD, BGEM3Model, is_bge_m3_dir, load_head

    model_dir, model_id = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir)
    if not is_bge_m3_dir(model_dir):
        raise M3EError(f"{name_or_path} is not a BGE-M3 checkpoint: it needs {SPARSE_HEAD} and {COLBERT_HEAD} "
                       "beside the encoder (use m3e.load for an ordinary embedding model)")
    embedder = load_model(str(model_dir), pooling="cls", max_length=max_length, query_prompt=query_prompt,
                          document_prompt=document_prompt)
    if model_id is not None:
        embedder.name = model_id  # a hub id names the model, not its snapshot directory
    hidden = int(embedder.transformer.config.hidden_size)
    sparse = load_head(model_dir / SPARSE_HEAD, hidden, out_features=1)
    model = BGEM3Model(embedder, sparse, load_head(model_dir / COLBERT_HEAD, hidden))
    if device is not None:
        model.to(device)
    return model


def load_reranker(
    name_or_path: str | None = None,
    *,
    device: str | None = None,
    max_length: int | None = None,
    backend: str = "torch",
    activation: str | None = None,
    max_windows: int = 8,
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
) -> Reranker:
    """Load a cross-encoder reranker: a sentence-transformers CrossEncoder directory, a plain Hugging Face
    sequence-classification checkpoint (BERT, XLM-R ...) or a hub id (BAAI/bge-reranker-* get their
    registry defaults).

    ``activation``: ``sigmoid`` (a 0-1 score; the default for one-label models), ``tanh`` or ``identity``
    (raw logits); ``max_length``: tokens per (query, document window); ``max_windows``: windows read per long
    document (its score is the best window's). ``None`` or ``"default"``: the default reranker.
    """
    from m3e.registry import reranker_defaults_for
    from m3e.reranker import Reranker, activation_from_name, read_rerank_weight

    if name_or_path is None or name_or_path == "default":
        from m3e.paths import default_reranker_path

        name_or_path = str(default_reranker_path())
    model_dir, model_id = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir)
    known = reranker_defaults_for(model_id)
    saved = read_cross_encoder_config(model_dir)
    tokenizer, classifier = _load_hf(model_dir, trust_remote_code, classifier=True)
    real_max = _real_max_length(tokenizer, classifier.config)
    configured = saved.get("max_seq_length") or (known.max_length if known else None) or real_max
    chosen_max = min(int(configured), real_max)
    if max_length is not None:
        if max_length < 1:
            raise M3EError("max_length must be >= 1")
        chosen_max = min(int(max_length), real_max)
    chosen_activation = (
        activation
        or activation_from_name(saved.get("activation_fn"))
        or (known.activation if known else None)
        or ("sigmoid" if int(classifier.config.num_labels) == 1 else "identity")
    )
    reranker = Reranker(
        classifier,
        tokenizer,
        max_length=chosen_max,
        activation=chosen_activation,
        name=model_id or _display_name(model_dir),
        max_windows=max_windows,
        rerank_weight=read_rerank_weight(model_dir),
    )
    return _placed(reranker, model_dir, device, backend)


_Loaded = TypeVar("_Loaded", "EmbeddingModel", "Reranker")


def _placed(model: _Loaded, model_dir: Path, device: str | None, backend: str) -> _Loaded:
    """The loaded model, told where it came from, on ``device``, running on ``backend``."""
    model.source_dir = model_dir
    if device is not None:
        model.to(device)
    if backend != "torch":
        model.set_backend(backend)
    return model


def is_reranker_dir(model_dir: Path) -> bool:
    """A sequence classifier's directory: a CrossEncoder's files, or a ``*ForSequenceClassification`` config."""
    st_config = model_dir / ST_CONFIG_FILE
    if st_config.is_file() and read_json(st_config).get("model_type") == "CrossEncoder":
        return True
    config = model_dir / "config.json"
    architectures = (read_json(config).get("architectures") or []) if config.is_file() else []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def read_cross_encoder_config(model_dir: Path) -> dict[str, Any]:
    """What a sentence-transformers CrossEncoder directory says: ``activation_fn`` and ``max_seq_length``, from
    the v5+ files (config_sentence_transformers.json, sentence_bert_config.json) or the older layout (a
    ``sentence_transformers`` entry in config.json)."""
    out: dict[str, Any] = {}
    config_file = model_dir / "config.json"
    if config_file.is_file():
        legacy = read_json(config_file).get("sentence_transformers") or {}
        if isinstance(legacy, dict) and legacy.get("activation_fn"):
            out["activation_fn"] = legacy["activation_fn"]
    st_file = model_dir / ST_CONFIG_FILE
    if st_file.is_file():
        cfg = read_json(st_file)
        if cfg.get("activation_fn"):
            out["activation_fn"] = cfg["activation_fn"]
    bert_file = model_dir / "sentence_bert_config.json"
    if bert_file.is_file():
        cfg = read_json(bert_file)
        if cfg.get("max_seq_length"):
            out["max_seq_length"] = int(cfg["max_seq_length"])
    return out


def resolve_model_dir(
    name_or_path: str, revision: str | None = None, cache_dir: str | None = None
) -> tuple[Path, str | None]:
    """A local directory for ``name_or_path``, and the hub id when it was one."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve(), None
    if path.exists():
        raise ModelNotFoundError(f"{name_or_path} is a file, not a model directory")
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local or not _HUB_ID.match(name_or_path):
        raise ModelNotFoundError(f"no model directory at {name_or_path}")
    return _download(name_or_path, revision, cache_dir), name_or_path


def _download(model_id: str, revision: str | None, cache_dir: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(model_id, revision=revision, cache_dir=cache_dir, ignore_patterns=_IGNORE_ON_HUB)
        )
    except Exception as exc:  # offline, not found, gated, network: one clear message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"no local directory {model_id!r} and it could not be fetched from the Hugging Face Hub "
            f"({type(exc).__name__}: {reason[:200]}). Offline? Download it on a connected machine "
            f"(`hf download {model_id} --local-dir ./{model_id.split('/')[-1]}`), copy the directory here "
            f"and load it by path: m3e.load('./{model_id.split('/')[-1]}')"
        ) from exc


def _load_hf(directory: Path, trust_remote_code: bool, *, classifier: bool = False) -> tuple[Any, Any]:
    """The tokenizer and the transformer (with its sequence-classification head when ``classifier``)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (directory / "config.json").exists():
        raise ModelNotFoundError(f"{directory} has no config.json: not a Hugging Face model directory")
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    # Load reports and per-tensor progress bars are noise for an embedding user.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True, trust_remote_code=trust_remote_code)
        # fp16 checkpoints are computed in fp32 on the torch backend (bf16/int8 are explicit choices);
        # half precision on CPU is slow and drifts from the reference vectors.
        auto = AutoModelForSequenceClassification if classifier else AutoModel
        transformer = auto.from_pretrained(str(directory), trust_remote_code=trust_remote_code, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise M3EError(f"cannot load the model in {directory}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    transformer.eval()
    return tokenizer, transformer


def _real_max_length(tokenizer: Any, config: Any) -> int:
    """The longest input the model can take: position table and tokenizer limit."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions - 2 if config.model_type in _OFFSET_POSITIONS else positions)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    return min(limits) if limits else 512


def _display_name(model_dir: Path) -> str:
    # Packaged models live in .../<package>/model or .../m3e/default_model: the directory name says nothing.
    return model_dir.parent.name if model_dir.name in ("model", "default_model") else model_dir.name


# Texts whose token ids the record's tokenizer must reproduce before the record is written.
_PROBE_TEXTS = (
    "今天天气很好，适合出去散步。",
    "The quick brown fox jumps over the lazy dog; Ünïcödé, digits 12345 and  extra   spaces.",
    "如何申请车险理赔? How do I file an auto-insurance claim?",
    "",
    "长文本" * 400 + " long text " * 200,
)


# ---------------------------------------------------------------------------------------------- compiled records
def remember_compiled(model: EmbeddingModel, request: LoadRequest, files: list[list[Any]] | None) -> Path | None:
    """Write the compiled record of ``model`` (just loaded from ``request.model_dir``, whose files were
    ``files`` before loading) when it runs on a compiled backend and everything after its transformer can run in
    numpy; returns the record's path, or None when the model does not qualify. Never raises for I/O: a record
    that cannot be written only costs the next command its fast start."""
    try:
        record = _record_for(model, request, files)
        if record is None:
            return None
        path = record_path(request)
        write_atomic(path, json.dumps(asdict(record), ensure_ascii=False, indent=1).encode("utf-8"))
        return path
    except (OSError, ValueError) as exc:
        logger.debug("no compiled record for %s: %s", request.model_dir, exc)
        return None


def _record_for(model: EmbeddingModel, request: LoadRequest, files: list[list[Any]] | None) -> CompiledRecord | None:
    runner_path = getattr(model._runner, "path", None)
    if (
        files is None
        or model.backend not in ENGINES
        or runner_path is None
        or len(model.dense)
        or model.pooling not in POOLINGS
        or model.long_text != "truncate"
        or model.device.type != "cpu"
        or model.source_dir is None
    ):
        return None
    tokenizer_file = _tokenizer_file(model)
    if tokenizer_file is None:
        return None
    record = CompiledRecord(
        request=asdict(request),
        backend=model.backend,
        graph=str(Path(runner_path).resolve()),
        tokenizer=str(tokenizer_file.resolve()),
        files=files,
        name=model.name,
        dim=model.dim,
        max_length=model.max_length,
        pooling=model.pooling,
        pad_token_id=model.pad_token_id,
        truncation_side=str(getattr(model.tokenizer, "truncation_side", "right")),
        prompts=dict(model.prompts),
        default_prompt_name=model.default_prompt_name,
        include_prompt=model.include_prompt,
        do_lower_case=model.do_lower_case,
        normalize_module=model.normalize_module,
    )
    # The Rust tokenizer read from tokenizer.json must give the ids the model's tokenizer gives (a tokenizer
    # whose Python class changes the file's behaviour does not qualify).
    tokenizer = CompiledTokenizer(record)
    for prompt in {"", *record.prompts.values()}:
        if tokenizer.tokenize(_PROBE_TEXTS, prompt) != model.tokenize(_PROBE_TEXTS, prompt):
            logger.debug("%s: tokenizer.json gives other ids than the model's tokenizer; no record", model.name)
            return None
        if tokenizer.prompt_length(prompt) != model.prompt_length(prompt):
            return None
    return record


def _tokenizer_file(model: EmbeddingModel) -> Path | None:
    if not getattr(model.tokenizer, "is_fast", False):
        return None
    name_or_path = getattr(model.tokenizer, "name_or_path", "") or ""
    for directory in (Path(name_or_path), model.source_dir):
        if directory is not None and (directory / "tokenizer.json").is_file():
            return directory / "tokenizer.json"
    return None
