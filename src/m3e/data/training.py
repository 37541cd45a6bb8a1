"""Training pairs and triplets from the same sources, with every evaluation text removed.

Each output file is one dataset (the M3E recipe draws each batch from one file). Builders
yield candidate records in sha1 order; ``finish`` drops records that touch the exclusion set
(any field, normalised), de-duplicates, picks the first hard negative that is not excluded,
and stops at the file's cap, so dictionary-style sources cannot dominate the mix.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from m3e.data import broad, corpora
from m3e.data.corpora import Inputs
from m3e.data.skill_tasks import LONG_MAX, LONG_MIN, first_sentence, long_text
from m3e.data.task_builders import news_test_start
from m3e.data.text import Exclusion, digest, normalise, to_simplified

Record = dict[str, Any]  # text, text_pos, optional "negs": candidate hard negatives


@dataclass(frozen=True)
class TrainSpec:
    name: str
    source: str  # source name
    description: str
    build: Callable[[Inputs], Iterable[Record]]
    cap: int
    triplets: bool = False


@dataclass
class TrainStats:
    candidates: int = 0
    excluded: int = 0
    duplicates: int = 0
    no_negative: int = 0
    records: int = 0
    capped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def finish(records: Iterable[Record], exclusion: Exclusion, cap: int, triplets: bool) -> tuple[list[Record], TrainStats]:
    """The records a training file keeps, in the given order: none that touches the exclusion set, no
    duplicate, each triplet with its first usable hard negative, at most ``cap``."""
    stats = TrainStats()
    out: list[Record] = []
    seen: set[tuple[str, str]] = set()
    for rec in records:
        if len(out) >= cap:
            stats.capped = True
            break
        stats.candidates += 1
        text, pos = rec["text"], rec["text_pos"]
        if not text or not pos:
            continue
        kt, kp = normalise(text), normalise(pos)
        if kt in exclusion.keys or kp in exclusion.keys:
            stats.excluded += 1
            continue
        if (kt, kp) in seen or kt == kp:
            stats.duplicates += 1
            continue
        item = {"text": text, "text_pos": pos}
        if triplets:
            neg = _hard_negative(rec.get("negs", ()), exclusion, (kt, kp))
            if neg is None:
                stats.no_negative += 1
                continue
            item["text_neg"] = neg
        seen.add((kt, kp))
        out.append(item)
    stats.records = len(out)
    return out, stats


def _hard_negative(candidates: Iterable[str], exclusion: Exclusion, pair_keys: tuple[str, str]) -> str | None:
    """The first candidate that is no evaluation text and not the pair's own text."""
    return next((n for n in candidates if n and normalise(n) not in exclusion.keys
                 and normalise(n) not in pair_keys), None)


def _ordered(records: Iterable[Record], salt: str) -> list[Record]:
    # sha1 order: a cap keeps an unbiased, reproducible sample of the source.
    return sorted(records, key=lambda r: digest(r["text"] + "\x00" + r["text_pos"], salt))


# --------------------------------------------------------------------------- builders


def insuranceqa_qa(inp: Inputs) -> list[Record]:
    data = inp.insuranceqa
    recs = []
    for q in data.questions:
        negs = [data.answers[a][0] for a in q.negatives]
        for a in q.answers:
            recs.append({"text": q.zh, "text_pos": data.answers[a][0], "negs": negs})
    return _ordered(recs, "insuranceqa_qa")


def insuranceqa_zh_en(inp: Inputs) -> list[Record]:
    data = inp.insuranceqa
    recs = [{"text": q.zh, "text_pos": q.en} for q in data.questions]
    recs += [{"text": zh, "text_pos": en} for zh, en in data.answers.values()]
    return _ordered(recs, "insuranceqa_zh_en")


def idiom_explanation(inp: Inputs) -> list[Record]:
    recs = [{"text": i.explanation, "text_pos": i.word} for i in inp.idioms if len(i.explanation) >= 4]
    return _ordered(recs, "idiom_explanation")


def idiom_example(inp: Inputs) -> list[Record]:
    recs = [
        {"text": i.example, "text_pos": i.explanation}
        for i in inp.idioms
        if len(i.example) >= 8 and i.word in i.example and len(i.explanation) >= 4
    ]
    return _ordered(recs, "idiom_example")


