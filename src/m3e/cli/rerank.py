"""`m3e rerank MODEL "query" doc1 doc2 ...`: order documents by a cross-encoder's score.

Candidates can also come from a file or stdin (``-i FILE``, ``-i -``), one JSON object per line, either

- a group: ``{"query": "...", "documents": ["...", {"text": "...", "id": ...}, ...]}`` (each group ranked on
  its own, one output line per group with ``--json``), or
- a candidate: any object with a ``"text"`` field, such as the lines of ``m3e search INDEX "q" --json``; they
  are ranked together against the QUERY argument, their other fields passed through.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from m3e.errors import InputError, M3EError

if TYPE_CHECKING:
    from m3e.reranker import Reranker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from m3e.backends import BACKEND_CHOICES

    parser.add_argument("model", help="reranker directory or hub id (a CrossEncoder or sequence-classification model)")
    parser.add_argument("query", nargs="?", default=None, help="the query (needed unless -i gives groups)")
    parser.add_argument("documents", nargs="*", help="documents to rank")
    parser.add_argument("-i", "--input", default=None, metavar="FILE",
                        help="JSON lines of groups {query, documents} or of candidates with a text field; - for stdin")
    parser.add_argument("-k", "--top-k", dest="top_k", type=int, default=None, help="keep the best K of each ranking")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--backend", default="torch", choices=BACKEND_CHOICES, help="inference backend (default: torch fp32)")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per (query, document window)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (default: 32)")


def run(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.top_k < 1:
        raise M3EError(f"--top-k must be at least 1, not {args.top_k}")
    if args.input is None:
        if args.query is None or not args.documents:
            raise M3EError("give a query and at least one document, or -i FILE")
        groups: Iterator[tuple[str, list[dict[str, Any]], bool]] = iter(
            [(args.query, [{"text": d} for d in args.documents], False)]
        )
    else:
        if args.documents:
            raise M3EError("give documents as arguments or with -i, not both")
        groups = _groups_from_file(args.input, args.query)
    reranker = _load(args)
    ranked_any = False
    for query, candidates, grouped in groups:
        ranked_any = True
        _print_ranking(reranker, query, candidates, grouped, args)
    if not ranked_any:
        raise InputError("no records", path=args.input)
    return 0


def _load(args: argparse.Namespace) -> Reranker:
    from m3e.loading import load_reranker

    return load_reranker(args.model, device=args.device, backend=args.backend, max_length=args.max_length)


def _groups_from_file(path: str, query: str | None) -> Iterator[tuple[str, list[dict[str, Any]], bool]]:
    """(query, candidates, is a group of the file): groups as they are read (memory: one group at a time);
    loose candidates collected into one ranking against QUERY."""
    loose: list[dict[str, Any]] = []
    for line_no, record in _json_lines(path):
        if "documents" in record:
            yield (*_group(record, path, line_no), True)
        elif isinstance(record.get("text"), str):
            if query is None:
                raise InputError("a candidate line needs the QUERY argument (or give {query, documents} groups)",
                                 path=path, line=line_no)
            loose.append(record)
        else:
            raise InputError('expected {"query", "documents"} or an object with a "text" field', path=path, line=line_no)
    if loose:
        yield query or "", loose, False


def _group(record: dict[str, Any], path: str, line_no: int) -> tuple[str, list[dict[str, Any]]]:
    query, documents = record.get("query"), record.get("documents")
    if not isinstance(query, str):
        raise InputError('"query" must be a string', path=path, line=line_no)
    if not isinstance(documents, list) or not documents:
        raise InputError('"documents" must be a non-empty list', path=path, line=line_no)
    candidates: list[dict[str, Any]] = []
    for j, doc in enumerate(documents):
        if isinstance(doc, str):
            candidates.append({"text": doc})
        elif isinstance(doc, dict) and isinstance(doc.get("text"), str):
            candidates.append(doc)
        else:
            raise InputError(f'documents[{j}] must be a string or an object with a "text" string', path=path, line=line_no)
    return query, candidates


def _json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    stream = sys.stdin if path == "-" else _open(path)
    shown = "<stdin>" if path == "-" else path
    try:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"not JSON ({exc.msg})", path=shown, line=line_no) from None
            if not isinstance(record, dict):
                raise InputError("expected a JSON object", path=shown, line=line_no)
            yield line_no, record
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 (byte {exc.start} of a line)", path=shown) from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _open(path: str) -> Any:
    try:
        return open(path, encoding="utf-8")  # closed by the reader's finally
    except OSError as exc:
        raise M3EError(f"cannot read {path}: {exc.strerror or exc}") from None


def _print_ranking(
    reranker: Reranker, query: str, candidates: list[dict[str, Any]], grouped: bool, args: argparse.Namespace
) -> None:
    texts = [c["text"] for c in candidates]
    ranking = reranker.rank(query, texts, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        results = []
        for rank, item in enumerate(ranking, start=1):
            fields = {k: v for k, v in candidates[item["corpus_id"]].items() if k not in ("rank", "score")}
            results.append({"rank": rank, "index": item["corpus_id"], "score": round(item["score"], 6), **fields})
        if grouped:  # one line per group of the input file
            print(json.dumps({"query": query, "results": results}, ensure_ascii=False))
        else:
            for result in results:
                print(json.dumps(result, ensure_ascii=False))
        return
    print(f"query: {query}")
    for rank, item in enumerate(ranking, start=1):
        text = " ".join(texts[item["corpus_id"]].split())
        print(f"{rank:>3}. {item['score']:.4f}  [{item['corpus_id']}] {text[:120]}{'…' if len(text) > 120 else ''}")
