"""EmbeddingModel: a transformer, a pooling, optional Dense layers and normalisation.

The same chain as a sentence-transformers model (Transformer -> Pooling -> Dense -> Normalize),
so that the vectors are equal and ``save`` writes a directory sentence-transformers loads.
m3e writes its own encode loop for what it needs beyond that: texts tokenized once in one
fast-tokenizer call, batches sorted by length under a token budget, an opt-in long-text
mode that averages windows, and backends (fp32, bf16, int8) behind one interface.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from m3e.atomic import building_dir
from m3e.backends import BACKENDS, resolve_backend, runner_for
from m3e.backends.base import Runner, StreamingRunner
from m3e.dense import Dense
from m3e.errors import M3EError
from m3e.length_sorting import length_sorted_batches
from m3e.model_card import ModelCard, m3e_usage, model_summary
from m3e.pooling import NEEDS_HIDDEN_STATES, ST_POOLING_MODES, pool
from m3e.progress import ProgressBar, progress_bar
from m3e.prompts import document_prompt, query_prompt, resolve_prompt
from m3e.quantization import quantize_embeddings
from m3e.st_format import STModules, write_hf_files, write_st_modules
from m3e.truncation import truncated_token_ids
from m3e.vectors import cosine_matrix

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LONG_TEXT_MODES", "Dense", "EmbeddingModel", "cosine"]

logger = logging.getLogger(__name__)

LONG_TEXT_MODES = ("truncate", "windows")

@dataclass
class _Tokenized:
    """Token ids of the units that go through the model, and how they map back to texts."""

    ids: list[list[int]]
    owner: list[int]  # unit -> index of its text
    weight: list[float]  # unit weight when a text has several windows


class EmbeddingModel(nn.Module):
    def __init__(
        self,
        transformer: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooling: str = "mean",
        max_length: int = 512,
        dense: Sequence[Dense] = (),
        normalize_module: bool = False,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        include_prompt: bool = True,
        do_lower_case: bool = False,
        name: str = "model",
        long_text: str = "truncate",
    ):
        super().__init__()
        self.transformer: PreTrainedModel = transformer
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        self.pooling = pooling
        self.max_length = int(max_length)
        self.dense = nn.ModuleList(dense)
        self.normalize_module = normalize_module
        self.prompts: dict[str, str] = dict(prompts or {})
        self.default_prompt_name = default_prompt_name
        self.include_prompt = include_prompt
        self.do_lower_case = do_lower_case
        self.name = name
        if long_text not in LONG_TEXT_MODES:
            raise M3EError(f"long_text must be one of {LONG_TEXT_MODES}, not {long_text!r}")
        self.long_text = long_text
        self.backend = "torch"
        self.source_dir: Path | None = None  # the directory it was loaded from (backends keep artefacts there)
        # An optimised runner (e.g. ONNX Runtime int8) replaces the transformer forward when set.
        self._runner: Runner | None = None
        self._specials: tuple[list[int], list[int]] | None = None
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        if len(self.dense):
            return int(self.dense_layers[-1].linear.out_features)
        return int(self.transformer.config.hidden_size)

    @property
    def dense_layers(self) -> list[Dense]:
        """The Dense modules after pooling, in order."""
        return [cast(Dense, layer) for layer in self.dense]

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    @property
    def default_batch_size(self) -> int:
        # Measured on CPU: int8 (ONNX Runtime) peaks near 16 texts per batch, torch is flat from 16 to 64.
        return 16 if self.backend == "int8" else 32

    # What the backends export and run: the transformer's last hidden state; pooling stays in torch.
    artefact_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    artefact_output = "last_hidden_state"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(name={self.name!r}, arch={self.transformer.config.model_type}, dim={self.dim}, "
            f"max_length={self.max_length}, pooling={self.pooling!r}, backend={self.backend!r})"
        )

    # ------------------------------------------------------------------ backends
    def set_backend(self, backend: str) -> EmbeddingModel:
        """Switch the inference backend: ``torch`` (fp32), ``bf16`` (CPU autocast), ``int8`` (ONNX Runtime),
        ``openvino`` (OpenVINO; bf16 on CPUs with AMX / AVX512_BF16, fp32 elsewhere), ``openvino-int8`` (NNCF
        static int8 in OpenVINO) or ``auto`` (the one chosen for this CPU, installed engines and model;
        ``backend`` then names the choice)."""
        self._runner, self.backend = None, "torch"  # a failed switch leaves the model on torch
        backend = resolve_backend(self, backend)
        self._runner = runner_for(self, backend)
        self.backend = backend
        return self

    def use_runner(self, backend: str, runner: Runner) -> EmbeddingModel:
        """Run the transformer with ``runner`` (e.g. one over an artefact just exported) as backend ``backend``."""
        if backend not in BACKENDS:
            raise M3EError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self._runner = runner
        self.backend = backend
        return self

    # ------------------------------------------------------------------ prompts
    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
        return resolve_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name, self.name)

    @property
    def query_prompt(self) -> str:
        return query_prompt(self.prompts)

    @property
    def document_prompt(self) -> str:
        return document_prompt(self.prompts)

    # ------------------------------------------------------------------ tokenization
    def _prepare(self, texts: Sequence[str], prompt: str) -> list[str]:
        out = [prompt + t for t in texts] if prompt else list(texts)
        return [t.lower() for t in out] if self.do_lower_case else out

    def prompt_length(self, prompt: str) -> int:
        """Tokens of the prompt to leave out of pooling (sentence-transformers' rule)."""
        if not prompt or self.include_prompt:
            return 0
        ids = self.tokenizer(self._prepare([prompt], "")[0], add_special_tokens=True)["input_ids"]
        return len(ids) - 1

    def tokenize(self, texts: Sequence[str], prompt: str | None = None) -> list[list[int]]:
        """Token ids with special tokens, truncated at ``max_length``.

        Only the start of a long text is read: a text is cut to a character budget of
        ``CHARS_PER_TOKEN_BUDGET`` characters per token of ``max_length`` before it is tokenized (read further,
        doubling, in the rare text whose budget gives too few tokens, such as a long run of spaces), so a
        megabyte-long text costs what a short one does.
        """
        prompt = prompt or ""
        return truncated_token_ids(
            texts, self.max_length, lambda cut: self._prepare(cut, prompt), self._tokenize_truncated
        )

    def _tokenize_truncated(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        return [list(x) for x in enc["input_ids"]]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts, special tokens included."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(x) for x in enc["input_ids"]]

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a single text (e.g. [CLS] ... [SEP])."""
        if self._specials is None:
            bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
            full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            for start in range(len(full) - len(bare) + 1):
                if full[start : start + len(bare)] == bare:
                    self._specials = (list(full[:start]), list(full[start + len(bare) :]))
                    break
            else:
                self._specials = ([], [])
        return self._specials

    def add_special_tokens(self, ids: Sequence[int]) -> list[int]:
        """Wrap content ids as the tokenizer would wrap a single text."""
        prefix, suffix = self._special_tokens()
        return [*prefix, *ids, *suffix]

    def _windows(self, texts: Sequence[str], prompt: str) -> _Tokenized:
        """Split each text into windows that fit ``max_length``, prompt repeated in each."""
        prefix, suffix = self._special_tokens()
        n_special = len(prefix) + len(suffix)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        room = self.max_length - n_special - len(prompt_ids)
        if room < 1:
            raise M3EError(f"prompt of {len(prompt_ids)} tokens leaves no room within max_length {self.max_length}")
        content = self.tokenizer(
            self._prepare(texts, ""), add_special_tokens=False, truncation=False, verbose=False
        )["input_ids"]
        ids: list[list[int]] = []
        owner: list[int] = []
        weight: list[float] = []
        for i, toks in enumerate(content):
            chunks = [toks[s : s + room] for s in range(0, len(toks), room)] or [[]]
            for chunk in chunks:
                ids.append(self.add_special_tokens(list(prompt_ids) + chunk))
                owner.append(i)
                weight.append(float(max(len(chunk), 1)))
        return _Tokenized(ids, owner, weight)

    def _pad(self, batch: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def tokenize_batch(self, texts: Sequence[str], prompt: str | None = None) -> dict[str, Tensor]:
        """Padded tensors for ``forward`` (training and custom loops)."""
        return self._pad(self.tokenize(texts, prompt) or [[]])

    # ------------------------------------------------------------------ forward
    def _transformer_outputs(self, features: dict[str, Tensor]) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        need_hidden = self.pooling in NEEDS_HIDDEN_STATES
        if self._runner is not None and not need_hidden and not torch.is_grad_enabled():
            return self._runner(features), None
        kwargs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.backend == "bf16" and not torch.is_grad_enabled():
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                out = self.transformer(**kwargs, output_hidden_states=need_hidden, return_dict=True)
        else:
            out = self.transformer(**kwargs, output_hidden_states=need_hidden, return_dict=True)
        hidden = tuple(h.float() for h in out.hidden_states) if need_hidden else None
        return out.last_hidden_state.float(), hidden

    def forward(self, features: dict[str, Tensor], prompt_length: int = 0) -> Tensor:
        """Pooled embeddings [batch, dim], after Dense layers, before normalisation."""
        tokens, hidden = self._transformer_outputs(features)
        return self._pool(tokens, features["attention_mask"], hidden, prompt_length)

    def _pool(self, tokens: Tensor, mask: Tensor, hidden: tuple[Tensor, ...] | None, prompt_length: int) -> Tensor:
        x = pool(self.pooling, tokens, mask, hidden, prompt_length)
        for layer in self.dense_layers:
            x = layer(x)
        return x

    def embed_token_ids(
        self, batch: Sequence[Sequence[int]], normalize: bool = True, prompt_length: int = 0
    ) -> np.ndarray:
        """One padded forward pass over the given token ids (no sorting, no splitting)."""
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        features = {k: v.to(self.device) for k, v in self._pad(batch).items()}
        with torch.inference_mode():
            x = self.forward(features, prompt_length)
            if normalize or self.normalize_module:
                x = F.normalize(x, p=2, dim=1)
        return x.float().cpu().numpy()

    # ------------------------------------------------------------------ encode
    @overload
    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = ...,
        normalize: bool = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
        show_progress: bool | None = ...,
        convert_to_tensor: Literal[False] = ...,
        long_text: str | None = ...,
        max_batch_tokens: int | None = ...,
        *,
        truncate_dim: int | None = ...,
        precision: str = ...,
        convert_to_numpy: Literal[True] = ...,
        device: str | None = ...,
        output_value: str = ...,
        **st_keywords: Any,
    ) -> NDArray[Any]: ...

    @overload
    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = ...,
        normalize: bool = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
        show_progress: bool | None = ...,
        *,
        convert_to_tensor: Literal[True],
        long_text: str | None = ...,
        max_batch_tokens: int | None = ...,
        truncate_dim: int | None = ...,
        precision: str = ...,
        convert_to_numpy: bool = ...,
        device: str | None = ...,
        output_value: str = ...,
        **st_keywords: Any,
    ) -> Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = ...,
        normalize: bool = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
        show_progress: bool | None = ...,
        convert_to_tensor: Literal[False] = ...,
        long_text: str | None = ...,
        max_batch_tokens: int | None = ...,
        *,
        convert_to_numpy: Literal[False],
        truncate_dim: int | None = ...,
        precision: str = ...,
        device: str | None = ...,
        output_value: str = ...,
        **st_keywords: Any,
    ) -> list[Tensor]: ...

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = None,
        normalize: bool = True,
        prompt: str | None = None,
        prompt_name: str | None = None,
        show_progress: bool | None = None,
        convert_to_tensor: bool = False,
        long_text: str | None = None,
        max_batch_tokens: int | None = None,
        *,
        truncate_dim: int | None = None,
        precision: str = "float32",
        convert_to_numpy: bool = True,
        device: str | None = None,
        output_value: str = "sentence_embedding",
        **st_keywords: Any,
    ) -> NDArray[Any] | Tensor | list[Tensor]:
        """Embed texts; returns float32 [n, dim] in input order ([dim] for a single string).

        ``normalize`` makes unit vectors (a model with a Normalize module always does).
        ``long_text="windows"`` embeds texts longer than ``max_length`` as the token-weighted
        mean of windows instead of truncating them.

        sentence-transformers' keywords mean what they mean there: ``show_progress_bar``,
        ``normalize_embeddings`` (its default, False, when given), ``convert_to_numpy`` (False: a list of
        tensors), ``convert_to_tensor``, ``device`` (moves the model), ``truncate_dim`` (the first dimensions,
        normalised after the cut when normalising), ``precision`` (``float32``, or ``int8`` / ``uint8`` /
        ``binary`` / ``ubinary`` quantized as ``sentence_transformers.quantize_embeddings`` does, ranges from
        these embeddings) and ``output_value`` (``sentence_embedding``, or ``token_embeddings``: one
        [tokens, hidden] tensor per text).
        """
        show_progress, normalize = _st_aliases(st_keywords, show_progress, normalize)
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        single = isinstance(texts, str)
        items: list[str] = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise M3EError(f"texts[{i}] is {type(t).__name__}, expected str")
        resolved = self.resolve_prompt(prompt, prompt_name)
        if output_value == "token_embeddings":
            tokens = self._token_embeddings(items, resolved, batch_size or self.default_batch_size)
            return tokens[0] if single else tokens
        if output_value != "sentence_embedding":
            raise M3EError(f"output_value must be 'sentence_embedding' or 'token_embeddings', not {output_value!r}")
        if truncate_dim is not None and not 0 < truncate_dim <= self.dim:
            raise M3EError(f"truncate_dim must be between 1 and {self.dim}, not {truncate_dim}")
        vectors = self._encode_list(
            items,
            batch_size=batch_size or self.default_batch_size,
            normalize=normalize,
            prompt=resolved,
            show_progress=show_progress,
            long_text=long_text or self.long_text,
            max_batch_tokens=max_batch_tokens,
            truncate_dim=truncate_dim,
        )
        out: NDArray[Any] = quantize_embeddings(vectors, precision) if precision != "float32" else vectors
        if convert_to_tensor:
            tensor = torch.from_numpy(out)
            return tensor[0] if single else tensor
        if not convert_to_numpy:
            rows = list(torch.from_numpy(out))
            return rows[0] if single else rows  # one text: one tensor, as in sentence-transformers
        return out[0] if single else out

    def _token_embeddings(self, texts: list[str], prompt: str, batch_size: int) -> list[Tensor]:
        """The transformer's last hidden state of each text, padding removed (sentence-transformers'
        ``output_value="token_embeddings"``)."""
        ids = self.tokenize(texts, prompt)
        out: list[Tensor] = [torch.empty(0)] * len(texts)
        for batch in length_sorted_batches([len(x) for x in ids], batch_size):
            features = {k: v.to(self.device) for k, v in self._pad([ids[i] for i in batch]).items()}
            with torch.inference_mode():
                tokens, _ = self._transformer_outputs(features)
            for row, i in enumerate(batch):
                out[i] = tokens[row, : len(ids[i])].detach().float().cpu().clone()
        return out

    def _encode_list(
        self,
        texts: list[str],
        *,
        batch_size: int,
        normalize: bool,
        prompt: str,
        show_progress: bool | None,
        long_text: str,
        max_batch_tokens: int | None,
        truncate_dim: int | None = None,
    ) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, truncate_dim or self.dim), dtype=np.float32)
        if long_text not in LONG_TEXT_MODES:
            raise M3EError(f"long_text must be one of {LONG_TEXT_MODES}, not {long_text!r}")
        if long_text == "windows":
            units = self._windows(texts, prompt)
        else:
            units = _Tokenized(self.tokenize(texts, prompt), list(range(len(texts))), [1.0] * len(texts))
        prompt_length = self.prompt_length(prompt)
        if max_batch_tokens is None:
            max_batch_tokens = self.batch_tokens
        streams = self._runner_streams()
        if streams > 1:  # enough batches to keep every stream busy, even for one batch's worth of texts
            batch_size = max(1, min(batch_size, math.ceil(len(units.ids) / streams)))
        batches = length_sorted_batches([len(x) for x in units.ids], batch_size, max_batch_tokens)
        pooled = np.zeros((len(units.ids), self.dim), dtype=np.float32)
        progress = progress_bar(len(units.ids), show_progress, unit="text", desc="encode")
        if streams > 1 and len(batches) > 1:
            self._encode_on_streams(units.ids, batches, pooled, prompt_length, streams, progress)
        else:
            for batch in batches:
                pooled[batch] = self.embed_token_ids(
                    [units.ids[i] for i in batch], normalize=False, prompt_length=prompt_length
                )
                progress.update(len(batch))
        progress.close()
        if long_text == "windows" and len(units.ids) != len(texts):
            vectors = np.zeros((len(texts), self.dim), dtype=np.float64)
            totals = np.zeros(len(texts), dtype=np.float64)
            weight = np.asarray(units.weight)
            np.add.at(vectors, units.owner, pooled * weight[:, None])
            np.add.at(totals, units.owner, weight)
            pooled = (vectors / totals[:, None]).astype(np.float32)
        if truncate_dim is not None:  # sentence-transformers' order: the model's Normalize, the cut, then normalize
            if self.normalize_module:
                pooled = _unit_rows(pooled)
            pooled = pooled[:, :truncate_dim]
            return (_unit_rows(pooled) if normalize else pooled).astype(np.float32, copy=False)
        if normalize or self.normalize_module:
            pooled = _unit_rows(pooled)
        return pooled.astype(np.float32, copy=False)

    @property
    def batch_tokens(self) -> int | None:
        """Padded tokens per forward pass that the backend runs fastest (OpenVINO: batches whose activations
        stay in the caches); None when any batch size does. ``encode`` splits larger batches unless given
        ``max_batch_tokens``; the server's batches too."""
        return self._runner.batch_tokens if isinstance(self._runner, StreamingRunner) else None

    def _runner_streams(self) -> int:
        """Batches the runner computes at once (OpenVINO streams), 1 for a plain forward."""
        if not isinstance(self._runner, StreamingRunner) or self.pooling in NEEDS_HIDDEN_STATES:
            return 1
        return self._runner.streams

    def _encode_on_streams(
        self,
        ids: list[list[int]],
        batches: list[list[int]],
        pooled: np.ndarray,
        prompt_length: int,
        streams: int,
        progress: ProgressBar,
    ) -> None:
        # A few rounds of batches at a time: enough to keep the streams busy, while the hidden
        # states held at once stay a small multiple of one batch's.
        runner = self._runner
        assert isinstance(runner, StreamingRunner)  # _runner_streams() > 1 said so
        group = streams * 4
        for start in range(0, len(batches), group):
            chunk = batches[start : start + group]
            features = [self._pad([ids[i] for i in batch]) for batch in chunk]
            for batch, feats, tokens in zip(chunk, features, runner.run_many(features), strict=True):
                with torch.inference_mode():
                    pooled[batch] = self._pool(tokens, feats["attention_mask"], None, prompt_length).float().numpy()
                progress.update(len(batch))

    def encode_queries(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """Encode search queries with the model's query prompt (e.g. BGE's instruction); the keywords of
        :meth:`encode`, the same return."""
        kwargs.setdefault("prompt", self.query_prompt)
        return self.encode(texts, **kwargs)

    def encode_documents(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """Encode documents / passages with the model's document prompt (often none); the keywords of
        :meth:`encode`, the same return."""
        kwargs.setdefault("prompt", self.document_prompt)
        return self.encode(texts, **kwargs)

    # sentence-transformers >= 5 names, so code written for it works with m3e models too.
    encode_query = encode_queries
    encode_document = encode_documents

    def similarity(self, a: Any, b: Any) -> NDArray[np.float32]:
        """Cosine similarity matrix; ``a`` and ``b`` are vectors or lists of texts."""
        return cosine_matrix(self._as_vectors(a), self._as_vectors(b))

    def similarity_pairwise(self, a: Any, b: Any) -> NDArray[np.float32]:
        """Cosine similarity of a[i] with b[i]."""
        va = self._as_vectors(a)
        vb = self._as_vectors(b)
        num = (va * vb).sum(axis=1)
        den = np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12)
        return np.asarray(num / den, dtype=np.float32)

    def _as_vectors(self, x: Any) -> np.ndarray:
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], str)):
            x = self.encode(list([x] if isinstance(x, str) else x))
        if isinstance(x, Tensor):
            x = x.detach().float().cpu().numpy()
        arr = np.asarray(x, dtype=np.float32)
        return arr[None, :] if arr.ndim == 1 else arr

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike[str], model_card: str | None = None, *, dtype: str | None = None) -> Path:
        """Write a sentence-transformers directory, atomically (a crash leaves the old one or none).

        ``dtype="fp16"`` (or ``"bf16"``) stores the weights in half precision, half the disk; the config keeps
        float32 as the compute dtype, so m3e and sentence-transformers upcast them on load.
        """
        if dtype not in (None, "fp32", "fp16", "bf16"):
            raise M3EError(f"save dtype must be fp32, fp16 or bf16, not {dtype!r}")
        if self.pooling not in ST_POOLING_MODES:
            raise M3EError(
                f"pooling {self.pooling!r} has no sentence-transformers equivalent; "
                f"saveable poolings: {', '.join(ST_POOLING_MODES)}"
            )
        target = Path(path).expanduser().resolve()
        if target.exists() and not target.is_dir():
            raise M3EError(f"{target} exists and is not a directory")
        with building_dir(target) as tmp:
            self._write_st_dir(tmp, model_card, dtype)
        return target

    def _write_st_dir(self, out: Path, model_card: str | None, dtype: str | None = None) -> None:
        write_hf_files(out, self.transformer, self.tokenizer, dtype)
        spec = STModules(
            max_seq_length=self.max_length,
            do_lower_case=self.do_lower_case,
            pooling=self.pooling,
            include_prompt=self.include_prompt,
            normalize=self.normalize_module,
            prompts=self.prompts,
            default_prompt_name=self.default_prompt_name,
        )
        write_st_modules(out, spec, hidden_size=int(self.transformer.config.hidden_size), dense=self.dense_layers)
        if model_card is not None:
            (out / "README.md").write_text(model_card, encoding="utf-8")
        elif not (out / "README.md").exists():
            (out / "README.md").write_text(self.default_card(), encoding="utf-8")

    def default_card(self) -> str:
        """The card of a model saved without one."""
        summary = model_summary(
            self.transformer.config.model_type, self.dim, self.max_length, self.pooling, self.prompts
        )
        usage = [
            *m3e_usage(),
            "It loads unchanged with `sentence_transformers.SentenceTransformer('PATH')`.",
        ]
        card = ModelCard(self.name, "A sentence-transformers model saved by m3e.")
        return card.section("Model", summary).section("Use", usage).render()


def _unit_rows(x: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


# sentence-transformers' names for two of encode's arguments.
_ST_ALIASES = {"show_progress_bar": "show_progress", "normalize_embeddings": "normalize"}
ENCODE_KEYWORDS = (
    "batch_size", "normalize", "prompt", "prompt_name", "show_progress", "convert_to_tensor", "long_text",
    "max_batch_tokens", "truncate_dim", "precision", "convert_to_numpy", "device", "output_value",
    *_ST_ALIASES,
)


def _st_aliases(keywords: dict[str, Any], show_progress: bool | None, normalize: bool) -> tuple[bool | None, bool]:
    unknown = sorted(set(keywords) - set(_ST_ALIASES))
    if unknown:
        raise TypeError(
            f"encode() got unexpected keyword argument(s) {', '.join(unknown)}; it accepts {', '.join(ENCODE_KEYWORDS)}"
        )
    if "show_progress_bar" in keywords:
        show_progress = keywords["show_progress_bar"]
    if "normalize_embeddings" in keywords:
        normalize = bool(keywords["normalize_embeddings"])
    return show_progress, normalize


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors (helper for tests and scripts)."""
    return float(np.dot(a, b) / max(math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b))), 1e-12))
