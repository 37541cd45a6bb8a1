"""Model cards: the README.md that every model directory m3e writes carries.

One builder for every card (a saved model, a fine-tuned run, an imported checkpoint, the bundled default):
optional YAML front matter for the Hugging Face Hub, a title, a description, sections of markdown lines, and
the pieces they share: how to use the model from m3e and from sentence-transformers, and markdown tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelCard:
    title: str
    description: str = ""
    front_matter: dict[str, Any] | None = None
    sections: list[tuple[str, list[str]]] = field(default_factory=list)

    def section(self, title: str, lines: Iterable[str]) -> ModelCard:
        self.sections.append((title, list(lines)))
        return self

    def render(self) -> str:
        out: list[str] = []
        if self.front_matter:
            out += ["---", *(f"{k}: {_yaml_value(v)}" for k, v in self.front_matter.items()), "---", ""]
        out.append(f"# {self.title}")
        if self.description:
            out += ["", self.description.strip()]
        for title, lines in self.sections:
            out += ["", f"## {title}", "", *lines]
        return "\n".join(out).rstrip("\n") + "\n"


def _yaml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def python_block(*lines: str) -> list[str]:
    return ["```python", *lines, "```"]


def m3e_usage(path: str | None = "PATH", *, queries: bool = False) -> list[str]:
    """How to load and use the model from m3e (``path`` None: the default model), with the query/document
    sides when the model has prompts."""
    load = "m3e.load()" if path is None else f"m3e.load({path!r})"
    if queries:
        return python_block(
            "import m3e",
            f"model = {load}",
            'queries = model.encode_queries(["车险理赔需要什么材料？"])',
            'docs = model.encode_documents(["理赔需要保单、驾驶证和事故证明。"])',
            "print(model.similarity(queries, docs))",
        )
    return python_block("import m3e", f"model = {load}", "vectors = model.encode(['你好', 'hello'])")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric_from: int = 1) -> list[str]:
    """A markdown table; columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def model_summary(
    arch: str, dim: int, max_length: int, pooling: str, prompts: dict[str, str]
) -> list[str]:
    return [
        f"- architecture: {arch}",
        f"- dimension: {dim}",
        f"- max length: {max_length} tokens",
        f"- pooling: {pooling}",
        f"- prompts: {json.dumps(prompts, ensure_ascii=False)}",
    ]
