"""A model's prompts: which one a call uses, and which ones mean the query and the document side.

The torch model and the compiled model read the same prompts (sentence-transformers' ``prompts`` and
``default_prompt_name``) and must choose among them alike, so the rules live here once.
"""

from __future__ import annotations

from collections.abc import Mapping

from m3e.errors import M3EError


def resolve_prompt(
    prompts: Mapping[str, str], default_name: str | None, prompt: str | None, prompt_name: str | None, model: str
) -> str:
    """A literal ``prompt`` if given, else the prompt named ``prompt_name`` (or the default one), else none."""
    if prompt is not None:
        return prompt
    name = prompt_name if prompt_name is not None else default_name
    if name is None:
        return ""
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise M3EError(f"model {model!r} has no prompt named {name!r} (prompts: {known})")
    return prompts[name]


def query_prompt(prompts: Mapping[str, str]) -> str:
    return prompts.get("query", "")


def document_prompt(prompts: Mapping[str, str]) -> str:
    return prompts.get("document", prompts.get("passage", ""))
