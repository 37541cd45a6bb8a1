"""Embedding quantization: int8 / uint8 (per-dimension ranges, 256 buckets) and binary / ubinary (sign bits,
packed), with the same values as ``sentence_transformers.quantize_embeddings`` — here so that ``encode(...,
precision=...)`` works without importing sentence-transformers (seconds of start-up) on the core path."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from m3e.errors import M3EError

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def quantize_embeddings(
    embeddings: NDArray[np.floating[Any]], precision: str, ranges: NDArray[np.floating[Any]] | None = None
) -> NDArray[Any]:
    """``embeddings`` [n, dim] (float) to ``precision``. int8 / uint8 use ``ranges`` ([2, dim]: min and max per
    dimension), or the embeddings' own when None (then at least two rows are needed)."""
    if precision not in PRECISIONS:
        raise M3EError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    x = np.asarray(embeddings, dtype=np.float32)
    if precision == "float32":
        return x
    if precision in ("binary", "ubinary"):
        packed: NDArray[np.uint8] = np.packbits(x > 0, axis=-1)
        return (packed - 128).astype(np.int8) if precision == "binary" else packed
    if ranges is None:
        if x.ndim == 1 or x.shape[0] < 2:
            raise M3EError(f"{precision} quantization needs ranges from at least two embeddings (pass ranges=)")
        ranges = np.vstack((x.min(axis=0), x.max(axis=0)))
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets: NDArray[np.float32] = np.clip(np.floor((x - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
