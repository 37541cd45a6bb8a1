"""mteb's encoder protocol around an m3e model: ``mteb.evaluate(for_mteb(m3e.load(...)), tasks)``.

The model knows nothing of mteb; :class:`MtebEncoder` wraps an ``EmbeddingModel`` and answers mteb's
calls: ``encode`` (a DataLoader of text batches, the task's metadata and the query / document side),
``similarity`` / ``similarity_pairwise`` (cosine) and ``mteb_model_meta``.

Prompt choice follows mteb's order over the model's ``prompts`` dict: "<task name>-<side>",
"<task name>", "<task type>-<side>", "<task type>", "<side>" (side = query / document).
Without a match, the query side gets the model's query prompt, the document side its
document prompt, and symmetric tasks (no side) the model's default prompt if it has one,
else none (as sentence-transformers does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from m3e.errors import M3EError

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType

    from m3e.model import EmbeddingModel

logger = logging.getLogger(__name__)

# encode kwargs mteb may pass that m3e's encode has no use for.
_IGNORED = {"precision", "convert_to_numpy", "convert_to_tensor", "num_proc"}


class PromptedModel(Protocol):
    """What prompt resolution reads from a model (an ``EmbeddingModel`` has all of it)."""

    @property
    def prompts(self) -> Mapping[str, str]: ...

    @property
    def query_prompt(self) -> str: ...

    @property
    def document_prompt(self) -> str: ...

    @property
    def default_prompt_name(self) -> str | None: ...


def side_of(prompt_type: PromptType | str | None) -> str | None:
    """"query", "document" or None from mteb's PromptType (or a plain string)."""
    if prompt_type is None:
        return None
    value = getattr(prompt_type, "value", prompt_type)
    return str(value) if value in ("query", "document") else None


def _prompt_keys(name: str | None, task_type: str | None, side: str | None) -> list[str]:
    """The keys of a model's ``prompts`` to try, most specific first (mteb's order)."""
    keys = []
    if name and side:
        keys.append(f"{name}-{side}")
    if name:
        keys.append(name)
    if task_type and side:
        keys.append(f"{task_type}-{side}")
    if task_type:
        keys.append(str(task_type))
    if side:
        keys.append(side)
        if side == "document":
            keys.append("passage")  # E5-style checkpoints name the document prompt "passage"
    return keys


def resolve_prompt(
    model: PromptedModel, task_metadata: TaskMetadata | None, prompt_type: PromptType | str | None
) -> str:
    """The prompt prefix for one mteb encode call (see the module docstring for the order)."""
    prompts = dict(model.prompts or {})
    side = side_of(prompt_type)
    name = getattr(task_metadata, "name", None)
    task_type = getattr(task_metadata, "type", None)
    for key in _prompt_keys(name, task_type, side):
        if key in prompts:
            return prompts[key] or ""
    if side == "query":
        return model.query_prompt or ""
    if side == "document":
        return model.document_prompt or ""
    default = model.default_prompt_name
    return prompts.get(default, "") if default else ""


def texts_of(inputs: Iterable[Any]) -> list[str]:
    """All texts of an mteb DataLoader (batches are dicts with a "text" list), in order."""
    texts: list[str] = []
    for batch in inputs:
        if isinstance(batch, dict):
            if "text" not in batch:
                raise M3EError(f"m3e models embed text only; this task gives {', '.join(batch)}")
            texts.extend(str(t) for t in batch["text"])
        elif isinstance(batch, str):
            texts.append(batch)
        else:
            texts.extend(str(t) for t in batch)
    return texts


def show_progress(kwargs: Mapping[str, Any]) -> bool:
    """Encoding progress bars only when mteb asks for them and a person watches stderr."""
    return bool(kwargs.get("show_progress_bar", False)) and os.isatty(2)


def meta_name(name: str) -> str:
    """mteb wants "organisation/model"; local names get an "m3e/" prefix."""
    name = (name or "model").strip().rstrip("/")
    if "/" in name:
        parts = [p for p in name.split("/") if p]
        return "/".join(parts[-2:]) if len(parts) >= 2 else f"m3e/{parts[-1]}"
    return f"m3e/{name}"


def model_meta(model: EmbeddingModel) -> ModelMeta:
    """An mteb ModelMeta describing an m3e model (name, dim, max tokens, size, cosine)."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    return ModelMeta.create_empty(
        overwrites={
            "name": meta_name(str(model.name)),
            "revision": "local",
            "embed_dim": model.dim,
            "max_tokens": model.max_length,
            "n_parameters": model.num_parameters(),
            "similarity_fn_name": ScoringFunction.COSINE,
            "framework": ["PyTorch"],
            "use_instructions": bool(model.prompts),
            "modalities": ["text"],
        }
    )


class MtebEncoder:
    """An m3e ``EmbeddingModel`` as an mteb encoder (mteb 2.x's ``EncoderProtocol``)."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"MtebEncoder({self.model!r})"

    def encode(
        self,
        inputs: Iterable[Any],
        *,
        task_metadata: TaskMetadata | None,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Encode an mteb DataLoader; float32 [n, dim], unit length."""
        batch_size = int(kwargs.pop("batch_size", 32) or 32)
        progress = show_progress(kwargs)
        kwargs.pop("show_progress_bar", None)
        extra = {k for k in kwargs if k not in _IGNORED}
        if extra:
            logger.debug("ignoring encode arguments from mteb: %s", ", ".join(sorted(extra)))
        texts = texts_of(inputs)
        prompt = resolve_prompt(self.model, task_metadata, prompt_type)
        vectors = self.model.encode(
            texts, batch_size=batch_size, prompt=prompt, normalize=True, show_progress=progress
        )
        return np.asarray(vectors)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        return self.model.similarity(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        return self.model.similarity_pairwise(embeddings1, embeddings2)

    @property
    def mteb_model_meta(self) -> ModelMeta:
        return model_meta(self.model)


def for_mteb(model: EmbeddingModel) -> MtebEncoder:
    """``model`` as an mteb encoder: ``mteb.evaluate(for_mteb(model), tasks)``."""
    return MtebEncoder(model)


def corpus_texts(corpus: Any) -> tuple[list[str], list[str]]:
    """The ids and the texts (title, a space, the text; as mteb's own dense retrieval joins them) of an mteb
    retrieval corpus."""
    ids = [str(x) for x in corpus["id"]]
    titles = corpus["title"] if "title" in corpus.column_names else [""] * len(ids)
    texts = [f"{t} {x}".strip() if t else str(x) for t, x in zip(titles, corpus["text"], strict=True)]
    return ids, texts
