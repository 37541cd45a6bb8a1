"""`m3e search INDEX "query" [-k 10] [--mode dense|sparse|hybrid] [--filter field=value] [--chunks] [--json]`.

The query is embedded with the model recorded in the index (or --model, which must match) and cut into words
the way the index's chunks were; results are documents (each with its best chunk and its other matching
chunks) unless --chunks asks for the chunks themselves.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from m3e.cli.remote import add_server_options
from m3e.errors import M3EError
from m3e.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_FUSION, FUSIONS, RRF_K, Fusion


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index directory (from `m3e index build`); with --server, the name of an index "
                        "the server serves (`m3e serve --index NAME=DIR`)")
    parser.add_argument("query", nargs="+", help="the query text")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=10,
                        help="number of results (default: 10)")
    parser.add_argument("--filter", dest="filters", action="append", default=[], metavar="FIELD=VALUE",
                        help="keep chunks whose metadata FIELD equals VALUE (repeatable: all must match)")
    parser.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default=None,
                        help="dense: by meaning (cosine); sparse: by words (BM25); hybrid: both, fused (default: "
                        "hybrid when the index keeps words, else dense)")
    parser.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION,
                        help=f"hybrid: how the two lists are fused (default {DEFAULT_FUSION})")
    parser.add_argument("--dense-weight", type=float, default=DEFAULT_DENSE_WEIGHT, metavar="W",
                        help=f"hybrid, weighted fusion: the dense side's share (default {DEFAULT_DENSE_WEIGHT})")
    parser.add_argument("--chunks", action="store_true",
                        help="list matching chunks instead of documents (a document may then appear several times)")
    parser.add_argument("--colbert", action="store_true",
                        help="re-score the best --candidates with BGE-M3's dense + lexical + ColBERT score (an index "
                        "built by a BGE-M3 checkpoint)")
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
                        help="chunks the reranker or --colbert sees (default 50)")
    parser.add_argument("--rerank-weight", type=float, default=None, metavar="W",
                        help="with --rerank: the reranker's share when its score is fused with the retrieval score "
                        "(1: its order alone; default: what the reranker's directory recommends, else 1)")
    add_server_options(parser)


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
    query = " ".join(args.query)
    filters = parse_filters(args.filters)
    if args.server:
        from m3e.cli.remote import search_remote

        return print_results(search_remote(args, query, filters), args)
    return print_results(search_local(args, query, filters), args)


def search_local(args: argparse.Namespace, query: str, filters: dict[str, str]) -> list[dict[str, Any]]:
    from m3e.cli.index import open_index

    fusion = Fusion(args.fusion, dense_weight=args.dense_weight, rrf_k=RRF_K)
    reranker = None
    if args.rerank is not None:
        from m3e.loading import load_reranker

        reranker = load_reranker(args.rerank)
    with open_index(args.index, args.model) as index:
        if args.nprobes is not None:
            if args.nprobes < 1:
                raise M3EError(f"--nprobes must be at least 1, not {args.nprobes}")
            index.store.config["nprobes"] = args.nprobes
        options: dict[str, Any] = {"filters": filters or None, "mode": args.mode, "fusion": fusion,
                                   "rerank": reranker, "candidates": args.candidates, "colbert": args.colbert,
                                   "rerank_weight": args.rerank_weight}
        if args.chunks:
            hits = index.search(query, k=args.k, **options)
            records = [h.to_dict() for h in hits]
        else:
            documents = index.search(query, k=args.k, group=True, **options)
            records = [d.to_dict() for d in documents]
    return records


def print_results(records: list[dict[str, Any]], args: argparse.Namespace) -> int:
    if args.json:
        for rank, record in enumerate(records, start=1):
            print(json.dumps({"rank": rank, **record}, ensure_ascii=False))
        return 0
    if not records:
        print("no results")
        return 0
    for rank, record in enumerate(records, start=1):
        print("\n".join(_result_lines(rank, record, args.snippet)))
    return 0


def _result_lines(rank: int, record: dict[str, Any], width: int) -> list[str]:
    """One result as text: rank, score (and what it is made of), document id and span, metadata, snippet; for a
    document, where its other matching chunks are."""
    meta = "  " + " ".join(f"{k}={v}" for k, v in record["metadata"].items()) if record["metadata"] else ""
    sides = [f"{name} {record[key]:.4f}" for name, key in
             (("cosine", "dense_score"), ("bm25", "sparse_score"), ("colbert", "colbert_score"))
             if key in record and record[key] != record["score"]]
    if "rerank_score" in record:
        head, sides = f"{record['rerank_score']:.4f}", [f"retrieval {record['score']:.4f}", *sides]
    else:
        head = f"{record['score']:.4f}"
    score = head + (f" ({', '.join(sides)})" if sides else "")
    lines = [f"{rank:>3}. {score}  {record['id']} [{record['start']}:{record['end']}]{meta}",
             f"     {snippet(record['text'], width)}"]
    others = record.get("chunks") or []
    if others:
        spans = ", ".join(f"[{c['start']}:{c['end']}]" for c in others[:5]) + (" ..." if len(others) > 5 else "")
        lines.append(f"     also matches in {len(others)} more chunk(s): {spans}")
    return lines
