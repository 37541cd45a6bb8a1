"""`m3e index build|add|update|delete|info`: build and maintain a semantic-search index.

    m3e index build CORPUS --model M --out INDEX   # .txt/.jsonl/.csv/.parquet; --resume after a kill or Ctrl-C
    m3e index add INDEX CORPUS [--upsert]           # all or nothing
    m3e index update INDEX CORPUS                   # add, replacing documents with the same id
    m3e index delete INDEX --id ID [--id ID ...]    # or --ids-file FILE (one id per line); all must exist

A failure says what was kept: a failed new build removes what it created; a failed add, update or delete
leaves the index as it was (index.json is the commit point) and the message says how many documents it holds.
    m3e index info INDEX [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.cli._common import add_model_options, model_source
from m3e.cli.ray_commands import add_ray_options, run_index_build_ray
from m3e.errors import FaultError, M3EError, describe_os_error
from m3e.index.engines import ENGINES
from m3e.index.index import BuildFailed

if TYPE_CHECKING:
    from m3e.index import CorpusReader, Index


def _corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", help="corpus file: .txt (one document per line), .jsonl, .csv/.tsv or .parquet")
    p.add_argument("--format", dest="fmt", default=None, choices=["txt", "jsonl", "csv", "parquet"],
                   help="corpus format (default: from the file suffix)")
    p.add_argument("--id-field", default="id", help="record field holding the document id (default: id)")
    p.add_argument("--text-field", default="text", help="record field holding the text (default: text)")
    p.add_argument("--metadata-fields", default=None,
                   help="comma-separated fields to keep as metadata (default: every other field)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the corpus (default: utf-8)")
    p.add_argument("--batch-chunks", type=int, default=256, help="chunks encoded and written per batch")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show progress with ETA (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build an index from a corpus (resumes an interrupted build)")
    _corpus_options(build)
    build.add_argument("--out", "-o", required=True, help="index directory to create")
    add_model_options(build)
    build.add_argument("--query-prompt", default=None, help="prefix for queries (default: the model's)")
    build.add_argument("--document-prompt", default=None, help="prefix for documents (default: the model's)")
    build.add_argument("--chunk-unit", default="characters", choices=["characters", "tokens"],
                       help="measure chunks in characters (default) or in the model's tokens")
    build.add_argument("--chunk-size", type=int, default=None,
                       help="chunk length in --chunk-unit (default: 400 characters / 256 tokens)")
    build.add_argument("--overlap", type=int, default=None,
                       help="characters / tokens shared by consecutive chunks (default: 50 / 32)")
    build.add_argument("--sparse", default="bm25", choices=["bm25", "none"],
                       help="bm25 (default): keep each chunk's words beside its vector, for sparse and hybrid "
                       "search; none: vectors only")
    build.add_argument("--engine", default="lancedb", choices=ENGINES,
                       help="lancedb: embedded in INDEX (default); qdrant: a Qdrant server/cluster by --url; "
                            "pgvector: a PostgreSQL table by --url")
    build.add_argument("--url", default=None,
                       help="qdrant: server URL (e.g. http://localhost:6333; key from $QDRANT_API_KEY) "
                            "or a directory for Qdrant's local mode; pgvector: postgresql://user@host:5432/db "
                            "(password from $PGPASSWORD or ~/.pgpass)")
    build.add_argument("--collection", default=None,
                       help="qdrant collection / pgvector table name (default: INDEX's name)")
    build.add_argument("--ann", default="auto", choices=["auto", "none", "ivf", "hnsw-sq", "ivf-pq"],
                       help="lancedb: the vector index built after the build (auto: none below 50k chunks, "
                            "IVF-HNSW-SQ up to 5M, IVF-PQ beyond; docs/scaling.md)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    build.add_argument("--resume", action="store_true",
                       help="continue an unfinished build at --out (killed or interrupted) with the same corpus")
    add_ray_options(build, index=True)

    for name, help_text in (("add", "add documents to an index (all or nothing)"),
                            ("update", "add documents, replacing those whose id is already indexed")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("index", help="index directory")
        _corpus_options(p)
        p.add_argument("--model", "-m", default=None, help="encode with this model (must match the index's)")
        if name == "add":
            p.add_argument("--upsert", action="store_true",
                           help="replace documents whose id is already indexed")

    delete = sub.add_parser("delete", help="delete documents by id (all or nothing)")
    delete.add_argument("index", help="index directory")
    delete.add_argument("--id", dest="ids", action="append", default=[], help="document id (repeatable)")
    delete.add_argument("--ids-file", default=None, help="file with one document id per line")
    delete.add_argument("--missing-ok", action="store_true",
                        help="delete the ids that are in the index and only warn about the others "
                             "(default: an unknown id is an error and nothing is deleted)")

    info = sub.add_parser("info", help="describe an index: model, engine, counts, state")
    info.add_argument("index", help="index directory")
    info.add_argument("--json", action="store_true", help="print the index metadata as JSON")


def _reader(args: argparse.Namespace) -> CorpusReader:
    from m3e.index.corpus import CorpusReader

    fields = None
    if args.metadata_fields:
        fields = [f.strip() for f in args.metadata_fields.split(",") if f.strip()]
    return CorpusReader(args.corpus, id_field=args.id_field, text_field=args.text_field,
                        metadata_fields=fields, fmt=args.fmt, encoding=args.encoding)


def _build(args: argparse.Namespace) -> int:
    from m3e.index import build_index
    from m3e.loading import load_model

    if args.ray is not None:  # CORPUS is a glob of files, encoded on a Ray cluster
        return run_index_build_ray(args)
    reader = _reader(args)
    pooling = args.pooling
    if pooling is None and args.model is not None and Path(args.model).is_dir():
        from m3e.bge_m3 import is_bge_m3_dir

        if is_bge_m3_dir(args.model):
            pooling = "cls"  # BGE-M3's dense side, also for a copy without sentence-transformers files
    model = load_model(args.model, device=args.device, backend=args.backend, max_length=args.max_length,
                       pooling=pooling, query_prompt=args.query_prompt, document_prompt=args.document_prompt)
    resuming = _stored(args.out).endswith(" documents stored")
    try:
        index, report = build_index(
            reader, args.out, model, model_source=model_source(args.model), overwrite=args.overwrite,
            resume=args.resume, batch_chunks=args.batch_chunks, progress=args.progress, engine=args.engine,
            url=args.url, collection=args.collection, chunk_size=args.chunk_size, overlap=args.overlap,
            chunk_unit=args.chunk_unit, sparse=None if args.sparse == "none" else args.sparse, ann=args.ann,
        )
    except KeyboardInterrupt:
        print(f"m3e index: interrupted; {_stored(args.out)} in {args.out}: rerun with --resume to continue",
              file=sys.stderr)
        return 130
    except BuildFailed:
        raise
    except (M3EError, OSError) as exc:
        if not (args.resume and resuming):
            raise
        # a resumed build that failed: what it had stored before is kept
        raise _kept(exc, f"{args.out} keeps the unfinished build ({_stored(args.out)}; --resume continues "
                         "it, --overwrite starts again)") from exc
    state = index.meta["state"]
    resumed = f", {report.skipped_docs} already stored before resuming" if report.skipped_docs else ""
    print(f"built {args.out}: {state['docs']} documents, {state['chunks']} chunks "
          f"({report.docs} documents / {report.chunks} chunks encoded now{resumed})")
    index.close()
    return 0


def open_index(index_dir: str, model_name: str | None) -> Index:
    """Open an index for `m3e index add|update` and `m3e search`: with ``model_name`` loaded as the index's
    model (with the index's prompts, backend and length; it must match), else the model the index records."""
    from m3e.index import Index

    model = None
    if model_name is not None:
        from m3e.index.meta import read_index_meta
        from m3e.loading import load_model

        rec = read_index_meta(index_dir)["model"]
        model = load_model(model_name, backend=rec.get("backend", "torch"),
                           query_prompt=rec["prompts"]["query"], document_prompt=rec["prompts"]["document"],
                           max_length=rec.get("max_length"))
    return Index.open(index_dir, model=model)


def _stored(index_dir: str) -> str:
    """How many documents the index on disk holds (its committed state), for messages after a failure."""
    from m3e.index.meta import read_index_meta

    try:
        state = read_index_meta(index_dir)["state"]
    except M3EError:
        return "nothing stored"
    if state.get("status") == "building":
        return f"{state.get('docs_done', 0)} documents stored"
    return f"{state.get('docs', 0)} documents"


def _kept(exc: BaseException, kept: str) -> M3EError:
    """The error of a failed write, with what the index on disk holds now (read back, so it is true)."""
    if isinstance(exc, M3EError):
        exc.args = (f"{exc}; {kept}",)
        return exc
    assert isinstance(exc, OSError)
    return FaultError(f"{describe_os_error(exc)}; {kept}")


def _add(args: argparse.Namespace, upsert: bool) -> int:
    reader = _reader(args)
    try:
        with open_index(args.index, args.model) as index:
            report = index.add_corpus(reader, upsert=upsert, batch_chunks=args.batch_chunks,
                                      progress=args.progress)
            state = index.meta["state"]
    except (M3EError, OSError) as exc:
        if isinstance(exc, M3EError) and not (Path(args.index) / "index.json").exists():
            raise
        raise _kept(exc, f"nothing was added: {args.index} holds {_stored(args.index)}") from exc
    replaced = f", {report.replaced_docs} replaced" if upsert else ""
    print(f"added {report.docs} documents ({report.chunks} chunks{replaced}); "
          f"{args.index} now holds {state['docs']} documents, {state['chunks']} chunks")
    return 0


def _delete(args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.ids_file:
        from m3e.textio import RecordReader

        ids += [r.text.strip() for r in RecordReader(args.ids_file, fmt="txt", blank="skip", max_chars=None)]
    if not ids:
        raise M3EError("give the documents to delete with --id ID or --ids-file FILE")
    from m3e.index import Index

    try:
        with Index.open(args.index) as index:
            removed, missing = index.delete(ids, missing_ok=args.missing_ok)
            state = index.meta["state"]
    except (M3EError, OSError) as exc:
        if isinstance(exc, M3EError) and not (Path(args.index) / "index.json").exists():
            raise
        raise _kept(exc, f"{args.index} holds {_stored(args.index)}") from exc
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"not in the index ({len(missing)}): {shown}", file=sys.stderr)
    print(f"deleted {len(ids) - len(missing)} documents ({removed} chunks); "
          f"{args.index} now holds {state['docs']} documents, {state['chunks']} chunks")
    return 0


def _info(args: argparse.Namespace) -> int:
    from m3e.index.meta import read_index_meta

    meta = read_index_meta(args.index)
    if args.json:
        print(json.dumps(meta, ensure_ascii=False, indent=2, sort_keys=True))
        return 0
    print("\n".join(_info_lines(args.index, meta)))
    return 0


def _info_lines(index_dir: str, meta: dict[str, Any]) -> list[str]:
    """`m3e index info` as text: state, counts, engine, the model that built the index."""
    model, state, engine, ch = meta["model"], meta["state"], meta["engine"], meta["chunking"]
    if engine["name"] == "lancedb":
        where = engine.get("path", "")
    else:
        where = f"{engine.get('url')} / {engine.get('collection') or engine.get('table')}"
    resume = ""
    if state["status"] == "building":
        resume = f" ({state.get('docs_done', 0)} documents stored; `m3e index build --resume` continues it)"
    sparse = meta.get("sparse")
    words = "none (dense search only)"
    if sparse:
        stops = ", stop words dropped" if sparse.get("stop_words") else ""
        words = f"{sparse['kind']} (k1 {sparse['k1']}, b {sparse['b']}; {sparse['segmenter']} words{stops})"
    return [
        f"index     {index_dir}",
        f"status    {state['status']}{resume}",
        f"documents {state['docs']}",
        f"chunks    {state['chunks']} ({ch['size']} {ch['unit']}, overlap {ch['overlap']})",
        f"engine    {engine['name']} {where}",
        f"sparse    {words}",
        f"model     {model['name']} ({model.get('source')})",
        f"          dim {model['dim']}, pooling {model['pooling']}, max length {model['max_length']}, "
        f"backend {model['backend']}, weights {model['fingerprint']}",
        f"prompts   query {model['prompts']['query']!r}, document {model['prompts']['document']!r}",
        f"updated   {meta.get('updated')}",
    ]


def run(args: argparse.Namespace) -> int:
    action = args.index_command
    if action == "build":
        return _build(args)
    if action == "add":
        return _add(args, upsert=args.upsert)
    if action == "update":
        return _add(args, upsert=True)
    if action == "delete":
        return _delete(args)
    return _info(args)
