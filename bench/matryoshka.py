"""How much retrieval quality the leading dimensions of a model's vectors keep (the Matryoshka curve).

    python bench/matryoshka.py MODEL [MODEL ...] [--dims 384,256,128,64] [--backend bf16] [--pca 6000] [--split dev]

Each model encodes the queries and documents of the retrieval tasks once (offline suite's test split and the
skills suite: held-out texts; ``--split dev``: the offline tasks' dev splits instead of their test splits, for
choosing training settings), then every size d is scored from the same vectors cut to their first d
dimensions and renormalised, as ``encode(dimensions=d)`` and the server's ``dimensions`` do: nDCG@10 per task,
the average, and the average as a percentage of the model's full-size average.

``--pca N`` adds a row per model with its vectors rotated onto their principal axes first (an orthogonal map,
so full-size cosines do not change): the axes are fitted on N texts of the training pools (``data:distill``,
each encoded on its own side, the skills suite's sources left out), never on the tasks' texts.
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
SPLITS = {"test": TASKS, "dev": tuple((task, "dev" if profile == "full" else profile) for task, profile in TASKS)}


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
    parser.add_argument("--pca", type=int, default=0, metavar="N",
                        help="also score the vectors rotated onto principal axes fitted on N pool texts")
    parser.add_argument("--split", choices=sorted(SPLITS), default="test",
                        help="the offline tasks' split (dev: for choosing settings; the skills tasks either way)")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    data = data_dir()
    print("| model | task | " + " | ".join(f"{d}-d" for d in dims) + " |")
    print("|---|---|" + "---:|" * len(dims))
    for name in args.models:
        model = m3e.load(name, backend=args.backend)
        rotations = {"": None}
        if args.pca:
            rotations[" + PCA rotation"] = principal_axes(model, data, args.pca)
        vectors = {}
        for task, profile in SPLITS[args.split]:
            doc = json.loads((data / "tasks" / task / f"{profile}.json").read_text(encoding="utf-8"))
            if profile == "dev":
                task = f"{task} (dev)"
            vectors[task] = (doc, model.encode_queries([x["text"] for x in doc["queries"]]),
                             model.encode_documents([x["text"] for x in doc["corpus"]]))
        for suffix, rotation in rotations.items():
            label = Path(name).name + suffix
            per_dim: dict[int, list[float]] = {d: [] for d in dims}
            for task, (doc, q, c) in vectors.items():
                if rotation is not None:
                    q, c = q @ rotation, c @ rotation
                ids = [x["id"] for x in doc["corpus"]]
                row = []
                for d in dims:
                    sims = cut(q, d) @ cut(c, d).T
                    score = float(np.mean([ndcg_at_10(sims[i], ids, doc["qrels"][x["id"]])
                                           for i, x in enumerate(doc["queries"])]))
                    per_dim[d].append(score)
                    row.append(f"{100 * score:.2f}")
                print(f"| {label} | {task} | " + " | ".join(row) + " |", flush=True)
            means = [float(np.mean(per_dim[d])) for d in dims]
            cells = [f"{100 * m:.2f} ({100 * m / means[0]:.0f}%)" for m in means]
            print(f"| {label} | **average** | " + " | ".join(cells) + " |", flush=True)


SKILLS_POOLS = ("help_", "docs_")  # the skills suite's sources (L, P): held out of everything fitted


def principal_axes(model, data: Path, n: int) -> np.ndarray:
    """An orthogonal [dim, dim] matrix whose columns are the principal axes (largest variance first) of the
    model's vectors of ``n`` pool texts, taken evenly from every pool outside the skills suite's sources."""
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))["distill"]
    pools = {k: v["side"] for k, v in manifest.items() if not k.startswith(SKILLS_POOLS)}
    per_pool = max(1, n // len(pools))
    vecs = []
    for pool, side in sorted(pools.items()):
        with open(data / "distill" / f"{pool}.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(per_pool), f, strict=False)]
        encode = model.encode_queries if side == "query" else model.encode_documents
        vecs.append(np.asarray(encode(texts)))
    x = np.concatenate(vecs)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return vt.T.astype(np.float32)

if __name__ == "__main__":
    main()
