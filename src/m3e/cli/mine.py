"""`m3e mine MODEL DATA --output FILE`: hard negatives for pairs, from a faiss index and a rank window.

The data and the corpus are streamed (read again on each pass of m3e.training.mining, never held), and the
output is written row by row to a temporary file that replaces ``--output`` only when it is complete."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from m3e.errors import InputError, M3EError
from m3e.textio import MAX_RECORD_CHARS

if TYPE_CHECKING:
    from m3e.training.records import Record


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
    parser.add_argument("--encoding", default="utf-8",
                        help="text encoding of the data and corpus files (default: utf-8; e.g. gb18030)")
    parser.add_argument("--max-chars", type=int, default=MAX_RECORD_CHARS,
                        help="characters of a corpus text, and of a passage held for encoding or for the output, "
                             f"kept (default {MAX_RECORD_CHARS}); the rest of a longer one is dropped")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None)
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="progress bars with ETA while encoding (default: when stderr is a terminal and there "
                            "are 2048 texts or more)")
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    shown.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary line")


def _corpus_files(paths: list[str]) -> list[Path]:
    from m3e.data.paths import resolve

    files = []
    for p in paths:
        path = resolve(p)
        if not path.is_file():
            raise M3EError(f"--corpus {p}: no such file")
        files.append(path)
    return files


def _data_files(paths: list[str]) -> list[Path]:
    from m3e.data.paths import resolve
    from m3e.training.records import training_files

    return [f for p in paths for f in training_files(resolve(p))]


def run(args: argparse.Namespace) -> int:
    from m3e.atomic import atomic_output
    from m3e.cli._common import write_fault
    from m3e.loading import load_model
    from m3e.textio import RecordReader, check_encoding
    from m3e.training.mining import jsonl_writer, mine_streamed, parse_window
    from m3e.training.records import stream_file

    window = parse_window(args.rank_window)
    if args.negatives < 1:
        raise M3EError("--negatives must be >= 1")
    if args.max_chars < 1:
        raise M3EError("--max-chars must be >= 1")
    encoding = check_encoding(args.encoding)
    files = _data_files(args.data)
    corpus_files = _corpus_files(args.corpus)

    def records() -> Iterator[Record]:
        for path in files:
            for kind, _line, record in stream_file(path, encoding=encoding):
                if kind not in ("pair", "triplet"):
                    raise M3EError(f"mining needs pairs or triplets; {path.stem} are {kind} records")
                yield record

    def corpus() -> Iterator[str]:
        for path in corpus_files:
            for record in RecordReader(path, encoding=encoding, max_chars=args.max_chars, blank="skip"):
                yield record.text

    for _ in records():  # the data's errors come before the model is loaded
        pass
    model = load_model(None if args.model in ("default", "-") else args.model, device=args.device)
    output = Path(args.output).expanduser()
    existed = output.exists()
    try:
        with atomic_output(output) as tmp, tmp.open("w", encoding="utf-8") as stream:
            stats = mine_streamed(
                model, records, corpus, jsonl_writer(stream), window=window, num_negatives=args.negatives,
                seed=args.seed, batch_size=args.batch_size, random_fill=args.random_fill,
                show_progress=False if args.quiet else args.progress, max_chars=args.max_chars,
            )
    except (InputError, M3EError) as exc:
        exc.args = (f"{exc}; nothing written to {output}",)
        raise
    except OSError as exc:
        raise write_fault(exc, output, existed) from exc
    if args.quiet:
        return 0
    cut = f"; {stats.cut} negatives longer than {args.max_chars} characters written up to there" if stats.cut else ""
    print(
        f"{stats.queries} queries, {stats.corpus} passages: {stats.negatives} negatives "
        f"({stats.mined} queries from the window {window[0]}-{window[1]}, "
        f"{stats.random_fill} topped up at random) -> {output}{cut}",
        file=sys.stderr,
    )
    return 0
