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


def calibration_texts(limit: int = CALIBRATION_TEXTS + HELD_OUT_TEXTS, seed: int = 0) -> tuple[list[str], str]:
    """Texts to calibrate on and check with, and where they came from."""
    train = cache_root() / "data" / "train"
    texts: list[str] = []
    for name in _TRAIN_FILES:
        path = train / f"{name}.jsonl"
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as fh:
            for _, line in zip(range(max(400, limit // len(_TRAIN_FILES))), fh, strict=False):
                row = json.loads(line)
                texts += [row[k] for k in ("text", "text_pos", "text_neg") if isinstance(row.get(k), str)]
    source = str(train)
    if len(texts) < min(limit, CALIBRATION_TEXTS + HELD_OUT_TEXTS):
        texts = [t for t in _BUNDLED.read_text(encoding="utf-8").splitlines() if t.strip()]
        source = "bundled calibration texts"
    rng = random.Random(seed)
    rng.shuffle(texts)
    return texts[:limit], source


# Training files whose records pair a question or headline with its passage (for a cross-encoder's calibration).
_PAIR_FILES = ("insuranceqa_qa", "news_headline", "idiom_explanation", "hsk_zh_en")


def calibration_pairs(limit: int = CALIBRATION_TEXTS + HELD_OUT_TEXTS, seed: int = 0) -> tuple[list[tuple[str, str]], str]:
    """(query, passage) pairs to calibrate a cross-encoder on and check it with: each query with its own passage
    and with another record's (a reranker must order both kinds), and where they came from."""
    rng = random.Random(seed)
    train = cache_root() / "data" / "train"
    rows: list[tuple[str, str]] = []
    for name in _PAIR_FILES:
        path = train / f"{name}.jsonl"
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as fh:
            for _, line in zip(range(max(200, limit // len(_PAIR_FILES))), fh, strict=False):
                row = json.loads(line)
                if isinstance(row.get("text"), str) and isinstance(row.get("text_pos"), str):
                    rows.append((row["text"], row["text_pos"]))
    source = str(train)
    if len(rows) < limit // 2:
        texts = [t for t in _BUNDLED.read_text(encoding="utf-8").splitlines() if t.strip()]
        rows = list(zip(texts[0::2], texts[1::2], strict=False))
        source = "bundled calibration texts, paired"
    passages = [p for _, p in rows]
    pairs = [(q, p if rng.random() < 0.5 else rng.choice(passages)) for q, p in rows]
    rng.shuffle(pairs)
    return pairs[:limit], source
