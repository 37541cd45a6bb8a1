"""How well a kept vocabulary covers Chinese, English and technical text: words that fall apart into pieces.

    python bench/vocabulary.py LABEL=MODEL_DIR [LABEL=MODEL_DIR ...]

For each model's tokenizer and each kind of text, the share of words cut into 3 or more pieces and the tokens per
100 characters (the cost of a text: more pieces, longer sequences, less meaning per piece). Texts are held-out
evaluation texts (the skills and offline tasks' corpora, never training text, from which the vocabularies are
chosen): general Chinese (People's Daily leads), technical Chinese (LibreOffice help pages), general English
(SNLI), technical English (Python documentation sections). Words: rjieba's for Chinese runs, letters for English.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TEXTS = {  # kind -> (task, profile, what to read)
    "zh general": ("NewsHeadlineRetrieval", "full", "corpus"),
    "zh technical": ("HelpPageRetrieval", "skills", "corpus"),
    "en general": ("SNLIPairClassification", "full", "pairs"),
    "en technical": ("DocSectionRetrieval", "skills", "corpus"),
}
_EN_WORD = re.compile(r"[A-Za-z]{2,}")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def texts_of(data: Path, task: str, profile: str, part: str, limit: int = 400) -> list[str]:
    doc = json.loads((data / "tasks" / task / f"{profile}.json").read_text(encoding="utf-8"))
    if part == "pairs":
        return [p[k] for p in doc["pairs"][:limit] for k in ("sentence1", "sentence2")]
    return [d["text"] for d in doc[part][:limit]]


def words_of(texts: Iterable[str], chinese: bool) -> list[str]:
    if not chinese:
        return [w for t in texts for w in _EN_WORD.findall(t)]
    import rjieba

    return [w for t in texts for w in rjieba.cut(t) if _CJK.search(w)]


def pieces(tokenizer: object, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False).ids  # type: ignore[attr-defined]
    toks = [tokenizer.id_to_token(i) for i in ids]  # type: ignore[attr-defined]
    return len([t for t in toks if t not in ("▁", "")])  # a lone word-start marker carries nothing


def measure(tokenizer: object, texts: list[str], words: list[str]) -> tuple[float, float]:
    split = sum(1 for w in words if pieces(tokenizer, w) >= 3) / max(1, len(words))
    n_tokens = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)  # type: ignore[attr-defined]
    return 100 * split, 100 * n_tokens / max(1, sum(len(t) for t in texts))


def main() -> None:
    from tokenizers import Tokenizer

    from m3e.data.paths import data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="LABEL=MODEL_DIR (a directory with tokenizer.json)")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data = args.data_dir or data_dir()
    corpora = {kind: texts_of(data, *spec) for kind, spec in TEXTS.items()}
    words = {kind: words_of(t, kind.startswith("zh")) for kind, t in corpora.items()}
    print("| model | vocabulary | " + " | ".join(f"{k}: words in >= 3 pieces %, tokens/100 chars" for k in TEXTS) + " |")
    print("|---|---:|" + "---:|" * len(TEXTS))
    for spec in args.models:
        label, _, path = spec.partition("=")
        tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        cells = [f"{s:.1f}%, {t:.1f}" for s, t in (measure(tokenizer, corpora[k], words[k]) for k in TEXTS)]
        print(f"| {label} | {tokenizer.get_vocab_size():,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