def poetry_title(inp: Inputs) -> Iterator[Record]:
    # One poem per title (titles like 无题 repeat thousands of times and would be false
    # in-batch negatives); converted to simplified lazily since the cap stops early.
    chosen: dict[str, tuple[str, corpora.Poem]] = {}
    for poem in inp.poems():
        if len(poem.title) < 2 or not 10 <= len(poem.text) <= 300:
            continue
        d = digest(poem.key, "poetry_title")
        if poem.title not in chosen or d < chosen[poem.title][0]:
            chosen[poem.title] = (d, poem)
    for _, poem in sorted(chosen.values(), key=lambda dp: dp[0]):
        yield {"text": to_simplified(poem.title), "text_pos": to_simplified(poem.text)}


def news_headline(inp: Inputs) -> list[Record]:
    pd = inp.people_daily
    start = news_test_start(pd)
    recs = [{"text": h, "text_pos": lead} for line, h, _, lead in pd.headlines if line < start]
    return _ordered(recs, "news_headline")


def news_adjacent(inp: Inputs) -> list[Record]:
    """Consecutive body paragraphs of the first 75% of the month."""
    pd = inp.people_daily
    start = news_test_start(pd)
    lead_lines = {lead for _, _, lead, _ in pd.headlines}
    heads = {line for line, _, _, _ in pd.headlines}

    def body(i: int) -> str | None:
        t = corpora.strip_credit(pd.paragraphs[i])
        if i in heads or len(t) < 20 or t[-1] not in corpora.SENTENCE_END:
            return None
        return corpora.clean_lead(t) if i in lead_lines else corpora.cut(t)

    texts = [body(i) for i in range(start)]
    recs = [{"text": a, "text_pos": b} for a, b in itertools.pairwise(texts) if a and b]
    return _ordered(recs, "news_adjacent")


def cedict_gloss(inp: Inputs) -> list[Record]:
    return _ordered([{"text": w, "text_pos": g} for w, g in inp.cedict], "cedict_gloss")


def hsk_zh_en(inp: Inputs) -> list[Record]:
    return _ordered([{"text": zh, "text_pos": en} for _, zh, en in inp.hsk], "hsk_zh_en")


def snli_triplets(inp: Inputs) -> list[Record]:
    """Premise -> entailed hypothesis, with a contradiction of the same premise as hard negative."""
    by_premise: dict[str, dict[str, list[str]]] = {}
    for _, premise, hyp, label in inp.snli("train_subset"):
        by_premise.setdefault(premise, {}).setdefault(label, []).append(hyp)
    recs = []
    for premise, labels in by_premise.items():
        for hyp in labels.get("entailment", []):
            if labels.get("contradiction"):
                recs.append({"text": premise, "text_pos": hyp, "negs": labels["contradiction"]})
    return _ordered(recs, "snli_triplets")


# The broader sources: human translations of help text and interfaces, name -> definition, title -> section.


def help_zh_en(inp: Inputs) -> list[Record]:
    return _ordered([{"text": zh, "text_pos": en} for zh, en in inp.help_translations], "help_zh_en")


def ui_en_zh(name: str, pairs: Callable[[Inputs], list[tuple[str, str]]]) -> Callable[[Inputs], list[Record]]:
    # Chinese first, as in the other translation files: the query side is the Chinese text.
    return lambda inp: _ordered([{"text": zh, "text_pos": en} for en, zh in pairs(inp) if len(en) >= 8], name)


def docs_entries(inp: Inputs) -> list[Record]:
    recs = [{"text": e.name.rsplit(".", 1)[-1].replace("_", " "), "text_pos": first_sentence(e.description)}
            for e in inp.python_docs.entries]
    return _ordered(recs, "docs_entries")


def docs_sections(inp: Inputs) -> list[Record]:
    recs = [{"text": s.title, "text_pos": long_text(s.paragraphs)} for s in inp.python_docs.sections]
    return _ordered([r for r in recs if len(r["text_pos"]) >= 100], "docs_sections")


