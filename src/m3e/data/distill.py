"""Distillation pools: plain texts from every source, each pool embedded on one side (query or document).

A student learns a teacher's space only where it sees text, so the pools cover every kind of text the sources
hold, including kinds that no pair file has (reviews, sayings, poems, premises). Each pool names the side the
teacher embeds it with, so the student learns both of E5-style models' prefixes. Like the training files, a
pool drops every evaluation text (normalised), is de-duplicated, follows sha1 order and stops at its cap.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from m3e.data import corpora
from m3e.data.corpora import Inputs
from m3e.data.task_builders import news_test_start
from m3e.data.text import Exclusion, hash_order, normalise, to_simplified

MAX_CHARS = 200  # long passages are cut at a sentence end near here: cheaper for the teacher, still passage-like


@dataclass(frozen=True)
class PoolSpec:
    name: str
    source: str  # source name
    side: str  # "query" | "document": the prompt the teacher and the student use for these texts
    description: str
    build: Callable[[Inputs], Iterable[str]]
    cap: int


def finish_pool(texts: Iterable[str], exclusion: Exclusion, cap: int, salt: str) -> tuple[list[str], int]:
    """(texts, excluded count): cut, drop evaluation texts and duplicates, sha1 order, first ``cap``."""
    seen: set[str] = set()
    kept: list[str] = []
    excluded = 0
    for text in texts:
        text = corpora.cut(text.strip(), MAX_CHARS) if text else ""
        if len(text) < 2:
            continue
        key = normalise(text)
        if key in exclusion.keys:
            excluded += 1
            continue
        if key not in seen:
            seen.add(key)
            kept.append(text)
    return hash_order(kept, lambda t: t, salt)[:cap], excluded


def reviews(inp: Inputs) -> Iterable[str]:
    return (t for t, _ in inp.reviews)


def news_paragraphs(inp: Inputs) -> Iterable[str]:
    pd = inp.people_daily
    start = news_test_start(pd)  # the news task uses the last quarter of the month
    heads = {line for line, _, _, _ in pd.headlines}
    return (corpora.strip_credit(pd.paragraphs[i]) for i in range(start) if i not in heads)


def news_headlines(inp: Inputs) -> Iterable[str]:
    pd = inp.people_daily
    start = news_test_start(pd)
    return (h for line, h, _, _ in pd.headlines if line < start)


def hsk_sentences(inp: Inputs) -> Iterable[str]:
    return itertools.chain.from_iterable((zh, en) for _, zh, en in inp.hsk)


def insurance_questions(inp: Inputs) -> Iterable[str]:
    return itertools.chain.from_iterable((q.zh, q.en) for q in inp.insuranceqa.questions)


def insurance_answers(inp: Inputs) -> Iterable[str]:
    return itertools.chain.from_iterable(inp.insuranceqa.answers.values())


def idiom_explanations(inp: Inputs) -> Iterable[str]:
    return itertools.chain.from_iterable((i.explanation, i.example) for i in inp.idioms)


def idiom_words(inp: Inputs) -> Iterable[str]:
    return (i.word for i in inp.idioms)


def cedict(inp: Inputs) -> Iterable[str]:
    return itertools.chain.from_iterable(inp.cedict)


def poems(inp: Inputs) -> Iterable[str]:
    # Every other poem stays in its original script (Tang/Song shi are traditional): the student must read both.
    for i, poem in enumerate(inp.poems()):
        if i % 7 == 0:  # the full collection is 350k poems; a fixed stride keeps reading it short
            yield poem.text if i % 2 else to_simplified(poem.text)


def fortunes(inp: Inputs) -> Iterable[str]:
    return (t for t, _ in inp.fortunes)


def snli_sentences(inp: Inputs) -> Iterable[str]:
    return itertools.chain.from_iterable((p, h) for _, p, h, _ in inp.snli("train_subset"))


POOLS: dict[str, PoolSpec] = {
    p.name: p
    for p in [
        PoolSpec("reviews", "reviews_and_news", "query", "hotel, laptop and book reviews", reviews, 8_000),
        PoolSpec("news_paragraphs", "reviews_and_news", "document", "People's Daily paragraphs (first 75% of the month)",
                 news_paragraphs, 5_000),
        PoolSpec("news_headlines", "reviews_and_news", "query", "People's Daily headlines (first 75% of the month)",
                 news_headlines, 1_500),
        PoolSpec("hsk_sentences", "hsk", "query", "HSK sentences, Chinese and English", hsk_sentences, 4_000),
        PoolSpec("insurance_questions", "insuranceqa", "query", "InsuranceQA questions, Chinese and English",
                 insurance_questions, 6_000),
        PoolSpec("insurance_answers", "insuranceqa", "document", "InsuranceQA answers, Chinese and English",
                 insurance_answers, 5_000),
        PoolSpec("idiom_explanations", "idioms", "query", "idiom explanations and example sentences",
                 idiom_explanations, 6_000),
        PoolSpec("idiom_words", "idioms", "document", "idioms", idiom_words, 4_000),
        PoolSpec("cedict", "cedict", "query", "CC-CEDICT headwords and English glosses", cedict, 3_000),
        PoolSpec("poems", "poetry", "query", "Tang/Song shi, Song ci and Yuan qu (simplified and traditional)", poems,
                 6_000),
        PoolSpec("fortunes", "fortunes", "query", "Chinese sayings (fortunes-zh), attribution removed", fortunes, 4_000),
        PoolSpec("snli_sentences", "snli", "query", "SNLI premises and hypotheses (English)", snli_sentences, 4_000),
    ]
}
