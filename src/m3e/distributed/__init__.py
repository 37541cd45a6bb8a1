"""Scale-out on a Ray cluster: encode sharded corpora with Ray Data, and build an index from what the
cluster wrote.

* :func:`encode_dataset` - a Ray Dataset in, the same Dataset with vectors out (an actor pool of m3e models).
* :func:`encode_shards` - ``m3e encode --ray``: input files -> one parquet part each, resumable by shard,
  exactly one output row per input row even when a worker dies.
* :func:`build_index_ray` - ``m3e index build --ray``: the corpus chunked and encoded on the cluster, then
  loaded into an index (LanceDB with its ANN index, or any engine).

Ray is an optional dependency (``pip install 'm3e[ray]'``); every node runs the same m3e and reaches the
model and the files by the same paths (a shared filesystem). docs/scaling.md has the numbers.
"""

from m3e.distributed.encoding import EncodeReport, EncodeSpec, encode_dataset, encode_shards
from m3e.distributed.index_build import build_index_ray

__all__ = ["EncodeReport", "EncodeSpec", "build_index_ray", "encode_dataset", "encode_shards"]
