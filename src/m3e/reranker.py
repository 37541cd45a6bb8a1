"""Reranker: a cross-encoder that scores (query, document) pairs, the second stage after an embedder.

The same model as sentence-transformers' ``CrossEncoder`` (a sequence-classification transformer, one logit
per pair, an activation — sigmoid for one label): ``predict`` gives equal scores and ``save`` writes a
directory that ``CrossEncoder`` loads unchanged. m3e adds what its encode loop has: pairs built at the token
level and batched by length, and documents longer than the model's length scored by windows — the query with
each window of the document, the pair's score the maximum over its windows (a relevant passage anywhere in a
long document counts, as it would if the document had been chunked). At most ``max_windows`` windows are read
per document; the text beyond them is never tokenized, so one huge document costs a bounded amount.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from m3e.atomic import building_dir
from m3e.backends import BACKENDS, resolve_backend, runner_for
from m3e.backends.base import Runner
from m3e.errors import M3EError
from m3e.length_sorting import length_sorted_batches
from m3e.model_card import ModelCard, python_block
from m3e.progress import progress_bar
from m3e.st_format import MODULES_FILE, ST_CONFIG_FILE, read_json, write_hf_files, write_json
from m3e.version import __version__

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ACTIVATIONS", "Reranker"]

logger = logging.getLogger(__name__)

# sentence-transformers' names for a CrossEncoder's activation, and the functions they stand for.
ACTIVATIONS: dict[str, str] = {
    "sigmoid": "torch.nn.modules.activation.Sigmoid",
    "identity": "torch.nn.modules.linear.Identity",
    "tanh": "torch.nn.modules.activation.Tanh",
}
# Characters per token is at least this on any tokenizer m3e meets (a CJK character or a byte is one token at
# worst); a document is cut to max_windows * room * this many characters before it is tokenized.
_MAX_CHARS_PER_TOKEN = 12


@dataclass(frozen=True)
class _PairTemplate:
    """How the tokenizer wraps a pair: [prefix] query [middle] document [suffix], with the segment ids of each."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    query_type: int
    document_type: int
    prefix_types: list[int]
    middle_types: list[int]
    suffix_types: list[int]

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


