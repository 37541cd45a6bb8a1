"""The sparse side's words and BM25 on a Chinese mini-corpus checked by hand."""

from __future__ import annotations

import math

import pytest

from m3e.errors import M3EError
from m3e.lexical import BM25, lexical_terms

# Four documents and their search-mode words (stop word 的 dropped).
MINI = {
    "d0": ("汽车保险的理赔", ["汽车", "保险", "汽车保险", "理赔"]),
    "d1": ("人寿保险", ["人寿", "保险", "人寿保险"]),
    "d2": ("汽车维修", ["汽车", "维修"]),
    "d3": ("保险公司理赔很快", ["保险", "公司", "保险公司", "理赔", "很快"]),
}
# Query 保险理赔 -> 保险 (in 3 of 4 documents), 理赔 (in 2). N = 4, average length 14 / 4 = 3.5, k1 1.2, b 0.75:
#   idf(保险) = ln(1 + 1.5 / 3.5) = 0.356675, idf(理赔) = ln(1 + 2.5 / 2.5) = 0.693147
#   d0 (4 words): (0.356675 + 0.693147) * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 4 / 3.5)) = 0.991857
#   d3 (5 words): 1.049822 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 5 / 3.5)) = 0.893218
#   d1 (3 words): 0.356675 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 3 / 3.5)) = 0.378813
#   d2: no shared word, 0
BY_HAND = {"d0": 0.991857, "d3": 0.893218, "d1": 0.378813, "d2": 0.0}


@pytest.mark.parametrize("segmenter", ["rjieba", "jieba"])
def test_words_of_chinese_and_english(segmenter: str) -> None:
    for text, words in MINI.values():
        assert lexical_terms(text, segmenter) == words
    assert lexical_terms("保险理赔", segmenter) == ["保险", "理赔"]
    assert lexical_terms("Car insurance claims, 2024!", segmenter) == ["car", "insurance", "claims", "2024"]
    assert lexical_terms("the car and the 保险", segmenter) == ["car", "保险"]
    assert lexical_terms("the car", segmenter, stop_words=False) == ["the", "car"]


def test_bm25_ranks_as_computed_by_hand() -> None:
    ids = list(MINI)
    bm25 = BM25().fit([lexical_terms(text) for text, _ in MINI.values()])
    scores = bm25.scores(lexical_terms("保险理赔"))
    assert {d: round(float(s), 6) for d, s in zip(ids, scores, strict=True)} == pytest.approx(BY_HAND, abs=2e-6)
    ranked = [ids[i] for i in sorted(range(len(ids)), key=lambda i: -scores[i])]
    assert ranked == ["d0", "d3", "d1", "d2"]
    assert math.isclose(float(bm25.scores(["保险", "保险", "理赔"])[0]), BY_HAND["d0"], abs_tol=2e-6)
    assert not bm25.scores(["没有的词"]).any()


def test_unknown_segmenter() -> None:
    with pytest.raises(M3EError, match="unknown segmenter"):
        lexical_terms("x", "pkuseg")
