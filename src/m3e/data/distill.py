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
from m3e.data.skill_tasks import LONG_MAX, long_text
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
    max_chars: int = MAX_CHARS  # long-passage pools keep up to LONG_MAX characters


def finish_pool(
    texts: Iterable[str], exclusion: Exclusion, cap: int, salt: str, max_chars: int = MAX_CHARS
) -> tuple[list[str], int]:
    """(texts, excluded count): cut, drop evaluation texts and duplicates, sha1 order, first ``cap``."""
    seen: set[str] = set()
    kept: list[str] = []
    excluded = 0
    for text in texts:
        text = corpora.cut(text.strip(), max_chars) if text else ""
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


# The broader sources: long passages (up to LONG_MAX characters, several paragraphs joined) teach the student
# what the teacher does with long inputs, which short pools never show it.


def laws(inp: Inputs) -> Iterable[str]:
    return (a.text for a in inp.laws)


def laws_long(inp: Inputs) -> Iterable[str]:
    """Consecutive articles of one chapter, joined up to LONG_MAX characters."""
    chapter: list[str] = []
    key: tuple[str, str] | None = None
    for article in inp.laws:
        if (article.law, article.chapter) != key and chapter:
            yield from _joined(chapter)
            chapter = []
        key = (article.law, article.chapter)
        chapter.append(article.text)
    yield from _joined(chapter)


def _joined(paragraphs: list[str]) -> Iterable[str]:
    while paragraphs:
        text = long_text(paragraphs)
        yield text
        paragraphs = paragraphs[max(1, text.count("\n") + 1):]


def help_zh(inp: Inputs) -> Iterable[str]:
    return (zh for zh, _ in inp.help_translations)


def help_en(inp: Inputs) -> Iterable[str]:
    return (en for _, en in inp.help_translations)


def help_pages_long(inp: Inputs) -> Iterable[str]:
    for pages in (inp.help_zh, inp.help_en):
        for page in pages.values():
            yield long_text([t for _, t in page.paragraphs])


def ui_texts(pairs: Callable[[Inputs], list[tuple[str, str]]]) -> Callable[[Inputs], Iterable[str]]:
    return lambda inp: itertools.chain.from_iterable(pairs(inp))


def docs_paragraphs(inp: Inputs) -> Iterable[str]:
    return itertools.chain.from_iterable(s.paragraphs for s in inp.python_docs.sections)


def docs_sections_long(inp: Inputs) -> Iterable[str]:
    return (long_text(s.paragraphs) for s in inp.python_docs.sections)


def fortunes_en(inp: Inputs) -> Iterable[str]:
    return iter(inp.fortunes_en)


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
        PoolSpec("laws", "laws", "document", "PRC law articles", laws, 4_000, max_chars=600),
        PoolSpec("laws_long", "laws", "document", "consecutive law articles of one chapter, joined", laws_long,
                 1_000, max_chars=LONG_MAX),
        PoolSpec("help_zh", "office_help_zh", "query", "LibreOffice help paragraphs (Chinese)", help_zh, 3_000),
        PoolSpec("help_en", "office_help_en", "query", "LibreOffice help paragraphs (English)", help_en, 2_000),
        PoolSpec("help_pages_long", "office_help_zh", "document", "LibreOffice help pages, Chinese and English",
                 help_pages_long, 1_200, max_chars=LONG_MAX),
        PoolSpec("ui_blender", "blender_ui", "query", "Blender interface messages, English and Chinese",
                 ui_texts(lambda inp: inp.blender_ui), 3_000),
        PoolSpec("ui_calibre", "calibre_ui", "query", "calibre interface and help messages, English and Chinese",
                 ui_texts(lambda inp: inp.calibre_ui), 2_000),
        PoolSpec("ui_jupyter", "jupyter_ui", "query", "JupyterLab interface messages, English and Chinese",
                 ui_texts(lambda inp: inp.jupyter_ui), 1_500),
        PoolSpec("docs_paragraphs", "python_docs", "document", "Python documentation paragraphs", docs_paragraphs,
                 4_000, max_chars=600),
        PoolSpec("docs_sections_long", "python_docs", "document", "Python documentation sections, paragraphs joined",
                 docs_sections_long, 1_200, max_chars=LONG_MAX),
        PoolSpec("fortunes_en", "fortunes_en", "query", "English quotes and jokes (fortune)", fortunes_en, 3_000),
    ]
}
