"""The skills suite: held-out tasks from the broader sources, one per skill the offline suite leaves out.

The offline suite is short Chinese text from eight sources; a model tuned on it can look good there and lose
what users need elsewhere. These tasks measure the skills it does not cover, on held-out items (the test
buckets, never training text) of the broader sources:

- en short: a short English name -> its one-sentence definition (the Python documentation's entries);
- en long: a section title -> the whole section, several paragraphs of technical English;
- zh long: a LibreOffice help page's title -> its body, many paragraphs of technical Chinese;
- bitext: LibreOffice help paragraphs, Chinese -> their human English translation.

Together with the offline suite's tasks they give the per-skill table (``SKILLS``) that settings are chosen
by; ``m3e eval --suite skills``. Task files use the profile name ``skills``.
"""

from __future__ import annotations

import re
from collections import Counter

from m3e.data.corpora import Inputs
from m3e.data.task_builders import Task, TaskSpec, retrieval_task, task_meta
from m3e.data.text import hash_order, in_test

SIZES = {"DocEntryRetrieval": 300, "DocSectionRetrieval": 200, "HelpPageRetrieval": 200, "HelpBitextMining": 400}
LONG_MIN, LONG_MAX = 200, 2000  # characters of a long document

# Skill -> the tasks (offline suite and skills suite) that measure it.
SKILLS: dict[str, tuple[str, ...]] = {
    "zh short": ("InsuranceQARetrieval", "IdiomReverseDictionary", "NewsHeadlineRetrieval"),
    "zh long": ("HelpPageRetrieval",),
    "en short": ("DocEntryRetrieval",),
    "en long": ("DocSectionRetrieval",),
    "bitext": ("HSKBitextMining", "HelpBitextMining"),
    "classification": ("ZhSentimentClassification", "InsuranceDomainClassification", "FortuneSourceClassification",
                       "PoetryGenreClassification"),
    "pairs": ("InsuranceParaphrasePairClassification", "SNLIPairClassification"),
}

_FIRST_SENTENCE = re.compile(r"^(.{20,300}?[.!?])(?:\s|$)")


def first_sentence(text: str) -> str:
    m = _FIRST_SENTENCE.match(text)
    return m.group(1) if m else text[:300]


def long_text(paragraphs: tuple[str, ...] | list[str], limit: int = LONG_MAX) -> str:
    """Paragraphs joined by newlines up to ``limit`` characters (whole paragraphs only, at least one)."""
    out: list[str] = []
    size = 0
    for p in paragraphs:
        if out and size + len(p) > limit:
            break
        out.append(p)
        size += len(p) + 1
    return "\n".join(out)[:limit]


def _unique_titles(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(title, text) items whose title occurs once: "Examples" or "概述" would have many right answers."""
    count = Counter(t.lower() for t, _ in items)
    return [(t, d) for t, d in items if count[t.lower()] == 1]


def _title_retrieval(name: str, items: list[tuple[str, str]], n: int) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """n held-out (title -> text) queries; the corpus adds n held-out texts of other titles."""
    held = [it for it in hash_order(_unique_titles(items), key=lambda it: it[0], salt=name) if in_test(it[0], name)]
    gold, others = held[:n], held[n : 2 * n]
    return [(t, [d]) for t, d in gold], [d for _, d in gold + others]


def doc_entry_retrieval(inp: Inputs) -> Task:
    name = "DocEntryRetrieval"
    items = []
    for e in inp.python_docs.entries:
        short = e.name.rsplit(".", 1)[-1]
        query = short.replace("_", " ").strip()
        if len(query) >= 4 and not query.isupper():  # constants (O_RDONLY) say little in words
            items.append((query, first_sentence(e.description)))
    queries, docs = _title_retrieval(name, items, SIZES[name])
    meta = task_meta(name, "Retrieval", ["eng-Latn"], "ndcg_at_10",
                 "Python 3.11 documentation: a function, class or exception name in words -> the first sentence "
                 "of its description (short English query, one-sentence definition).", ["python_docs"])
    return retrieval_task(meta, queries, docs)


def doc_section_retrieval(inp: Inputs) -> Task:
    name = "DocSectionRetrieval"
    items = [(s.title, long_text(s.paragraphs)) for s in inp.python_docs.sections]
    items = [(t, d) for t, d in items if len(t) >= 4 and len(d) >= LONG_MIN]
    queries, docs = _title_retrieval(name, items, SIZES[name])
    meta = task_meta(name, "Retrieval", ["eng-Latn"], "ndcg_at_10",
                 f"Python 3.11 documentation: a section title -> the section ({LONG_MIN}-{LONG_MAX} characters of "
                 "technical English, code left out).", ["python_docs"])
    return retrieval_task(meta, queries, docs)


def help_page_retrieval(inp: Inputs) -> Task:
    name = "HelpPageRetrieval"
    items = []
    for page in inp.help_zh.values():
        body = [t for pid, t in page.paragraphs if pid.startswith("par_id") and t != page.title]
        text = long_text(body)
        if len(page.title) >= 2 and len(text) >= LONG_MIN // 2:  # Chinese packs about twice the words per char
            items.append((page.title, text))
    queries, docs = _title_retrieval(name, items, SIZES[name])
    meta = task_meta(name, "Retrieval", ["cmn-Hans"], "ndcg_at_10",
                 "LibreOffice help (Chinese): a page title -> the page's paragraphs (long technical Chinese, "
                 "names of menus, commands and options).", ["office_help_zh"])
    return retrieval_task(meta, queries, docs)


def help_bitext(inp: Inputs) -> Task:
    name = "HelpBitextMining"
    seen: set[str] = set()
    rows = []
    for zh, en in hash_order(inp.help_translations, key=lambda p: p[0], salt=name):
        if in_test(zh, name) and len(zh) >= 10 and zh not in seen and en not in seen:
            seen.update((zh, en))
            rows.append((zh, en))
    meta = task_meta(name, "BitextMining", ["cmn-Hans", "eng-Latn"], "f1",
                 "LibreOffice help paragraphs: Chinese -> the English paragraph with the same id (human "
                 "translation).", ["office_help_zh", "office_help_en"])
    meta["pairs"] = [{"sentence1": zh, "sentence2": en} for zh, en in rows[: SIZES[name]]]
    return meta


SKILL_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("DocEntryRetrieval", ("python_docs",), doc_entry_retrieval),
        TaskSpec("DocSectionRetrieval", ("python_docs",), doc_section_retrieval),
        TaskSpec("HelpPageRetrieval", ("office_help_zh",), help_page_retrieval),
        TaskSpec("HelpBitextMining", ("office_help_zh", "office_help_en"), help_bitext),
    ]
}
