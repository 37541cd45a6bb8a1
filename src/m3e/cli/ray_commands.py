"""``--ray [ADDRESS]`` of `m3e encode` and `m3e index build`: the same commands on a Ray cluster
(m3e.distributed). Input: a glob of files (each one a shard); `m3e encode` writes one parquet part per shard
into the output directory, `m3e index build` encodes on the cluster and builds the index from the parts.

    m3e encode -i 'corpus/*.parquet' --ray 10.0.0.1:6379 -o vectors/       # re-run: only missing shards
    m3e index build 'corpus/*.jsonl' --ray --model M --out INDEX            # parts kept in INDEX.parts
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m3e.errors import M3EError


def add_ray_options(parser: argparse.ArgumentParser, *, index: bool = False) -> None:
    group = parser.add_argument_group("Ray cluster (pip install 'm3e[ray]')")
    group.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run on the Ray cluster at ADDRESS (host:port; without it: $RAY_ADDRESS, the cluster "
                            "started on this machine, or a new local one); the input is a glob of files")
    group.add_argument("--actors", type=int, default=None,
                       help="model actors (default: the cluster's CPUs / --actor-threads)")
    group.add_argument("--actor-threads", type=int, default=1, help="torch threads per actor (default: 1)")
    if index:
        group.add_argument("--parts", default=None,
                           help="where the cluster writes the encoded chunks (default: INDEX.parts)")
    else:
        group.add_argument("--overwrite", action="store_true",
                           help="replace parts written with other settings in the output directory")


def _check_counts(args: argparse.Namespace) -> None:
    if args.actors is not None and args.actors < 1:
        raise M3EError("--actors must be >= 1")
    if args.actor_threads < 1:
        raise M3EError("--actor-threads must be >= 1")


def run_encode_ray(args: argparse.Namespace) -> int:
    from m3e.cli._common import model_source
    from m3e.distributed import EncodeSpec, encode_shards
    from m3e.distributed.encoding import print_progress

    _check_counts(args)
    if args.texts or not args.input or args.input == "-":
        raise M3EError("--ray reads files: give them with -i 'DIR/*.jsonl' (a glob, a directory or a file)")
    if not args.output or Path(args.output).suffix.lower() in (".npy", ".jsonl", ".parquet"):
        raise M3EError("--ray writes one parquet part per input file: give an output directory with -o DIR")
    keep = tuple(f.strip() for f in (args.keep or "").split(",") if f.strip())
    side = "query" if args.query else "document" if args.document else None
    spec = EncodeSpec(
        model=model_source(args.model), backend=args.backend, threads=args.actor_threads, side=side,
        prompt=args.prompt, normalize=not args.no_normalize, batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens, max_length=args.max_length, pooling=args.pooling,
        long_text=args.long_text, id_field=args.id_field or "id", text_field=args.field, metadata_fields=keep,
        fmt=args.format, encoding=args.encoding,
    )
    quiet = getattr(args, "quiet", False) or args.progress is False
    report = encode_shards(args.input, args.output, spec, address=args.ray or None, actors=args.actors,
                           overwrite=args.overwrite, progress=None if quiet else print_progress)
    if not getattr(args, "quiet", False):
        print(f"encoded {report.encoded} shards ({report.rows} rows) in {report.seconds:.1f} s, "
              f"{report.rows_per_s:,.0f} rows/s; {report.skipped} of {report.shards} shards were already done; "
              f"parts in {args.output}", file=sys.stderr)
    return 0


def run_index_build_ray(args: argparse.Namespace) -> int:
    from m3e.cli._common import model_source
    from m3e.distributed import build_index_ray
    from m3e.distributed.encoding import print_progress
    from m3e.loading import load_model

    _check_counts(args)
    model = load_model(args.model, device=args.device, backend=args.backend, max_length=args.max_length,
                       pooling=args.pooling, query_prompt=args.query_prompt, document_prompt=args.document_prompt)
    fields = [f.strip() for f in args.metadata_fields.split(",") if f.strip()] if args.metadata_fields else None
    index, encoded, loaded = build_index_ray(
        args.corpus, args.out, model, model_source=model_source(args.model), address=args.ray or None,
        actors=args.actors, threads=args.actor_threads, parts_dir=args.parts, id_field=args.id_field,
        text_field=args.text_field, metadata_fields=fields, fmt=args.fmt, encoding=args.encoding,
        batch_chunks=args.batch_chunks, overwrite=args.overwrite, progress=args.progress,
        shard_progress=None if args.progress is False else print_progress,
        engine=args.engine, url=args.url, collection=args.collection, chunk_size=args.chunk_size,
        overlap=args.overlap, chunk_unit=args.chunk_unit, sparse=None if args.sparse == "none" else args.sparse,
        ann=args.ann,
    )
    state = index.meta["state"]
    print(f"built {args.out}: {state['docs']} documents, {state['chunks']} chunks ({encoded.encoded} shards "
          f"encoded on the cluster, {encoded.skipped} already done; {loaded.chunks} chunks loaded)")
    index.close()
    return 0
