"""A reranker as the server serves it: its public name, pairs made into windows of token ids, scores.

A request's (query, document) pairs become windows as :meth:`m3e.reranker.Reranker.predict` makes them (a
document longer than the model's length is read in up to ``max_windows`` windows); the windows go through the
dynamic batcher beside embedding texts, and :meth:`ServedReranker.pair_scores` folds the raw scores of each
pair's windows into its score (the activation, then the best window), so the server's scores are
``predict``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from m3e.reranker import Reranker

logger = logging.getLogger(__name__)

# The most windows a request may ask to read per document (Cohere's max_chunks_per_doc).
MAX_WINDOWS_PER_DOCUMENT = 64


@dataclass
class PairWindows:
    """One request's pairs as the batcher takes them: a row per (query, document window)."""

    ids: list[list[int]]
    segments: list[list[int]]
    owner: list[int]  # the pair each window belongs to
    pairs: int

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)


class ServedReranker:
    """A one-label cross-encoder under a public name; also the batcher's :class:`PairScorer` for it."""

    def __init__(self, name: str, reranker: Reranker):
        self.name = name
        self.reranker = reranker
        self.dim = reranker.num_labels
        self.max_length = int(reranker.max_length)
        self.max_windows = int(reranker.max_windows)

    # ------------------------------------------------------------------ event loop / request threads
    def windows(self, query: str, documents: Sequence[str], max_windows: int | None = None) -> PairWindows:
        """The windows of ``query`` with each document; ``max_windows`` (default the model's) per document."""
        pairs = [(query, d) for d in documents]
        ids, segments, owner = self.reranker.pair_windows(pairs, max_windows=max_windows)
        return PairWindows(ids, segments, owner, len(pairs))

    def cut_documents(self, documents: Sequence[str], max_tokens: int) -> list[str]:
        """Each document cut after its first ``max_tokens`` tokens (Cohere's ``max_tokens_per_doc``), at the
        end of that token's characters, so the text stays the client's own."""
        tokenizer = self.reranker.tokenizer
        enc = tokenizer(
            list(documents),
            add_special_tokens=False,
            return_offsets_mapping=True,
            truncation=False,
            verbose=False,
        )
        out: list[str] = []
        for doc, offsets in zip(documents, enc["offset_mapping"], strict=True):
            out.append(doc if len(offsets) <= max_tokens else doc[: offsets[max_tokens - 1][1]])
        return out

    def pair_scores(self, windows: PairWindows, raw: np.ndarray, activation: str | None = None) -> np.ndarray:
        """Each pair's score from its windows' raw scores, as ``predict`` computes it: the activation
        (the model's, or ``identity`` for raw logits), then the best window."""
        activated = self.reranker.activate(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)), activation)
        per_window = activated.numpy()
        scores = np.full((windows.pairs, self.dim), -np.inf, dtype=np.float32)
        np.maximum.at(scores, np.asarray(windows.owner, dtype=np.int64), per_window)
        return scores[:, 0]

    # ------------------------------------------------------------------ the inference thread
    def score_token_ids(
        self, batch: Sequence[Sequence[int]], segments: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """Raw scores [n, labels] of padded pairs: one forward of the reranker."""
        with torch.inference_mode():
            logits = self.reranker.logits(self.reranker.pad_pairs(batch, segments))
        return logits.float().cpu().numpy()

    def warm_up(self) -> tuple[int, float]:
        """A few forwards (short, medium, full length) so the first request is not slow; the (tokens,
        seconds) of the last, full-length one: a first measure of the throughput."""
        measured = (0, 0.0)
        for words, count in ((2, 8), (24, 4), (self.max_length, 2)):
            windows = self.windows("warm-up 预热", ["文档 document " * words] * count, max_windows=1)
            start = time.perf_counter()
            self.score_token_ids(windows.ids, windows.segments)
            measured = (windows.tokens, time.perf_counter() - start)
        logger.info("warmed up reranker %s", self.name)
        return measured
