"""The words of a text for lexical (sparse) retrieval, and Okapi BM25 over them.

One tokenization serves every sparse side m3e has (the index's full-text column, its Qdrant sparse vectors,
the evaluation's sparse and hybrid models), so their scores agree:

- Chinese is segmented in jieba's search mode (``cut_for_search``: a long word also yields its shorter
  words, so 保险公司 matches a query for 保险), by rjieba (jieba's dictionary and algorithm in Rust: the same
  words for 3,098 of 3,141 benchmark texts, the others differ around hyphenated Latin words, at 14x the
  speed; docs/design.md) or by jieba itself; runs of Latin letters and digits come out as words.
- Words are lower-cased; whitespace and punctuation are dropped, and so are the stop words below (function
  words that occur in nearly every text: they add nothing to a ranking, and a query containing one would read
  the longest posting lists of the index).

BM25 is Lucene's (the form LanceDB's full-text index computes): ``idf = ln(1 + (N - n + 0.5) / (n + 0.5))``,
``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``, with k1 = 1.2 and b = 0.75.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from m3e.errors import M3EError
from m3e.extras import require

K1 = 1.2
B = 0.75
SEGMENTERS = ("jieba", "rjieba")
DEFAULT_SEGMENTER = "rjieba"

# Chinese function words and particles, and English ones: the words that carry no topic.
_ZH_STOP = (
    "的 了 是 在 和 与 及 或 也 都 而 并 就 又 还 被 把 让 给 对 向 从 以 于 为 之 其 这 那 此 该 各 每 "
    "个 些 着 过 吗 呢 吧 啊 呀 么 啦 嘛 哦 地 得 所 等 我 你 他 她 它 我们 你们 他们 她们 它们 自己 "
    "一个 一些 什么 怎么 怎样 如何 哪 哪些 哪个 谁 多少 有 没有 不 没 很 更 最 已 已经 将 会 能 可以 要 "
    "如果 因为 所以 但是 但 然而 虽然 而且 或者 以及 还是 就是 只是 只 即 则 若 即使 因此 于是"
)
_EN_STOP = (
    "a an the and or but if then else of to in on at by for with from as into onto about over under "
    "is are was were be been being am do does did has have had having it its this that these those "
    "i you he she we they me him her us them my your his our their what which who whom whose when where "
    "why how not no nor so than too very can could will would shall should may might must s t"
)
STOP_WORDS: frozenset[str] = frozenset((_ZH_STOP + " " + _EN_STOP).split())
_SKIP = re.compile(r"^[\W_]+$", re.UNICODE)  # whitespace and punctuation tokens


def _jieba_cut() -> Callable[[str], Iterable[str]]:
    jieba = require("jieba", purpose="lexical search (BM25)", extra="index")
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    cut: Callable[[str], Iterable[str]] = jieba.cut_for_search
    return cut


def _rjieba_cut() -> Callable[[str], Iterable[str]]:
    rjieba = require("rjieba", purpose="lexical search with rjieba", extra="index")
    cut: Callable[[str], Iterable[str]] = rjieba.cut_for_search
    return cut


_CUTTERS: dict[str, Callable[[str], Iterable[str]]] = {}


def segmenter(name: str = DEFAULT_SEGMENTER) -> Callable[[str], Iterable[str]]:
    """The word cutter called ``name`` (loaded once per process)."""
    if name not in SEGMENTERS:
        raise M3EError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    if name not in _CUTTERS:
        _CUTTERS[name] = _jieba_cut() if name == "jieba" else _rjieba_cut()
    return _CUTTERS[name]


def lexical_terms(text: str, segmenter_name: str = DEFAULT_SEGMENTER, *, stop_words: bool = True) -> list[str]:
    """The words of ``text`` in order, repeats kept (their count is the term frequency)."""
    cut = segmenter(segmenter_name)
    words = (w.strip().lower() for w in cut(text))
    return [w for w in words if w and not _SKIP.match(w) and not (stop_words and w in STOP_WORDS)]


@dataclass(frozen=True)
class BM25Params:
    k1: float = K1
    b: float = B
    segmenter: str = DEFAULT_SEGMENTER
    stop_words: bool = True

    def describe(self) -> str:
        stops = "stop words dropped" if self.stop_words else "no stop words"
        return f"BM25 (k1={self.k1}, b={self.b}; {self.segmenter} search-mode words, {stops})"


def idf(n_docs: int, doc_freq: int) -> float:
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


@dataclass
class BM25:
    """An in-memory BM25 index over documents given as term lists (the evaluation's sparse side)."""

    params: BM25Params = field(default_factory=BM25Params)
    _postings: dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]] = field(default_factory=dict)
    _lengths: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def fit(self, docs: Sequence[Sequence[str]]) -> BM25:
        lists: dict[str, tuple[list[int], list[float]]] = {}
        for i, terms in enumerate(docs):
            for term, tf in Counter(terms).items():
                ids, tfs = lists.setdefault(term, ([], []))
                ids.append(i)
                tfs.append(float(tf))
        self._postings = {t: (np.asarray(ids, dtype=np.int64), np.asarray(tfs)) for t, (ids, tfs) in lists.items()}
        self._lengths = np.asarray([len(d) for d in docs], dtype=np.float64)
        return self

    @property
    def n_docs(self) -> int:
        return len(self._lengths)

    def scores(self, query: Sequence[str]) -> NDArray[np.float64]:
        """BM25 of every document for the query's terms (a repeated query term counts once, as in Lucene's
        boolean OR query)."""
        out = np.zeros(self.n_docs)
        if not self.n_docs:
            return out
        k1, b = self.params.k1, self.params.b
        avgdl = max(float(self._lengths.mean()), 1e-9)
        for term in dict.fromkeys(query):
            if term not in self._postings:
                continue
            ids, tf = self._postings[term]
            norm = k1 * (1.0 - b + b * self._lengths[ids] / avgdl)
            out[ids] += idf(self.n_docs, len(ids)) * tf * (k1 + 1.0) / (tf + norm)
        return out
