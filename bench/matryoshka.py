"""How much retrieval quality the leading dimensions of a model's vectors keep (the Matryoshka curve).

    python bench/matryoshka.py MODEL [MODEL ...] [--dims 384,256,128,64] [--backend bf16]

Each model encodes the queries and documents of the retrieval tasks once (offline suite's test split and the
skills suite: held-out texts), then every size d is scored from the same vectors cut to their first d
dimensions and renormalised, as ``encode(dimensions=d)`` and the server's ``dimensions`` do: nDCG@10 per task,
the average, and the average as a percentage of the model's full-size average.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TASKS = (  # (task, profile)
    ("InsuranceQARetrieval", "full"),
    ("IdiomReverseDictionary", "full"),
    ("NewsHeadlineRetrieval", "full"),
    ("HelpPageRetrieval", "skills"),
    ("DocEntryRetrieval", "skills"),
    ("DocSectionRetrieval", "skills"),
)


def ndcg_at_10(scores: np.ndarray, doc_ids: list[str], relevant: dict[str, int]) -> float:
    top = np.argsort(-scores)[:10]
    gains = sum(relevant.get(doc_ids[j], 0) / math.log2(i + 2) for i, j in enumerate(top))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return gains / ideal if ideal else 0.0


def cut(vectors: np.ndarray, d: int) -> np.ndarray:
    part = vectors[:, :d]
    return part / np.linalg.norm(part, axis=1, keepdims=True).clip(min=1e-12)


def main() -> None:
    import m3e
    from m3e.data.paths import data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--dims", default="384,256,128,64")
    parser.add_argument("--backend", default="bf16")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    data = data_dir()
    print("| model | task | " + " | ".join(f"{d}-d" for d in dims) + " |")
    print("|---|---|" + "---:|" * len(dims))
    for name in args.models:
        model = m3e.load(name, backend=args.backend)
        per_dim: dict[int, list[float]] = {d: [] for d in dims}
        for task, profile in TASKS:
            doc = json.loads((data / "tasks" / task / f"{profile}.json").read_text(encoding="utf-8"))
            q = model.encode_queries([x["text"] for x in doc["queries"]])
            c = model.encode_documents([x["text"] for x in doc["corpus"]])
            ids = [x["id"] for x in doc["corpus"]]
            row = []
            for d in dims:
                sims = cut(q, d) @ cut(c, d).T
                score = float(np.mean([ndcg_at_10(sims[i], ids, doc["qrels"][x["id"]])
                                       for i, x in enumerate(doc["queries"])]))
                per_dim[d].append(score)
                row.append(f"{100 * score:.2f}")
            print(f"| {Path(name).name} | {task} | " + " | ".join(row) + " |", flush=True)
        means = [float(np.mean(per_dim[d])) for d in dims]
        cells = [f"{100 * m:.2f} ({100 * m / means[0]:.0f}%)" for m in means]
        print(f"| {Path(name).name} | **average** | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