def help_pages(inp: Inputs) -> list[Record]:
    recs = [{"text": p.title, "text_pos": long_text([t for pid, t in p.paragraphs if pid.startswith("par_id")])}
            for p in inp.help_zh.values()]
    return _ordered([r for r in recs if len(r["text_pos"]) >= 50], "help_pages")


# Long passages the training may use (the skills suite's sources P and L stay out): a short query over several
# paragraphs, in both languages, so that the length the fine-tune sees is not only short text.


def laws_chapters(inp: Inputs) -> list[Record]:
    """A law's name and chapter -> the chapter's first articles, joined up to a long document's size."""
    chapters: dict[tuple[str, str], list[str]] = {}
    for article in inp.laws:
        chapters.setdefault((article.law, article.chapter), []).append(article.text)
    recs = [{"text": f"{law} {chapter}".strip(), "text_pos": long_text(articles)}
            for (law, chapter), articles in chapters.items()]
    return _ordered([r for r in recs if len(r["text_pos"]) >= LONG_MIN], "laws_chapters")


def tutorial_sections(inp: Inputs) -> list[Record]:
    """Inkscape's tutorials, English and Chinese: a section's heading -> the section."""
    recs = [{"text": s.heading, "text_pos": long_text(s.paragraphs)} for s in inp.tutorials_en + inp.tutorials_zh]
    return _ordered([r for r in recs if len(r["text_pos"]) >= 50], "tutorial_sections")


def tutorial_zh_en(inp: Inputs) -> list[Record]:
    """A tutorial section in Chinese -> the same section in English (a tutorial pairs section for section only
    where both languages have as many)."""
    def by_tutorial(sections: list[broad.TutorialSection]) -> dict[str, list[broad.TutorialSection]]:
        out: dict[str, list[broad.TutorialSection]] = {}
        for section in sections:
            out.setdefault(section.tutorial, []).append(section)
        return out

    en, zh = by_tutorial(inp.tutorials_en), by_tutorial(inp.tutorials_zh)
    recs = [{"text": long_text(z.paragraphs), "text_pos": long_text(e.paragraphs)}
            for name, zh_sections in zh.items() if len(zh_sections) == len(en.get(name, ()))
            for z, e in zip(zh_sections, en[name], strict=True)]
    return _ordered([r for r in recs if len(r["text_pos"]) >= 50], "tutorial_zh_en")


_SENTENCE = re.compile(r"(?<=[.!?’”])\s+(?=[“‘A-Z])")
_SENTENCE_ZH = re.compile(r"(?<=[。！？])(?![”’」』])|(?<=[。！？][”’」』])")  # after the end mark, or its quote


