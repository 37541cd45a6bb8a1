"""A static tier: a model's vocabulary embedded once, so a text's vector is a weighted mean of table rows.

``distill_static(model, out)`` (``m3e distill-static MODEL -o OUT``) writes a sentence-transformers
``StaticEmbedding`` model, as model2vec distils one:

1. every token of the vocabulary goes through the model alone (``[CLS] token [SEP]``, the model's own
   pooling, on whatever backend it runs), one row per token;
2. PCA to ``dim`` dimensions (centred, by SVD), which also removes the direction all rows share;
3. each row weighted by ``sif / (sif + p(token))`` (smooth inverse frequency), ``p`` counted over texts of
   m3e's offline training data when it is built, else Zipf's law over the vocabulary's order.

model2vec's own distiller needs transformers < 5.4 and m3e runs on 5.x, so the three steps are written here
(docs/design.md). ``StaticModel`` reads such a directory back with tokenizers and numpy alone: no torch
forward, about 50-500x the full model's throughput on a CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from m3e.atomic import building_dir
from m3e.errors import M3EError
from m3e.extras import require
from m3e.model_card import ModelCard

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel

SIF = 1e-4
DEFAULT_DIM = 256


def token_vectors(model: EmbeddingModel, batch_size: int = 256) -> NDArray[np.float32]:
    """[vocab, dim]: each token embedded alone by ``model``; special tokens' rows are zero."""
    vocab_size = len(model.tokenizer)
    specials = set(model.tokenizer.all_special_ids)
    ids = [i for i in range(vocab_size) if i not in specials]
    out = np.zeros((vocab_size, model.dim), dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        out[chunk] = model.embed_token_ids([model.add_special_tokens([i]) for i in chunk], normalize=False)
    return out


def pca(vectors: NDArray[np.float32], dim: int) -> NDArray[np.float32]:
    """The rows centred and projected on their ``dim`` principal directions (all of them when dim >= width)."""
    rows = vectors[np.abs(vectors).sum(axis=1) > 0]
    mean = rows.mean(axis=0)
    _, _, components = np.linalg.svd(rows - mean, full_matrices=False)
    projected = (vectors - mean) @ components[: min(dim, components.shape[0])].T
    projected[np.abs(vectors).sum(axis=1) == 0] = 0.0  # special tokens stay zero
    return projected.astype(np.float32)


def token_probabilities(model: EmbeddingModel, texts: Sequence[str]) -> tuple[NDArray[np.float64], str]:
    """p(token) from counts over ``texts`` (add-one smoothed), or Zipf's law over the ids when there are
    too few texts to count."""
    vocab_size = len(model.tokenizer)
    if len(texts) >= 1000:
        counts: Counter[int] = Counter()
        backend = model.tokenizer.backend_tokenizer  # untruncated, and without the long-input warning
        for encoding in backend.encode_batch(list(texts), add_special_tokens=False):
            counts.update(encoding.ids)
        freq = np.ones(vocab_size, dtype=np.float64)
        for token, n in counts.items():
            if token < vocab_size:
                freq[token] += n
        return freq / freq.sum(), f"token counts over {len(texts)} offline training texts"
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    return (1.0 / ranks) / (1.0 / ranks).sum(), "Zipf's law over the vocabulary order"


def distill_static(
    model: EmbeddingModel,
    out: str | os.PathLike[str],
    *,
    dim: int = DEFAULT_DIM,
    sif: float = SIF,
    texts: Sequence[str] | None = None,
) -> Path:
    """Write a sentence-transformers StaticEmbedding model distilled from ``model`` at ``out`` (atomically)."""
    require("sentence_transformers", purpose="m3e distill-static", extra="st", package="sentence-transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer

    if dim < 1:
        raise M3EError("--dim must be at least 1")
    if texts is None:
        from m3e.backends.calibration import calibration_texts

        texts, _ = calibration_texts(limit=20_000)
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise M3EError(f"{model.name}: a static model needs a fast (tokenizers) tokenizer")
    table = pca(token_vectors(model), dim)
    p, weighting = token_probabilities(model, texts)
    table = (table * (sif / (sif + p))[:, None]).astype(np.float32)
    static = StaticEmbedding(Tokenizer.from_str(backend.to_str()), embedding_weights=table)
    st = SentenceTransformer(modules=[static], device="cpu")
    target = Path(out).expanduser().resolve()
    with building_dir(target) as tmp:
        st.save(str(tmp))
        details = {"source": model.name, "dim": int(table.shape[1]), "vocabulary": int(table.shape[0]),
                   "pooling": model.pooling, "weighting": f"sif {sif}, {weighting}"}
        (tmp / "m3e_static.json").write_text(json.dumps(details, indent=2) + "\n", encoding="utf-8")
        card = ModelCard(f"{model.name} (static)", f"A static embedding table distilled from {model.name} by m3e.")
        card = card.section("Model", [
            f"{table.shape[0]} tokens x {table.shape[1]} dimensions: each token embedded alone by {model.name}, "
            f"PCA, weighted by {details['weighting']}.",
            "A text's vector is the mean of its tokens' rows (no transformer at run time).",
        ]).section("Use", [
            "`sentence_transformers.SentenceTransformer('PATH')`, or `m3e.static.StaticModel.load('PATH')`.",
        ])
        (tmp / "README.md").write_text(card.render(), encoding="utf-8")
    return target


class StaticModel:
    """A StaticEmbedding directory read with tokenizers and numpy: ``encode`` is a table lookup and a mean."""

    def __init__(self, tokenizer: Any, table: NDArray[np.float32], name: str = "static"):
        self.tokenizer = tokenizer
        self.table = table
        self.name = name
        self.prompts: dict[str, str] = {}
        self.query_prompt = ""
        self.document_prompt = ""
        self.default_prompt_name: str | None = None
        self.max_length = 1 << 20
        self.pooling = "mean"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StaticModel:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = Path(path)
        module = _static_module_dir(root)
        weights = load_file(str(module / "model.safetensors"))
        table = next(iter(weights.values())).astype(np.float32)
        tokenizer = Tokenizer.from_file(str(module / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(tokenizer, table, name=root.name)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def num_parameters(self) -> int:
        return int(self.table.size)

    def encode(self, texts: str | Sequence[str], batch_size: int = 1024, normalize: bool = True,
               prompt: str | None = None, **_: Any) -> NDArray[np.float32]:
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(items), batch_size):
            encodings = self.tokenizer.encode_batch(items[start : start + batch_size], add_special_tokens=False)
            for row, enc in enumerate(encodings):
                if enc.ids:
                    out[start + row] = self.table[enc.ids].mean(axis=0)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out

    def similarity(self, a: Any, b: Any) -> NDArray[np.float32]:
        va, vb = _unit(a), _unit(b)
        return np.asarray(va @ vb.T, dtype=np.float32)

    def similarity_pairwise(self, a: Any, b: Any) -> NDArray[np.float32]:
        va, vb = _unit(a), _unit(b)
        return np.asarray((va * vb).sum(axis=1), dtype=np.float32)


def _static_module_dir(root: Path) -> Path:
    """Where the StaticEmbedding module's files are: the path modules.json gives it (the root itself when it is
    the only module, as sentence-transformers >= 6 saves it)."""
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise M3EError(f"{root} is not a sentence-transformers model directory ({exc})") from exc
    for entry in modules:
        if str(entry.get("type", "")).endswith("StaticEmbedding"):
            module = root / str(entry.get("path") or "")
            if (module / "tokenizer.json").is_file() and (module / "model.safetensors").is_file():
                return module
    raise M3EError(f"{root} is not a StaticEmbedding model (modules.json names no StaticEmbedding with its files)")


def _unit(x: Any) -> NDArray[np.float32]:
    arr = np.asarray(x, dtype=np.float32)
    arr = arr[None, :] if arr.ndim == 1 else arr
    return np.asarray(arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12), dtype=np.float32)
