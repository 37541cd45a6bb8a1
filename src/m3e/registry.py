"""Defaults for known model families, keyed by exact model id.

uniem guessed a model's type from a substring of its name, so BGE checkpoints got the
wrong pooling. Here a model id either matches an entry exactly or gets no special
treatment; a checkpoint's own sentence-transformers files always win over these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


@dataclass(frozen=True)
class ModelDefaults:
    pooling: str
    max_length: int = 512
    prompts: dict[str, str] = field(default_factory=dict)
    notes: str = ""


def _bge_zh(note: str) -> ModelDefaults:
    return ModelDefaults(
        pooling="cls",
        prompts={"query": BGE_ZH_QUERY_INSTRUCTION, "document": ""},
        notes=note,
    )


KNOWN_MODELS: dict[str, ModelDefaults] = {
    "moka-ai/m3e-small": ModelDefaults("mean", notes="M3E small, 512-d, no instruction"),
    "moka-ai/m3e-base": ModelDefaults("mean", notes="M3E base, 768-d, no instruction"),
    "moka-ai/m3e-large": ModelDefaults("mean", notes="M3E large, 1024-d, no instruction"),
    "BAAI/bge-small-zh": _bge_zh("BGE v1 small zh, CLS pooling, query instruction"),
    "BAAI/bge-base-zh": _bge_zh("BGE v1 base zh, CLS pooling, query instruction"),
    "BAAI/bge-large-zh": _bge_zh("BGE v1 large zh, CLS pooling, query instruction"),
    "BAAI/bge-large-zh-noinstruct": ModelDefaults("cls", notes="BGE v1 large zh trained without instruction"),
    "BAAI/bge-small-zh-v1.5": _bge_zh("BGE v1.5 small zh, CLS pooling, query instruction"),
    "BAAI/bge-base-zh-v1.5": _bge_zh("BGE v1.5 base zh, CLS pooling, query instruction"),
    "BAAI/bge-large-zh-v1.5": _bge_zh("BGE v1.5 large zh, CLS pooling, query instruction"),
    # m3e.load gives its dense side (CLS, unit vectors); m3e.load_bge_m3 adds lexical weights and ColBERT vectors.
    "BAAI/bge-m3": ModelDefaults("cls", max_length=8192, notes="BGE-M3 (XLM-R large): dense + sparse + ColBERT"),
    "shibing624/text2vec-base-chinese": ModelDefaults("mean", max_length=128, notes="CoSENT-trained, mean"),
}


def defaults_for(model_id: str | None) -> ModelDefaults | None:
    """Exact-id lookup; ``None`` for anything not listed (no substring guessing)."""
    if model_id is None:
        return None
    return KNOWN_MODELS.get(model_id.strip().rstrip("/"))


@dataclass(frozen=True)
class RerankerDefaults:
    max_length: int = 512
    activation: str = "sigmoid"
    notes: str = ""


KNOWN_RERANKERS: dict[str, RerankerDefaults] = {
    "BAAI/bge-reranker-base": RerankerDefaults(512, notes="XLM-R base cross-encoder, zh + en"),
    "BAAI/bge-reranker-large": RerankerDefaults(512, notes="XLM-R large cross-encoder, zh + en"),
    # Trained up to 8192 tokens; FlagEmbedding scores at 512 by default, and so does m3e (max_length= raises it).
    "BAAI/bge-reranker-v2-m3": RerankerDefaults(512, notes="BGE-M3-based multilingual cross-encoder"),
}


def reranker_defaults_for(model_id: str | None) -> RerankerDefaults | None:
    """Exact-id lookup for rerankers; ``None`` for anything not listed."""
    if model_id is None:
        return None
    return KNOWN_RERANKERS.get(model_id.strip().rstrip("/"))
