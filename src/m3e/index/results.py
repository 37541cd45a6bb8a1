"""Search results per document: a document's best chunk, its score, its other matching chunks and its fields.

An index stores chunks, but a reader looks for documents: ``Index.search(..., group=True)`` (the default of
`m3e search`; ``--chunks`` shows the chunks themselves) folds the ranked chunks into ranked documents. A
document ranks where its best chunk ranks; the chunks after its best one come with it, in rank order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from m3e.index.store import Hit


@dataclass
class DocumentHit:
    doc_id: str
    best: Hit  # the document's best-ranked chunk
    chunks: list[Hit] = field(default_factory=list)  # its other matching chunks, best first

    @property
    def score(self) -> float:
        """The score that ranked the document: its best chunk's rerank score when reranked, else its score."""
        return self.best.rerank_score if self.best.rerank_score is not None else self.best.score

    @property
    def metadata(self) -> dict[str, Any]:
        return self.best.metadata

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the best chunk's fields (id, score, chunk, start, end, text, metadata, the sides' scores)
        and ``chunks``, the other matching chunks without the document's fields."""
        out = self.best.to_dict()
        out["chunks"] = [{k: v for k, v in c.to_dict().items() if k not in ("id", "metadata")} for c in self.chunks]
        return out


def group_hits(hits: Sequence[Hit], k: int) -> list[DocumentHit]:
    """The first ``k`` documents of ranked chunks, in the order of their best chunks."""
    groups: dict[str, DocumentHit] = {}
    for hit in hits:
        group = groups.get(hit.doc_id)
        if group is None:
            if len(groups) == k:
                continue  # a later chunk of a document already shown still joins it; new documents do not
            groups[hit.doc_id] = DocumentHit(hit.doc_id, hit)
        else:
            group.chunks.append(hit)
    return list(groups.values())
