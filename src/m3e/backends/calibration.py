"""Texts to calibrate static quantisation on (and to count token frequencies over): never a benchmark's.

Read from the training files ``m3e data build`` writes (``<cache>/data/train/``: sentence pairs, questions and
answers, headlines and articles, whose texts the benchmark tasks exclude), or, when that data is not built, from
the short mixed Chinese / English file bundled beside this module.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from m3e.paths import cache_root

# Training files read (fields text / text_pos / text_neg): short zh / en sentences, questions and passages,
# headlines and articles, idiom explanations.
_TRAIN_FILES = ("hsk_zh_en", "insuranceqa_qa", "news_headline", "snli_triplets", "idiom_explanation")
_BUNDLED = Path(__file__).with_name("calibration.txt")
CALIBRATION_TEXTS = 160
HELD_OUT_TEXTS = 64


def _train_rows(names: tuple[str, ...], per_file: int) -> tuple[list[dict[str, object]], str]:
    """The first ``per_file`` records of each built training file named, and the directory they came from."""
    train = cache_root() / "data" / "train"
    rows: list[dict[str, object]] = []
    for name in names:
        path = train / f"{name}.jsonl"
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                rows += [json.loads(line) for _, line in zip(range(per_file), fh, strict=False)]
    return rows, str(train)


def _bundled_texts() -> list[str]:
    return [t for t in _BUNDLED.read_text(encoding="utf-8").splitlines() if t.strip()]


def calibration_texts(limit: int = CALIBRATION_TEXTS + HELD_OUT_TEXTS, seed: int = 0) -> tuple[list[str], str]:
    """Texts to calibrate on and check with, and where they came from."""
    rows, source = _train_rows(_TRAIN_FILES, max(400, limit // len(_TRAIN_FILES)))
    texts = [v for row in rows for k in ("text", "text_pos", "text_neg") if isinstance(v := row.get(k), str)]
    if len(texts) < min(limit, CALIBRATION_TEXTS + HELD_OUT_TEXTS):
        texts, source = _bundled_texts(), "bundled calibration texts"
    rng = random.Random(seed)
    rng.shuffle(texts)
    return texts[:limit], source


# Training files whose records pair a question or headline with its passage (for a cross-encoder's calibration).
_PAIR_FILES = ("insuranceqa_qa", "news_headline", "idiom_explanation", "hsk_zh_en")


def calibration_pairs(limit: int = CALIBRATION_TEXTS + HELD_OUT_TEXTS, seed: int = 0) -> tuple[list[tuple[str, str]], str]:
    """(query, passage) pairs to calibrate a cross-encoder on and check it with: each query with its own passage
    and with another record's (a reranker must order both kinds), and where they came from."""
    rng = random.Random(seed)
    records, source = _train_rows(_PAIR_FILES, max(200, limit // len(_PAIR_FILES)))
    rows = [(q, p) for r in records if isinstance(q := r.get("text"), str) and isinstance(p := r.get("text_pos"), str)]
    if len(rows) < limit // 2:
        texts = _bundled_texts()
        rows, source = list(zip(texts[0::2], texts[1::2], strict=False)), "bundled calibration texts, paired"
    passages = [p for _, p in rows]
    pairs = [(q, p if rng.random() < 0.5 else rng.choice(passages)) for q, p in rows]
    rng.shuffle(pairs)
    return pairs[:limit], source
