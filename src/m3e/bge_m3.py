"""BGE-M3: one XLM-R forward pass gives three representations of a text.

A BGE-M3 directory is an XLM-R checkpoint (with sentence-transformers files for its dense side) plus two small
heads saved by FlagEmbedding: ``sparse_linear.pt`` (hidden -> 1: a weight per token) and ``colbert_linear.pt``
(hidden -> hidden: one vector per token). From the last hidden state:

- **dense**: the first token's state (CLS), unit length — what ``m3e.load`` of the same directory returns;
- **lexical weights** (sparse): ``relu(sparse_linear(h))`` per token, keyed by token id as a string (as
  FlagEmbedding keys them), special tokens (cls, eos, pad, unk) dropped, the largest weight kept for a token
  that repeats;
- **ColBERT vectors**: ``colbert_linear(h)`` of every token after the first, each unit length.

Scores are FlagEmbedding's: dense = dot product, sparse = sum over shared tokens of the product of weights,
ColBERT = for each query vector the best dot product with a passage vector, averaged over the query vectors;
:meth:`BGEM3Model.compute_score` weighs them as ``BGEM3FlagModel.compute_score`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from m3e.errors import M3EError
from m3e.length_sorting import length_sorted_batches
from m3e.model import EmbeddingModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SPARSE_HEAD = "sparse_linear.pt"
COLBERT_HEAD = "colbert_linear.pt"
OUTPUTS = ("dense", "sparse", "colbert")
SCORE_KEYS = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")
# Dense, sparse and ColBERT weights of the model card's compute_score example; m3e's ColBERT re-scoring uses them.
M3_WEIGHTS = (0.4, 0.2, 0.4)

LexicalWeights = dict[str, float]


@dataclass
class M3Output:
    """What :meth:`BGEM3Model.encode` returns; an output not asked for is ``None``."""

    dense: NDArray[np.float32] | None = None  # [n, hidden], unit rows
    lexical_weights: list[LexicalWeights] | None = None  # token id (as a string) -> weight, per text
    colbert: list[NDArray[np.float32]] | None = None  # [tokens - 1, dim] per text, unit rows


def is_bge_m3_dir(path: str | Path) -> bool:
    """Whether ``path`` holds BGE-M3's two heads next to its encoder."""
    p = Path(path)
    return (p / SPARSE_HEAD).is_file() and (p / COLBERT_HEAD).is_file()


