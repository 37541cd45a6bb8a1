"""Vector math the torch and the compiled model share."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def cosine_matrix(a: ArrayLike, b: ArrayLike) -> NDArray[np.float32]:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (a single vector counts as one row)."""
    va, vb = (np.atleast_2d(np.asarray(x, dtype=np.float32)) for x in (a, b))
    va = va / np.maximum(np.linalg.norm(va, axis=1, keepdims=True), 1e-12)
    vb = vb / np.maximum(np.linalg.norm(vb, axis=1, keepdims=True), 1e-12)
    return np.asarray(va @ vb.T, dtype=np.float32)
