"""Training groups for m3e's own reranker: a sample of the offline training pairs of the retrieval kinds the
benchmark measures (insurance question -> answer, idiom explanation -> idiom, news headline -> lead), each
query with hard negatives mined by the default embedding model (ranks 3-49: near misses, not the positive's
duplicates at the top). Deterministic: queries are taken in sha1 order.

    python recipes/reranker_data.py OUT_DIR      # OUT_DIR/pairs/<name>.jsonl (the sample), OUT_DIR/<name>.jsonl (groups)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from m3e.data.paths import data_dir

# training file -> queries to keep
SAMPLES = {"insuranceqa_qa": 3000, "idiom_explanation": 3000, "news_headline": 1723}


def sample(name: str, n: int, out: Path) -> Path:
    # Every positive of a query (an insurance question can have several right answers), so that none of them
    # is mined as a negative.
    seen: dict[str, dict[str, list[str]]] = {}
    with open(data_dir() / "train" / f"{name}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            group = seen.setdefault(record["text"], {"query": record["text"], "pos": []})
            if record["text_pos"] not in group["pos"]:
                group["pos"].append(record["text_pos"])
    keys = sorted(seen, key=lambda q: hashlib.sha1(q.encode("utf-8")).hexdigest())[:n]
    path = out / "pairs" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(seen[k], ensure_ascii=False) + "\n" for k in keys), encoding="utf-8")
    return path


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, n in SAMPLES.items():
        mined = out / f"{name}.jsonl"
        if mined.exists():
            print(f"{mined} exists; skipping")
            continue
        pairs = sample(name, n, out)
        subprocess.run([sys.executable, "-m", "m3e.cli", "mine", "default", str(pairs), "--rank-window", "3-50",
                        "--negatives", "15", "-o", str(mined)], check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reranker"))
