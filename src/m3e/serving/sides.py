"""Which prompt a request's texts get: the query side, the document side, a named prompt or none.

An asymmetric model (the default, BGE, e5) embeds queries and documents with different prompts, and a RAG
framework sends both through the same endpoint, so a request says which side its texts are on, in the way
its client can:

- ``input_type`` (Cohere, Voyage, Jina style): ``query`` / ``search_query`` / ``retrieval.query`` give the
  model's query prompt; ``document`` / ``search_document`` / ``passage`` / ``retrieval.passage`` its document
  prompt; ``classification`` / ``clustering`` the model's prompt of that name when it has one, else the
  model's own default prompt (what ``encode`` applies when given no prompt);
- ``prompt_name`` (TEI style): any prompt the model defines, by name;
- a model-name suffix, for clients that can only set ``model``: ``m3e:query``, ``m3e:document`` (any
  ``input_type`` value after the colon);
- none of these: the server's default side (``--default-side``).

Two of them may be given together only when they choose the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from m3e.serving.errors import bad_request

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel

Side = Literal["query", "document", "none"]
SIDES: tuple[Side, ...] = get_args(Side)

# The side texts get when a request names none. Measured by bench/default_side.py on the dev retrieval task
# (queries and documents both sent with no side, docs/benchmarks.md): with the default model both getting
# the query prompt scored nDCG@10 80.78, no prompt 80.65, both the document prompt 78.53 (the asymmetric
# reference, what a client that sends sides gets: 81.24). The query prompt is also the model's own default
# for encode().
DEFAULT_SIDE: Side = "query"

# input_type value -> what it asks for: a side, or a task whose prompt the model may define.
INPUT_TYPES: dict[str, str] = {
    "query": "query",
    "search_query": "query",
    "retrieval.query": "query",
    "document": "document",
    "search_document": "document",
    "passage": "document",
    "retrieval.passage": "document",
    "classification": "classification",
    "clustering": "clustering",
}


@dataclass(frozen=True)
class SideChoice:
    """What a request said about its side; every field may be None."""

    input_type: str | None = None
    prompt_name: str | None = None
    model_suffix: str | None = None  # the part after ``:`` in ``model``


def side_prompt(model: EmbeddingModel, side: Side) -> str:
    """The prompt text of a server-wide side."""
    if side == "query":
        return model.query_prompt
    if side == "document":
        return model.document_prompt
    return ""


def input_type_prompt(model: EmbeddingModel, input_type: str) -> str | None:
    """The prompt an ``input_type`` value asks for, or None when the value is unknown."""
    meaning = INPUT_TYPES.get(input_type.strip().lower())
    if meaning is None:
        return None
    if meaning == "query":
        return model.query_prompt
    if meaning == "document":
        return model.document_prompt
    # classification, clustering: the model's prompt of that name, else what encode() applies by default.
    return model.prompts.get(meaning, model.resolve_prompt())


def choose_prompt(model: EmbeddingModel, choice: SideChoice, default_side: Side, public_name: str) -> str:
    """The prompt text for a request's texts; 400 naming the allowed values for an unknown one, or when two
    ways of choosing disagree. ``public_name``: the model's served name, for messages."""
    chosen: dict[str, str] = {}
    if choice.input_type is not None:
        chosen["input_type"] = _known_input_type(model, choice.input_type, None)
    if choice.prompt_name is not None:
        chosen["prompt_name"] = _known_prompt_name(model, choice.prompt_name)
    if choice.model_suffix is not None:
        chosen["model"] = _known_input_type(model, choice.model_suffix, public_name)
    if not chosen:
        return side_prompt(model, default_side)
    if len(set(chosen.values())) > 1:
        given = ", ".join(chosen)
        raise bad_request(
            f"{given} choose different prompts for the same texts; give one of them.",
            param=next(iter(chosen)),
            code="invalid_value",
        )
    return next(iter(chosen.values()))


def _known_input_type(model: EmbeddingModel, value: str, suffix_of: str | None) -> str:
    """The prompt of an input_type value, or of a model-name suffix when ``suffix_of`` names the model."""
    prompt = input_type_prompt(model, value)
    if prompt is not None:
        return prompt
    allowed = ", ".join(INPUT_TYPES)
    if suffix_of is not None:
        raise bad_request(
            f"Unknown side {value!r} after ':' in 'model'. Allowed: {allowed} (e.g. `{suffix_of}:query`).",
            param="model",
            code="invalid_value",
        )
    raise bad_request(
        f"Invalid value for 'input_type': {value!r}. Allowed values: {allowed}.",
        param="input_type",
        code="invalid_value",
    )


def _known_prompt_name(model: EmbeddingModel, name: str) -> str:
    if name in model.prompts:
        return model.prompts[name]
    known = ", ".join(model.prompts) or "none (this model defines no prompts)"
    raise bad_request(
        f"Invalid value for 'prompt_name': {name!r}. This model's prompts: {known}.",
        param="prompt_name",
        code="invalid_value",
    )
