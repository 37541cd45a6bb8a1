"""`m3e mine MODEL DATA --output FILE`: hard negatives for pairs, from a faiss index and a rank window."""

from __future__ import annotations

import argparse
import sys

from m3e.errors import M3EError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model",
                        help="model that ranks the passages: a directory or hub id ('default' = m3e's default)")
    parser.add_argument("data", nargs="+",
                        help="pair / triplet files or directories (.jsonl/.csv/.parquet; "
                             "data:train/... = built by `m3e data build`)")
    parser.add_argument("-o", "--output", required=True, help="output .jsonl with {query, pos, neg} records")
    parser.add_argument("--corpus", action="append", default=[],
                        help="extra passages to draw negatives from: .txt (one per line) or .jsonl with a "
                             "'text' field (data:distill/... = a pool built by `m3e data build`)")
    parser.add_argument("--rank-window", default="2-200",
                        help="sample negatives from hit ranks LO..HI-1, counting the top hit as 0 "
                             "(default 2-200)")
    parser.add_argument("--negatives", type=int, default=7, help="negatives per query (default 7)")
    parser.add_argument("--no-random-fill", dest="random_fill", action="store_false",
                        help="do not top up with random passages when the window has too few")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None)
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="progress bars with ETA while encoding (default: when stderr is a terminal and there "
                            "are 2048 texts or more)")
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    shown.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary line")


def _corpus(paths: list[str]) -> list[str]:
    from m3e.data.paths import resolve
    from m3e.textio import read_texts

    out: list[str] = []
    for p in paths:
        path = resolve(p)
        if not path.is_file():
            raise M3EError(f"--corpus {p}: no such file")
        out.extend(read_texts(str(path)))
    return out


def run(args: argparse.Namespace) -> int:
    from m3e.data.paths import resolve
    from m3e.loading import load_model
    from m3e.training.mining import mine_hard_negatives, parse_window, write_jsonl
    from m3e.training.records import load_datasets

    window = parse_window(args.rank_window)
    if args.negatives < 1:
        raise M3EError("--negatives must be >= 1")
    datasets = load_datasets([str(resolve(d)) for d in args.data])
    bad = [d.name for d in datasets if d.type not in ("pair", "triplet")]
    if bad:
        raise M3EError(f"mining needs pairs or triplets; {', '.join(bad)} are not")
    records = [r for d in datasets for r in d.records]
    model = load_model(None if args.model in ("default", "-") else args.model, device=args.device)
    rows, stats = mine_hard_negatives(
        model, records, corpus=_corpus(args.corpus), window=window, num_negatives=args.negatives,
        seed=args.seed, batch_size=args.batch_size, random_fill=args.random_fill,
        show_progress=False if args.quiet else args.progress,
    )
    out = write_jsonl(rows, args.output)
    if args.quiet:
        return 0
    print(
        f"{stats.queries} queries, {stats.corpus} passages: {stats.negatives} negatives "
        f"({stats.mined} queries from the window {window[0]}-{window[1]}, "
        f"{stats.random_fill} topped up at random) -> {out}",
        file=sys.stderr,
    )
    return 0
