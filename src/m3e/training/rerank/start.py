"""The reranker a run starts from: a reranker as it is, or an embedding model's encoder with a fresh head.

A directory whose model is a sequence classifier (a sentence-transformers CrossEncoder, a Hugging Face
``*ForSequenceClassification`` checkpoint) is loaded by :func:`m3e.loading.load_reranker`. Any other model m3e
loads (a sentence-transformers embedder, a plain BERT / XLM-R encoder, the default model) gives its encoder's
weights to ``AutoModelForSequenceClassification`` with one logit, whose classification head starts random (from
the run's seed); the reranker keeps the embedder's tokenizer and maximum length.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from m3e.errors import M3EError
from m3e.loading import is_reranker_dir
from m3e.reranker import Reranker


@dataclass(frozen=True)
class StartingReranker:
    reranker: Reranker
    origin: str  # what the model card says the run started from


def starting_reranker(name_or_path: str | None, *, device: str | None = None, seed: int = 42) -> StartingReranker:
    """The reranker for ``name_or_path`` (None: the default embedding model), with a fresh head when it is an
    embedding model (initialised from ``seed``)."""
    from m3e.loading import load_reranker, resolve_model_dir
    from m3e.paths import default_model_path

    where = str(default_model_path()) if name_or_path is None else name_or_path
    model_dir, _hub_id = resolve_model_dir(where)
    if is_reranker_dir(model_dir):
        reranker = load_reranker(where, device=device)
        return StartingReranker(reranker, "its own weights and classification head")
    return StartingReranker(
        _from_embedder(where, device, seed),
        "the embedding model's encoder under a fresh one-logit classification head "
        "(AutoModelForSequenceClassification)",
    )


def _from_embedder(name_or_path: str, device: str | None, seed: int) -> Reranker:
    from transformers import AutoModelForSequenceClassification

    from m3e.loading import load_model

    embedder = load_model(name_or_path, pooling="cls")  # pooling is not used: named so none is guessed
    config = copy.deepcopy(embedder.transformer.config)
    config.num_labels = 1
    config.architectures = None
    torch.manual_seed(seed)  # the fresh head
    classifier = AutoModelForSequenceClassification.from_config(config)
    _copy_encoder(embedder.transformer, classifier)
    reranker = Reranker(
        classifier, embedder.tokenizer, max_length=embedder.max_length, activation="sigmoid",
        name=f"{embedder.name}-reranker",
    )
    if device is not None:
        reranker.to(device)
    return reranker


def _copy_encoder(encoder: torch.nn.Module, classifier: torch.nn.Module) -> None:
    """The encoder's weights into the classifier's base model; only a pooler may be missing (BERT's pooler
    starts fresh when the embedder saved none; XLM-R's classifier has none)."""
    base = getattr(classifier, "base_model", None)
    if not isinstance(base, torch.nn.Module):
        raise M3EError(f"{type(classifier).__name__} has no base model to take the encoder's weights")
    missing, unexpected = base.load_state_dict(encoder.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("pooler.") and "position_ids" not in k]
    unexpected = [k for k in unexpected if not k.startswith("pooler.") and "position_ids" not in k]
    if missing or unexpected:
        raise M3EError(f"the encoder's weights do not fit {type(classifier).__name__} "
                       f"(e.g. {(missing + unexpected)[:3]})")