class Reranker(nn.Module):
    def __init__(
        self,
        classifier: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = 512,
        activation: str = "sigmoid",
        name: str = "reranker",
        max_windows: int = 8,
        rerank_weight: float | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise M3EError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        if max_windows < 1:
            raise M3EError("max_windows must be >= 1")
        self.transformer: PreTrainedModel = classifier
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        self.max_length = int(max_length)
        self.activation = activation
        self.name = name
        self.max_windows = max_windows
        # Its share when its score is fused with the retrieval score in retrieve-then-rerank (None: its order
        # alone); chosen on a dev split when it was trained and kept in the directory's RERANK_FILE.
        self.rerank_weight = rerank_weight
        self.backend = "torch"
        self.source_dir: Path | None = None
        self._runner: Runner | None = None
        self._template: _PairTemplate | None = None
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def num_labels(self) -> int:
        return int(self.transformer.config.num_labels or 1)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def uses_token_types(self) -> bool:
        """BERT-style models read segment ids (query 0, document 1); XLM-R-style models have one segment."""
        return int(getattr(self.transformer.config, "type_vocab_size", 1) or 1) > 1

    @property
    def artefact_inputs(self) -> tuple[str, ...]:
        """The inputs of the exported graph (backends): segment ids only for models that read them."""
        return ("input_ids", "attention_mask", "token_type_ids") if self.uses_token_types else ("input_ids", "attention_mask")

    artefact_output = "logits"  # what the exported graph returns (backends)

    def __repr__(self) -> str:
        return (
            f"Reranker(name={self.name!r}, arch={self.transformer.config.model_type}, max_length={self.max_length}, "
            f"activation={self.activation!r}, backend={self.backend!r})"
        )

    # ------------------------------------------------------------------ backends
    def set_backend(self, backend: str) -> Reranker:
        """``torch`` (fp32), ``bf16`` (CPU autocast), ``int8`` (ONNX Runtime), ``openvino``, ``openvino-int8``
        (NNCF static int8, calibrated on offline (query, passage) pairs) or ``auto``."""
        self._runner, self.backend = None, "torch"  # a failed switch leaves the reranker on torch
        backend = resolve_backend(self, backend)
        self._runner = runner_for(self, backend)
        self.backend = backend
        return self

    def use_runner(self, backend: str, runner: Runner) -> Reranker:
        """Run the transformer with ``runner`` (e.g. one over an artefact just exported) as backend ``backend``."""
        if backend not in BACKENDS:
            raise M3EError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self._runner = runner
        self.backend = backend
        return self

    # ------------------------------------------------------------------ pairs -> token ids
    def _pair_template(self) -> _PairTemplate:
        if self._template is None:
            a = self.tokenizer("a", add_special_tokens=False)["input_ids"]
            b = self.tokenizer("b", add_special_tokens=False)["input_ids"]
            enc = self.tokenizer("a", "b", add_special_tokens=True, return_token_type_ids=True)
            full, types = list(enc["input_ids"]), list(enc.get("token_type_ids") or [0] * len(enc["input_ids"]))
            i = _find(full, a, 0)
            j = _find(full, b, i + len(a))
            if i < 0 or j < 0:
                raise M3EError(f"cannot find how the tokenizer of {self.name!r} joins a pair of texts")
            self._template = _PairTemplate(
                prefix=full[:i],
                middle=full[i + len(a) : j],
                suffix=full[j + len(b) :],
                query_type=types[i],
                document_type=types[j],
                prefix_types=types[:i],
                middle_types=types[i + len(a) : j],
                suffix_types=types[j + len(b) :],
            )
        return self._template

    def pair_features(self, pairs: Sequence[tuple[str, str]], *, first_window_only: bool = False) -> dict[str, Tensor]:
        """Padded model inputs of (query, document) pairs, laid out as ``predict`` lays them out: one row per
        document window, or per pair with ``first_window_only`` (what training reads; nothing further of a long
        document is tokenized)."""
        ids, types, _ = self.pair_windows(pairs, max_windows=1 if first_window_only else None)
        return self.pad_pairs(ids, types)

    def pair_windows(
        self, pairs: Sequence[tuple[str, str]], max_windows: int | None = None
    ) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """Token ids and segment ids of every (query, document window), and the pair each window belongs to."""
        windows_read = max_windows or self.max_windows
        t = self._pair_template()
        room_total = self.max_length - t.n_special
        if room_total < 2:
            raise M3EError(f"max_length {self.max_length} leaves no room for a pair")
        max_query = max(1, room_total // 2)  # a long query keeps at most half of the room
        queries = sorted({q for q, _ in pairs})
        query_ids = dict(zip(queries, self._content_ids(queries, max_query * _MAX_CHARS_PER_TOKEN), strict=True))
        ids: list[list[int]] = []
        types: list[list[int]] = []
        owner: list[int] = []
        docs = [d for _, d in pairs]
        for k, (q, _) in enumerate(pairs):
            q_ids = query_ids[q][:max_query]
            room = room_total - len(q_ids)
            d_ids = self._content_ids([docs[k]], windows_read * room * _MAX_CHARS_PER_TOKEN)[0]
            windows = [d_ids[s : s + room] for s in range(0, len(d_ids), room)][:windows_read] or [[]]
            for window in windows:
                ids.append([*t.prefix, *q_ids, *t.middle, *window, *t.suffix])
                types.append(
                    [*t.prefix_types, *([t.query_type] * len(q_ids)), *t.middle_types,
                     *([t.document_type] * len(window)), *t.suffix_types]
                )
                owner.append(k)
        return ids, types, owner

    def _content_ids(self, texts: Sequence[str], max_chars: int) -> list[list[int]]:
        if not texts:
            return []
        enc = self.tokenizer([t[:max_chars] for t in texts], add_special_tokens=False, truncation=False, verbose=False)
        return [list(x) for x in enc["input_ids"]]

    # ------------------------------------------------------------------ forward
    def pad_pairs(self, ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """The model's padded inputs for pairs laid out by :meth:`pair_windows` (segment ids only for models that
        read them)."""
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), 0 if pad is None else int(pad), dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (x, y) in enumerate(zip(ids, types, strict=True)):
            input_ids[row, : len(x)] = torch.as_tensor(x, dtype=torch.long)
            attention_mask[row, : len(x)] = 1
            token_type_ids[row, : len(y)] = torch.as_tensor(y, dtype=torch.long)
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.uses_token_types:
            features["token_type_ids"] = token_type_ids
        return features

    def logits(self, features: dict[str, Tensor]) -> Tensor:
        """Raw scores [batch, num_labels] of padded pairs."""
        if self._runner is not None and not torch.is_grad_enabled():
            return self._runner(features).float()
        features = {k: v.to(self.device) for k, v in features.items()}
        if self.backend == "bf16" and not torch.is_grad_enabled():
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                out = self.transformer(**features, return_dict=True)
        else:
            out = self.transformer(**features, return_dict=True)
        logits: Tensor = out.logits
        return logits.float()

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.logits(features)

    def activate(self, logits: Tensor, activation: str | None = None) -> Tensor:
        """Scores from raw logits: the model's activation, or ``activation`` (``identity`` keeps the logits)."""
        name = activation or self.activation
        if name == "sigmoid":
            return torch.sigmoid(logits)
        if name == "tanh":
            return torch.tanh(logits)
        if name == "identity":
            return logits
        raise M3EError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {name!r}")

    # ------------------------------------------------------------------ scoring
    def predict(
        self,
        pairs: Sequence[tuple[str, str]] | Sequence[Sequence[str]],
        batch_size: int = 32,
        *,
        activation: str | None = None,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = False,
    ) -> NDArray[np.float32] | Tensor:
        """Scores of (query, document) pairs: [n] for a one-label model, [n, labels] otherwise.

        ``activation``: ``sigmoid`` / ``tanh`` / ``identity`` instead of the model's own (``identity`` gives the
        raw logits). A document longer than the model's length scores as its best window.
        """
        checked = _check_pairs(pairs)
        scores = self._score(checked, batch_size, activation, show_progress_bar)
        out = scores[:, 0] if self.num_labels == 1 else scores
        return torch.from_numpy(out) if convert_to_tensor else out

    def _score(
        self, pairs: list[tuple[str, str]], batch_size: int, activation: str | None, show: bool | None
    ) -> NDArray[np.float32]:
        if not pairs:
            return np.zeros((0, self.num_labels), dtype=np.float32)
        ids, types, owner = self.pair_windows(pairs)
        window_scores = np.zeros((len(ids), self.num_labels), dtype=np.float32)
        batches = length_sorted_batches([len(x) for x in ids], max(1, batch_size))
        progress = progress_bar(len(ids), show, unit="pair", desc="rerank")
        with torch.inference_mode():
            for batch in batches:
                logits = self.logits(self.pad_pairs([ids[i] for i in batch], [types[i] for i in batch]))
                window_scores[batch] = self.activate(logits, activation).cpu().numpy()
                progress.update(len(batch))
        progress.close()
        scores = np.full((len(pairs), self.num_labels), -np.inf, dtype=np.float32)
        np.maximum.at(scores, np.asarray(owner), window_scores)
        return scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        *,
        activation: str | None = None,
    ) -> list[dict[str, Any]]:
        """The documents ordered by score, best first: ``[{"corpus_id", "score"[, "text"]}]`` as in
        sentence-transformers' ``CrossEncoder.rank``; ``top_k`` keeps the best k."""
        if self.num_labels != 1:
            raise M3EError(f"rank needs a one-label reranker; {self.name!r} has {self.num_labels} labels")
        if not isinstance(query, str):
            raise M3EError(f"query is {type(query).__name__}, expected str")
        scores = self._score(
            _check_pairs([(query, d) for d in documents]), batch_size, activation, None
        )[:, 0]
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[: max(0, top_k)]
        results: list[dict[str, Any]] = []
        for i in order:
            item: dict[str, Any] = {"corpus_id": int(i), "score": float(scores[i])}
            if return_documents:
                item["text"] = documents[i]
            results.append(item)
        return results

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike[str], *, dtype: str | None = None, model_card: str | None = None) -> Path:
        """Write a directory that sentence-transformers' ``CrossEncoder`` and ``m3e.load_reranker`` load,
        atomically; ``dtype="fp16"``/``"bf16"`` halves the weights on disk (computed in fp32 on load)."""
        if dtype not in (None, "fp32", "fp16", "bf16"):
            raise M3EError(f"save dtype must be fp32, fp16 or bf16, not {dtype!r}")
        target = Path(path).expanduser().resolve()
        if target.exists() and not target.is_dir():
            raise M3EError(f"{target} exists and is not a directory")
        with building_dir(target) as tmp:
            self._write(tmp, dtype, model_card)
        return target

    def _write(self, out: Path, dtype: str | None, model_card: str | None) -> None:
        write_hf_files(out, self.transformer, self.tokenizer, dtype)
        write_cross_encoder_files(out, max_length=self.max_length, activation=self.activation)
        if self.rerank_weight is not None:
            write_json(out / RERANK_FILE, {"rerank_weight": self.rerank_weight})
        (out / "README.md").write_text(model_card or self.default_card(), encoding="utf-8")

    def default_card(self) -> str:
        usage = python_block(
            "import m3e",
            "reranker = m3e.load_reranker('PATH')",
            'reranker.rank("车险理赔需要什么材料？", ["理赔需要保单和事故证明。", "今天天气很好"], return_documents=True)',
        )
        card = ModelCard(self.name, "A cross-encoder reranker saved by m3e; it loads unchanged with "
                         "`sentence_transformers.CrossEncoder('PATH')`.")
        card.section("Model", [
            f"- architecture: {self.transformer.config.model_type} sequence classification, {self.num_labels} label(s)",
            f"- max length: {self.max_length} tokens (longer documents: best of up to {self.max_windows} windows)",
            f"- activation: {self.activation}",
        ])
        return card.section("Use", usage).render()


