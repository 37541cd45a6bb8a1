"""A teacher's scores of every (query, candidate) of the triplet data, computed once and cached beside the data.

The teacher is a reranker (its raw logit per pair) or an embedding model (the cosine of the query's and the
candidate's vectors, each with its prompt). Scores are cached next to the data file as
``<file>.teacher-<key>.npz``, the key a hash of the teacher's identity (directory, weights' sizes and times) and
of the file's bytes: a changed file or another teacher is scored again, a resumed run reads the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from m3e.atomic import sha256_file, write_atomic
from m3e.loading import is_reranker_dir
from m3e.training.rerank.groups import RerankDataset

Scorer = Callable[[Sequence[str], Sequence[str]], NDArray[np.float32]]  # queries, candidates -> one score each
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


@dataclass(frozen=True)
class Teacher:
    name: str  # as the run names it
    model_dir: Path
    kind: str  # "reranker" | "embedder"
    key: str  # its identity in cache names and checkpoint fingerprints

    @classmethod
    def resolve(cls, name_or_path: str) -> Teacher:
        """The teacher ``name_or_path`` names (``default``: the default embedding model)."""
        from m3e.loading import resolve_model_dir
        from m3e.paths import default_model_path

        where = str(default_model_path()) if name_or_path == "default" else name_or_path
        model_dir, _hub_id = resolve_model_dir(where)
        kind = "reranker" if is_reranker_dir(model_dir) else "embedder"
        weights = sorted(
            (str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in model_dir.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
        )
        identity = json.dumps({"dir": str(model_dir), "kind": kind, "weights": weights})
        return cls(name_or_path, model_dir, kind, hashlib.sha256(identity.encode()).hexdigest()[:16])

    def scorer(self, device: str | None) -> Scorer:
        """Loads the model and returns its scoring function."""
        if self.kind == "reranker":
            from m3e.loading import load_reranker

            reranker = load_reranker(str(self.model_dir), device=device)

            def logits(queries: Sequence[str], docs: Sequence[str]) -> NDArray[np.float32]:
                pairs = list(zip(queries, docs, strict=True))
                return np.asarray(reranker.predict(pairs, batch_size=64, activation="identity"), dtype=np.float32)

            return logits
        from m3e.loading import load_model

        embedder = load_model(str(self.model_dir), device=device)

        def cosines(queries: Sequence[str], docs: Sequence[str]) -> NDArray[np.float32]:
            q_texts, d_texts = sorted(set(queries)), sorted(set(docs))
            q = dict(zip(q_texts, embedder.encode_queries(q_texts, normalize=True), strict=True))
            d = dict(zip(d_texts, embedder.encode_documents(d_texts, normalize=True), strict=True))
            return np.array([float(np.dot(q[a], d[b])) for a, b in zip(queries, docs, strict=True)], dtype=np.float32)

        return cosines


def attach_teacher_scores(
    datasets: Sequence[RerankDataset], teacher: Teacher, *, device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Give every triplet dataset its teacher scores (``ds.teacher``), from the cache where it has them."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    scorer: Scorer | None = None
    for ds in datasets:
        if ds.type != "triplet":
            continue
        cache = cache_path(ds, teacher)
        cached = _read_cache(cache, ds) if cache is not None else None
        if cached is not None:
            ds.teacher = cached
            continue
        if scorer is None:
            say(f"scoring the training groups with the teacher {teacher.name} ({teacher.kind})")
            scorer = teacher.scorer(device)
        ds.teacher = _score(ds, scorer)
        if cache is not None:
            _write_cache(cache, ds.teacher, say)


def cache_path(ds: RerankDataset, teacher: Teacher) -> Path | None:
    """Where ``ds``'s scores by ``teacher`` are kept: beside its file (None for data that is not a file)."""
    source = Path(ds.source)
    if not source.is_file():
        return None
    key = hashlib.sha256(f"{teacher.key}:{sha256_file(source)}".encode()).hexdigest()[:16]
    return source.with_name(f"{source.name}.teacher-{key}.npz")


def _score(ds: RerankDataset, scorer: Scorer) -> list[NDArray[np.float32]]:
    queries = [r.text for r in ds.records for _ in (*r.pos, *r.neg)]
    docs = [d for r in ds.records for d in (*r.pos, *r.neg)]
    flat = scorer(queries, docs)
    return _split(flat, [len(r.pos) + len(r.neg) for r in ds.records])


def _split(flat: NDArray[np.float32], sizes: list[int]) -> list[NDArray[np.float32]]:
    offsets = np.cumsum([0, *sizes])
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]


def _read_cache(path: Path, ds: RerankDataset) -> list[NDArray[np.float32]] | None:
    if not path.is_file():
        return None
    sizes = [len(r.pos) + len(r.neg) for r in ds.records]
    try:
        with np.load(path) as saved:
            flat, stored = saved["scores"].astype(np.float32), saved["sizes"].tolist()
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache is scored again
    return _split(flat, sizes) if stored == sizes else None


def _write_cache(path: Path, scores: list[NDArray[np.float32]], say: Callable[[str], None]) -> None:
    buf = io.BytesIO()
    sizes: NDArray[np.int64] = np.array([len(s) for s in scores], dtype=np.int64)
    np.savez(buf, scores=np.concatenate(scores).astype(np.float32), sizes=sizes)
    try:
        write_atomic(path, buf.getvalue())
    except OSError as exc:  # read-only data: the run goes on, the next one scores again
        say(f"teacher scores not cached ({path}: {exc.strerror})")
