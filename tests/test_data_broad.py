"""m3e.data.broad and the skills suite: readers of the broader sources, and held-out skill tasks."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest

from m3e.data import broad
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


def test_long_text_joins_whole_paragraphs_up_to_the_limit() -> None:
    assert long_text(["a" * 10, "b" * 10, "c" * 10], limit=25) == "a" * 10 + "\n" + "b" * 10
    assert long_text(["a" * 50], limit=20) == "a" * 20  # one paragraph over the limit is cut


def test_every_skill_task_exists_and_skills_cover_the_suites() -> None:
    named = {t for tasks in SKILLS.values() for t in tasks}
    assert named == set(TASKS) | set(SKILL_TASKS)  # each task measures one skill, none is left out
    assert sum(len(t) for t in SKILLS.values()) == len(named)
