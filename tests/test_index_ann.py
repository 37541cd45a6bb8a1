"""The embedded store's ANN indexes: which one a table of a given size gets, and each one's recall@10 against
exact search on clustered vectors (bench/scale.py measures them on real text at scale)."""

from __future__ import annotations

import numpy as np
import pytest

from m3e.errors import M3EError
from m3e.index.lance_store import ANN_MIN_ROWS, PQ_MIN_ROWS, LanceStore, ann_kind
from m3e.index.store import Row


def test_the_index_is_chosen_by_size():
    assert ann_kind("auto", ANN_MIN_ROWS - 1) == "none"  # exact search is fast enough
    assert ann_kind("auto", ANN_MIN_ROWS) == "hnsw-sq"
    assert ann_kind("auto", PQ_MIN_ROWS) == "ivf-pq"  # memory: PQ codes instead of a byte per dimension
    assert ann_kind("ivf", 10) == "ivf" and ann_kind("none", 10**9) == "none"
    with pytest.raises(M3EError, match="unknown ANN index 'hnsw'"):
        ann_kind("hnsw", 10)


@pytest.mark.parametrize(("ann", "settings", "want"), [
    ("ivf", {"nprobes": 16}, 0.9), ("hnsw-sq", {"ef": 100}, 0.9), ("ivf-pq", {"nprobes": 16, "refine_factor": 10}, 0.9),
])
def test_each_index_keeps_its_recall_against_exact_search(tmp_path, ann, settings, want):
    rng = np.random.default_rng(0)
    n, dim = 4000, 32
    centres = rng.normal(size=(40, dim))
    vectors = (centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [Row(f"v{i}#0", f"v{i}", 0, 0, 1, "x") for i in range(n)]
    store = LanceStore(tmp_path, {"name": "lancedb", "path": "lance", "ann": ann, "sparse": False, **settings},
                       dim=dim, create=True)
    store.begin({})
    store.add(rows, vectors)
    store.commit()
    store.finish_build()
    indexes = [i.index_type for i in store.table.list_indices()]
    assert indexes == [{"ivf": "IvfFlat", "hnsw-sq": "IvfHnswSq", "ivf-pq": "IvfPq"}[ann]]
    queries = vectors[rng.choice(n, 50, replace=False)] + 0.1 * rng.normal(size=(50, dim)).astype(np.float32)
    recalls = []
    for q in queries:
        exact = set(np.argsort(-(vectors @ q))[:10].tolist())
        recalls.append(len(exact & {int(h.doc_id[1:]) for h in store.search(q, 10)}) / 10)
    assert np.mean(recalls) >= want, np.mean(recalls)
    store.close()
