"""`m3e search INDEX "query" [-k 10] [--filter field=value] [--json]`: query a semantic-search index.

The query is embedded with the model recorded in the index (or --model, which must match).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from m3e.errors import M3EError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index directory (from `m3e index build`)")
    parser.add_argument("query", nargs="+", help="the query text")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=10,
                        help="number of results (default: 10)")
    parser.add_argument("--filter", dest="filters", action="append", default=[], metavar="FIELD=VALUE",
                        help="keep chunks whose metadata FIELD equals VALUE (repeatable: all must match)")
    parser.add_argument("--model", "-m", default=None,
                        help="query model (default: the index's; must match it)")
    parser.add_argument("--json", action="store_true", help="print JSON lines, one result per line")
    parser.add_argument("--nprobes", type=int, default=None,
                        help="IVF partitions to scan when the index has an ANN index "
                             "(default 32; more: better recall)")
    parser.add_argument("--snippet", type=int, default=160,
                        help="snippet length in characters (default: 160)")
    parser.add_argument("--rerank", nargs="?", const="default", default=None, metavar="RERANKER",
                        help="reorder the nearest --candidates chunks with a cross-encoder (no value: the default "
                        "reranker)")
    parser.add_argument("--candidates", type=int, default=50, metavar="N",
                        help="chunks the reranker sees (default 50)")


def parse_filters(items: list[str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise M3EError(f"--filter expects FIELD=VALUE, got {item!r}")
        filters[field.strip()] = value
    return filters


def snippet(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 1)] + "…"


def run(args: argparse.Namespace) -> int:
    from m3e.cli.index import open_index

    query = " ".join(args.query)
    filters = parse_filters(args.filters)
    reranker = None
    if args.rerank is not None:
        from m3e.loading import load_reranker

        reranker = load_reranker(args.rerank)
    with open_index(args.index, args.model) as index:
        if args.nprobes is not None:
            if args.nprobes < 1:
                raise M3EError(f"--nprobes must be at least 1, not {args.nprobes}")
            index.store.config["nprobes"] = args.nprobes
        hits = index.search(query, k=args.k, filters=filters or None, rerank=reranker,
                            candidates=args.candidates)
    if args.json:
        for rank, h in enumerate(hits, start=1):
            record: dict[str, Any] = {"rank": rank, "score": round(h.score, 6), "id": h.doc_id,
                                      "chunk": h.chunk, "start": h.start, "end": h.end, "text": h.text,
                                      "metadata": h.metadata}
            if h.rerank_score is not None:
                record["rerank_score"] = round(h.rerank_score, 6)
            print(json.dumps(record, ensure_ascii=False))
        return 0
    if not hits:
        print("no results")
        return 0
    for rank, h in enumerate(hits, start=1):
        meta = "  " + " ".join(f"{k}={v}" for k, v in h.metadata.items()) if h.metadata else ""
        score = f"{h.score:.4f}" if h.rerank_score is None else f"{h.rerank_score:.4f} (cosine {h.score:.4f})"
        print(f"{rank:>3}. {score}  {h.doc_id} [{h.start}:{h.end}]{meta}")
        print(f"     {snippet(h.text, args.snippet)}")
    return 0