# m3e's own file in a reranker's directory (sentence-transformers ignores it): how retrieve-then-rerank fuses it.
RERANK_FILE = "m3e_rerank.json"


def read_rerank_weight(model_dir: Path) -> float | None:
    """The fusion weight a reranker directory recommends (None: use the reranker's order alone)."""
    path = model_dir / RERANK_FILE
    if not path.is_file():
        return None
    value = read_json(path).get("rerank_weight")
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise M3EError(f"{path}: rerank_weight must be a number between 0 and 1")
    return float(value)


def write_cross_encoder_files(out: Path, *, max_length: int, activation: str) -> None:
    """The sentence-transformers files of a CrossEncoder directory (the transformer at the root)."""
    write_json(
        out / MODULES_FILE,
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}],
    )
    write_json(
        out / "sentence_bert_config.json",
        {
            "transformer_task": "sequence-classification",
            "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
            "module_output_name": "scores",
            "max_seq_length": max_length,
        },
    )
    write_json(
        out / ST_CONFIG_FILE,
        {
            "__version__": {"pytorch": torch.__version__.split("+")[0], "m3e": __version__},
            "activation_fn": ACTIVATIONS[activation],
            "default_prompt_name": None,
            "model_type": "CrossEncoder",
            "prompts": {},
        },
    )


def activation_from_name(name: str | None) -> str | None:
    """m3e's activation name for a sentence-transformers class path (None when unknown or absent)."""
    if not name:
        return None
    for short, full in ACTIVATIONS.items():
        if name == full or name.rsplit(".", 1)[-1].lower() == short:
            return short
    return None


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def _check_pairs(pairs: Sequence[tuple[str, str]] | Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        raise M3EError("predict takes a list of (query, document) pairs, not one pair")
    out: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise M3EError(f"pairs[{i}] is not a (query, document) pair of strings")
        out.append((pair[0], pair[1]))
    return out