def load_head(path: Path, hidden: int, out_features: int | None = None) -> nn.Linear:
    """A head saved by FlagEmbedding (a ``Linear`` state dict); ``out_features`` None: as saved."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "weight" not in state:
        raise M3EError(f"{path} is not a Linear layer's state dict")
    weight = state["weight"]
    rows, cols = int(weight.shape[0]), int(weight.shape[1])
    if cols != hidden or (out_features is not None and rows != out_features):
        raise M3EError(f"{path}: weight of shape {tuple(weight.shape)} does not fit hidden size {hidden}")
    layer = nn.Linear(hidden, rows, bias="bias" in state)
    layer.load_state_dict(state)
    return layer.float().eval()


class BGEM3Model(nn.Module):
    """BGE-M3's three outputs; ``embedder`` (an :class:`EmbeddingModel` on the same transformer, CLS pooling,
    unit vectors) is its dense side, usable wherever m3e takes an embedding model (an index, mteb)."""

    def __init__(self, embedder: EmbeddingModel, sparse_linear: nn.Linear, colbert_linear: nn.Linear) -> None:
        super().__init__()
        if embedder.pooling != "cls":
            raise M3EError(f"BGE-M3's dense side is CLS pooling, not {embedder.pooling!r}")
        self.embedder = embedder
        self.sparse_linear = sparse_linear
        self.colbert_linear = colbert_linear
        self.eval()

    @property
    def transformer(self) -> PreTrainedModel:
        return self.embedder.transformer

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.embedder.tokenizer

    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def max_length(self) -> int:
        return self.embedder.max_length

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def colbert_dim(self) -> int:
        return int(self.colbert_linear.out_features)

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    def unused_token_ids(self) -> set[int]:
        """Tokens that get no lexical weight: cls, eos, pad and unk (FlagEmbedding's list)."""
        tok = self.tokenizer
        ids = (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
        return {int(i) for i in ids if i is not None}

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        output: Iterable[str] = ("dense",),
        batch_size: int = 32,
        prompt: str | None = None,
    ) -> M3Output:
        """Encode texts (truncated at ``max_length`` tokens) into the requested outputs, in input order, from one
        forward pass per batch. ``output``: any of "dense", "sparse", "colbert"."""
        wanted = _check_outputs(output)
        items = [texts] if isinstance(texts, str) else list(texts)
        ids = self.embedder.tokenize(items, prompt or "")
        dense: list[NDArray[np.float32]] = [np.zeros(0, dtype=np.float32)] * len(items)
        lexical: list[LexicalWeights] = [{}] * len(items)
        colbert: list[NDArray[np.float32]] = [np.zeros((0, self.colbert_dim), dtype=np.float32)] * len(items)
        for batch in length_sorted_batches([len(x) for x in ids], max(1, batch_size)):
            rows = [ids[i] for i in batch]
            hidden, mask = self._hidden_states(rows)
            with torch.inference_mode():
                if "dense" in wanted:
                    for row, vec in zip(batch, self._dense(hidden), strict=True):
                        dense[row] = vec
                if "sparse" in wanted:
                    for row, weights in zip(batch, self._lexical(hidden, rows), strict=True):
                        lexical[row] = weights
                if "colbert" in wanted:
                    for row, vecs in zip(batch, self._colbert(hidden, mask), strict=True):
                        colbert[row] = vecs
        dense_rows = np.stack(dense).astype(np.float32) if items else np.zeros((0, self.dim), dtype=np.float32)
        return M3Output(
            dense=dense_rows if "dense" in wanted else None,
            lexical_weights=lexical if "sparse" in wanted else None,
            colbert=colbert if "colbert" in wanted else None,
        )

    def encode_queries(
        self, texts: str | Sequence[str], *, output: Iterable[str] = ("dense",), batch_size: int = 32
    ) -> M3Output:
        """Queries with the query prompt (BGE-M3 has none unless one was given at load time)."""
        return self.encode(texts, output=output, batch_size=batch_size, prompt=self.embedder.query_prompt)

    def encode_documents(
        self, texts: str | Sequence[str], *, output: Iterable[str] = ("dense",), batch_size: int = 32
    ) -> M3Output:
        return self.encode(texts, output=output, batch_size=batch_size, prompt=self.embedder.document_prompt)

    def _hidden_states(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        pad = self.embedder.pad_token_id
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            out = self.transformer(input_ids=input_ids, attention_mask=mask, return_dict=True)
        return out.last_hidden_state.float(), mask

    def _dense(self, hidden: Tensor) -> NDArray[np.float32]:
        return F.normalize(hidden[:, 0], dim=-1).cpu().numpy().astype(np.float32)

    def _lexical(self, hidden: Tensor, rows: list[list[int]]) -> list[LexicalWeights]:
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).cpu().numpy()
        unused = self.unused_token_ids()
        out: list[LexicalWeights] = []
        for w_row, id_row in zip(weights, rows, strict=True):
            best: LexicalWeights = {}
            for w, token in zip(w_row[: len(id_row)].tolist(), id_row, strict=True):
                key = str(token)
                if token not in unused and w > 0 and w > best.get(key, 0.0):
                    best[key] = float(w)
            out.append(best)
        return out

    def _colbert(self, hidden: Tensor, mask: Tensor) -> list[NDArray[np.float32]]:
        vecs = self.colbert_linear(hidden[:, 1:]) * mask[:, 1:, None].float()
        vecs = F.normalize(vecs, dim=-1).cpu().numpy().astype(np.float32)
        lengths = mask.sum(dim=1).tolist()
        return [v[: int(n) - 1] for v, n in zip(vecs, lengths, strict=True)]

    # ------------------------------------------------------------------ scores
    def lexical_tokens(self, weights: LexicalWeights) -> dict[str, float]:
        """Lexical weights keyed by the token's text instead of its id (FlagEmbedding's convert_id_to_token)."""
        return {str(self.tokenizer.decode([int(k)])): v for k, v in weights.items()}

    @staticmethod
    def lexical_score(a: LexicalWeights, b: LexicalWeights) -> float:
        return float(sum(w * b[t] for t, w in a.items() if t in b))

    @staticmethod
    def colbert_score(query: NDArray[np.float32], passage: NDArray[np.float32]) -> float:
        if not len(query) or not len(passage):
            return 0.0
        return float((query @ passage.T).max(axis=1).sum() / len(query))

    def compute_score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        batch_size: int = 32,
    ) -> dict[str, list[float]]:
        """Dense, sparse and ColBERT scores of (query, passage) pairs and their weighted means ("sparse+dense",
        "colbert+sparse+dense"); ``weights`` are for dense, sparse, colbert, as in FlagEmbedding."""
        if len(weights) != 3:
            raise M3EError(f"weights are for dense, sparse and colbert: three numbers, not {len(weights)}")
        w_dense, w_sparse, w_colbert = (float(w) for w in weights)
        queries = self.encode_queries([q for q, _ in pairs], output=OUTPUTS, batch_size=batch_size)
        passages = self.encode_documents([p for _, p in pairs], output=OUTPUTS, batch_size=batch_size)
        assert queries.dense is not None and queries.lexical_weights is not None and queries.colbert is not None
        assert passages.dense is not None and passages.lexical_weights is not None and passages.colbert is not None
        dense = [float(s) for s in (queries.dense * passages.dense).sum(axis=1)]
        sparse = [self.lexical_score(q, p) for q, p in
                  zip(queries.lexical_weights, passages.lexical_weights, strict=True)]
        colbert = [self.colbert_score(q, p) for q, p in zip(queries.colbert, passages.colbert, strict=True)]
        return {
            "dense": dense,
            "sparse": sparse,
            "colbert": colbert,
            "sparse+dense": [(s * w_sparse + d * w_dense) / (w_sparse + w_dense)
                             for d, s in zip(dense, sparse, strict=True)],
            "colbert+sparse+dense": [(c * w_colbert + s * w_sparse + d * w_dense) / (w_dense + w_sparse + w_colbert)
                                     for d, s, c in zip(dense, sparse, colbert, strict=True)],
        }


def _check_outputs(output: Iterable[str]) -> set[str]:
    wanted = {output} if isinstance(output, str) else set(output)
    unknown = sorted(wanted - set(OUTPUTS))
    if unknown or not wanted:
        raise M3EError(f"output must name some of {', '.join(OUTPUTS)}, not {sorted(wanted) or 'nothing'}")
    return wanted