def _inverse_cloze(chapters: Iterable[tuple[str, tuple[str, ...]]], name: str, split: re.Pattern[str],
                   joiner: str, query_chars: tuple[int, int]) -> list[Record]:
    """One sentence of a paragraph -> the rest of the paragraph and the ones after it (the inverse cloze task):
    a short query over a long passage that holds its context but not its words. ``chapters``: (reference,
    paragraphs); the sentence a paragraph gives is fixed by its reference's digest."""
    recs = []
    for ref, paragraphs in chapters:
        for k, paragraph in enumerate(paragraphs):
            sentences = [s for s in split.split(paragraph) if s.strip()]
            if len(sentences) < 3:
                continue
            pick = int(digest(f"{ref}/{k}", name), 16) % len(sentences)
            rest = joiner.join(sentences[:pick] + sentences[pick + 1:])
            passage = long_text([rest, *paragraphs[k + 1:]], LONG_MAX // 2)
            if query_chars[0] <= len(sentences[pick]) <= query_chars[1] and len(passage) >= LONG_MIN:
                recs.append({"text": sentences[pick], "text_pos": passage})
    return _ordered(recs, name)


def bible_context(inp: Inputs) -> list[Record]:
    """World English Bible: a sentence -> the rest of its paragraph and what follows (English)."""
    return _inverse_cloze(((c.ref, c.paragraphs) for c in inp.bible), "bible_context", _SENTENCE, " ", (20, 300))


def sanguo_context(inp: Inputs) -> list[Record]:
    """Romance of the Three Kingdoms: a sentence -> the rest of its paragraph and what follows (long Chinese)."""
    return _inverse_cloze(((c.title, c.paragraphs) for c in inp.sanguo), "sanguo_context", _SENTENCE_ZH, "",
                          (12, 150))


TRAIN: dict[str, TrainSpec] = {
    t.name: t
    for t in [
        TrainSpec("insuranceqa_qa", "insuranceqa", "InsuranceQA-zh question -> answer, a sampled wrong answer as hard negative",
                  insuranceqa_qa, 30_000, triplets=True),
        TrainSpec("insuranceqa_zh_en", "insuranceqa", "InsuranceQA questions and answers, Chinese -> English",
                  insuranceqa_zh_en, 40_000),
        TrainSpec("idiom_explanation", "idioms", "idiom explanation -> idiom", idiom_explanation, 30_000),
        TrainSpec("idiom_example", "idioms", "example sentence using an idiom -> the idiom's explanation",
                  idiom_example, 30_000),
        TrainSpec("poetry_title", "poetry", "poem title -> poem (simplified)", poetry_title, 50_000),
        TrainSpec("news_headline", "reviews_and_news", "People's Daily headline -> lead (first 75% of the month)",
                  news_headline, 30_000),
        TrainSpec("news_adjacent", "reviews_and_news", "People's Daily paragraph -> next paragraph (first 75%)",
                  news_adjacent, 30_000),
        TrainSpec("cedict_gloss", "cedict", "CC-CEDICT word -> English gloss (capped: dictionary style)",
                  cedict_gloss, 30_000),
        TrainSpec("hsk_zh_en", "hsk", "HSK sentence, Chinese -> English", hsk_zh_en, 30_000),
        TrainSpec("snli_triplets", "snli", "SNLI premise -> entailment, contradiction as hard negative",
                  snli_triplets, 40_000, triplets=True),
        TrainSpec("help_zh_en", "office_help_zh", "LibreOffice help paragraph, Chinese -> English (same page and id)",
                  help_zh_en, 15_000),
        TrainSpec("ui_blender_zh_en", "blender_ui", "Blender interface message, Chinese -> English",
                  ui_en_zh("ui_blender_zh_en", lambda inp: inp.blender_ui), 8_000),
        TrainSpec("ui_calibre_zh_en", "calibre_ui", "calibre interface and help message, Chinese -> English",
                  ui_en_zh("ui_calibre_zh_en", lambda inp: inp.calibre_ui), 5_000),
        TrainSpec("ui_jupyter_zh_en", "jupyter_ui", "JupyterLab interface message, Chinese -> English",
                  ui_en_zh("ui_jupyter_zh_en", lambda inp: inp.jupyter_ui), 3_000),
        TrainSpec("docs_entries", "python_docs", "Python documentation: a name in words -> its first sentence",
                  docs_entries, 6_000),
        TrainSpec("docs_sections", "python_docs", "Python documentation: section title -> the section (long)",
                  docs_sections, 3_000),
        TrainSpec("help_pages", "office_help_zh", "LibreOffice help (Chinese): page title -> the page (long)",
                  help_pages, 2_000),
        TrainSpec("laws_chapters", "laws", "PRC law: the law's name and chapter -> the chapter's articles (long)",
                  laws_chapters, 3_000),
        TrainSpec("tutorial_sections", "inkscape_tutorials",
                  "Inkscape tutorials, English and Chinese: section heading -> the section (long)", tutorial_sections, 1_000),
        TrainSpec("tutorial_zh_en", "inkscape_tutorials", "Inkscape tutorial section, Chinese -> English (long)",
                  tutorial_zh_en, 1_000),
        TrainSpec("bible_context", "bible_en",
                  "World English Bible: a sentence -> the rest of its paragraph and what follows (long)", bible_context,
                  8_000),
        TrainSpec("sanguo_context", "sanguo",
                  "Romance of the Three Kingdoms: a sentence -> the rest of its paragraph and what follows (long)",
                  sanguo_context, 5_000),
        TrainSpec("game_help_zh_en", "game_help", "Wesnoth help, unit descriptions and lore, Chinese -> English",
                  ui_en_zh("game_help_zh_en", lambda inp: inp.game_help), 6_000),
    ]
}
