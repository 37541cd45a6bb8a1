"""Which side should `m3e serve` give texts that arrive with no side?

    python bench/default_side.py [--model PATH] [--profile dev] [--markdown FILE]

A client that sets nothing (no ``input_type``, no ``prompt_name``, no ``:query``/``:document`` model suffix)
sends its queries and its documents alike, so the server can only give both the same prompt. This measures
retrieval on the offline retrieval tasks of a profile (the dev splits by default: ``m3e data build`` writes
them) when queries and documents both get the query prompt, both the document prompt, or no prompt, next to
the asymmetric reference (queries with the query prompt, documents with the document prompt, what a client
that sends sides gets). Scores: nDCG@10 and recall@10 (x 100), cosine ranking over the task's whole corpus.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

# (label, query prompt key, document prompt key): what queries and documents get in each configuration.
CONFIGURATIONS = [
    ("reference: query / document", "query", "document"),
    ("both query", "query", "query"),
    ("both document", "document", "document"),
    ("both none", "none", "none"),
]


def _prompt(model: object, side: str) -> str:
    if side == "none":
        return ""
    return str(getattr(model, f"{side}_prompt"))


def ndcg_recall_at_10(
    scores: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: dict[str, dict[str, int]]
) -> tuple[float, float]:
    """Mean nDCG@10 and recall@10 over the queries that have judgements."""
    top = np.argsort(-scores, axis=1)[:, :10]
    ndcgs, recalls = [], []
    for row, qid in enumerate(query_ids):
        rel = qrels.get(qid)
        if not rel:
            continue
        gains = [rel.get(doc_ids[j], 0) for j in top[row]]
        dcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
        ndcgs.append(dcg / idcg if idcg else 0.0)
        found = sum(1 for j in top[row] if rel.get(doc_ids[j], 0) > 0)
        recalls.append(found / sum(1 for g in rel.values() if g > 0))
    return float(np.mean(ndcgs)), float(np.mean(recalls))


def measure(model_path: str | None, profile: str) -> list[dict[str, object]]:
    from m3e.data.paths import data_dir
    from m3e.evaluation.taskfile import load_task_files
    from m3e.loading import load_model

    model = load_model(model_path)
    tasks = [t for t in load_task_files(data_dir(), profile) if t.type == "Retrieval"]
    if not tasks:
        raise SystemExit(f"no {profile!r} retrieval task files; build them with `m3e data build`")
    rows: list[dict[str, object]] = []
    for task in tasks:
        queries = task.records["queries"]
        corpus = task.records["corpus"]
        query_ids = [str(q["id"]) for q in queries]
        doc_ids = [str(d["id"]) for d in corpus]
        for label, query_side, doc_side in CONFIGURATIONS:
            start = time.perf_counter()
            q = model.encode([x["text"] for x in queries], prompt=_prompt(model, query_side))
            d = model.encode([x["text"] for x in corpus], prompt=_prompt(model, doc_side))
            ndcg, recall = ndcg_recall_at_10(q @ d.T, query_ids, doc_ids, task.records["qrels"])
            rows.append(
                {
                    "task": task.name,
                    "queries": len(queries),
                    "corpus": len(corpus),
                    "configuration": label,
                    "ndcg_at_10": round(100 * ndcg, 2),
                    "recall_at_10": round(100 * recall, 2),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict[str, object]], model_name: str, profile: str) -> str:
    lines = [
        f"Model: {model_name}; task files: profile {profile!r}.",
        "",
        "| task (queries / corpus) | queries and documents get | nDCG@10 | recall@10 |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} ({r['queries']} / {r['corpus']}) | {r['configuration']} | "
            f"{r['ndcg_at_10']:.2f} | {r['recall_at_10']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="model directory or hub id (default: the default model)"
    )
    parser.add_argument("--profile", default="dev", help="task-file profile (default dev)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to FILE")
    args = parser.parse_args()
    rows = measure(args.model, args.profile)
    from m3e.loading import load_model

    table = markdown(rows, load_model(args.model).name, args.profile)
    print(table)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
