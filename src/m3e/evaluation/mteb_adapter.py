"""mteb's encoder protocol for m3e models.

``EmbeddingModel.encode`` hands a call from mteb (a DataLoader plus ``task_metadata``) to
:func:`encode_for_mteb`, and ``EmbeddingModel.mteb_model_meta`` returns :func:`model_meta`.
With ``similarity`` / ``similarity_pairwise`` (cosine) already on the model, this is enough
for ``mteb.evaluate(m3e.load(...), tasks)``.

Prompt choice follows mteb's order over the model's ``prompts`` dict: "<task name>-<side>",
"<task name>", "<task type>-<side>", "<task type>", "<side>" (side = query / document).
Without a match, the query side gets the model's query prompt, the document side its
document prompt, and symmetric tasks (no side) the model's default prompt if it has one,
else none (as sentence-transformers does).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from m3e.errors import M3EError

logger = logging.getLogger(__name__)

# encode kwargs mteb may pass that m3e's encode has no use for.
_IGNORED = {"hf_split", "hf_subset", "precision", "convert_to_numpy", "convert_to_tensor", "num_proc"}


def side_of(prompt_type: Any) -> str | None:
    """"query", "document" or None from mteb's PromptType (or a plain string)."""
    if prompt_type is None:
        return None
    value = getattr(prompt_type, "value", prompt_type)
    return str(value) if value in ("query", "document") else None


def resolve_prompt(model: Any, task_metadata: Any, prompt_type: Any) -> str:
    """The prompt prefix for one mteb encode call (see the module docstring for the order)."""
    prompts: dict[str, str] = dict(getattr(model, "prompts", {}) or {})
    side = side_of(prompt_type)
    name = getattr(task_metadata, "name", None)
    task_type = getattr(task_metadata, "type", None)
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
    for key in keys:
        if key in prompts:
            return prompts[key] or ""
    if side == "query":
        return getattr(model, "query_prompt", "") or ""
    if side == "document":
        return getattr(model, "document_prompt", "") or ""
    default = getattr(model, "default_prompt_name", None)
    return prompts.get(default, "") if default else ""


def texts_of(inputs: Any) -> list[str]:
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


def show_progress(kwargs: dict[str, Any]) -> bool:
    """Encoding progress bars only when mteb asks for them and a person watches stderr."""
    return bool(kwargs.get("show_progress_bar", False)) and os.isatty(2)


def encode_for_mteb(model: Any, inputs: Any, **kwargs: Any) -> np.ndarray:
    """Encode an mteb DataLoader with an m3e EmbeddingModel; float32 [n, dim], unit length."""
    task_metadata = kwargs.pop("task_metadata", None)
    prompt_type = kwargs.pop("prompt_type", None)
    batch_size = int(kwargs.pop("batch_size", 32) or 32)
    progress = show_progress(kwargs)
    kwargs.pop("show_progress_bar", None)
    extra = {k for k in kwargs if k not in _IGNORED}
    if extra:
        logger.debug("ignoring encode arguments from mteb: %s", ", ".join(sorted(extra)))
    texts = texts_of(inputs)
    prompt = resolve_prompt(model, task_metadata, prompt_type)
    return model.encode(texts, batch_size=batch_size, prompt=prompt, normalize=True, show_progress=progress)


def meta_name(name: str) -> str:
    """mteb wants "organisation/model"; local names get an "m3e/" prefix."""
    name = (name or "model").strip().rstrip("/")
    if "/" in name:
        parts = [p for p in name.split("/") if p]
        return "/".join(parts[-2:]) if len(parts) >= 2 else f"m3e/{parts[-1]}"
    return f"m3e/{name}"


def model_meta(model: Any) -> Any:
    """An mteb ModelMeta describing an m3e model (name, dim, max tokens, size, cosine)."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    n_params = None
    if hasattr(model, "num_parameters"):
        try:
            n_params = int(model.num_parameters())
        except Exception:  # a model without torch parameters (e.g. a baseline)
            n_params = None
    return ModelMeta.create_empty(
        overwrites={
            "name": meta_name(str(getattr(model, "name", "model"))),
            "revision": str(getattr(model, "revision", None) or "local"),
            "embed_dim": getattr(model, "dim", None),
            "max_tokens": getattr(model, "max_length", None),
            "n_parameters": n_params,
            "similarity_fn_name": ScoringFunction.COSINE,
            "framework": ["PyTorch"],
            "use_instructions": bool(getattr(model, "prompts", None)),
            "modalities": ["text"],
        }
    )
