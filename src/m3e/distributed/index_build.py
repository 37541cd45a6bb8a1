"""``m3e index build --ray``: chunk, segment and encode the corpus on a Ray cluster, then build the index from
the parts the cluster wrote.

The cluster does the expensive part (the model) shard by shard, resumable as :func:`encode_shards` is; the
parts (chunk rows with their words and vectors, in ``<index>.parts`` by default) are kept, so an index can
be rebuilt from them, with another engine too, without encoding again. The load streams them into the store
in batches (a new index: an interrupted load starts the index again from the parts) and finishes the
build as a local one: LanceDB's ANN index chosen by size, pgvector's HNSW.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3e.distributed.encoding import EncodeReport, EncodeSpec, ProgressFn, encode_shards, print_progress
from m3e.distributed.shards import list_shards, part_name
from m3e.errors import InputError, M3EError
from m3e.index.index import DEFAULT_BATCH_CHUNKS, Index, WriteReport
from m3e.index.meta import META_NAME, read_index_meta
from m3e.index.store import Row

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel


def parts_dir_for(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def read_parts(parts: Sequence[Path], batch_chunks: int) -> Iterator[tuple[list[Row], np.ndarray]]:
    """The chunk rows of ``parts`` with their vectors, ``batch_chunks`` at a time; a document id seen in two
    shards is an error naming both."""
    import pyarrow.parquet as pq

    seen: dict[str, str] = {}
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_chunks):
            cols = batch.to_pydict()
            vectors = np.asarray(batch.column("embedding").flatten().to_numpy(zero_copy_only=False),
                                 dtype=np.float32).reshape(batch.num_rows, -1)
            rows = []
            for i in range(batch.num_rows):
                doc_id = cols["doc_id"][i]
                if cols["chunk"][i] == 0:
                    if doc_id in seen:
                        raise InputError(f"duplicate document id {doc_id!r} (also in {seen[doc_id]})",
                                         path=str(part), line=cols["line"][i])
                    seen[doc_id] = part.name
                rows.append(Row(cols["chunk_id"][i], doc_id, int(cols["chunk"][i]), int(cols["start"][i]),
                                int(cols["end"][i]), cols["text"][i], json.loads(cols["metadata"][i]),
                                terms=list(cols["terms"][i])))
            yield rows, vectors


def build_index_ray(
    corpus: str | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    model: EmbeddingModel,
    *,
    model_source: str | None,
    address: str | None = None,
    actors: int | None = None,
    threads: int = 1,
    parts_dir: str | os.PathLike[str] | None = None,
    id_field: str = "id",
    text_field: str = "text",
    metadata_fields: Sequence[str] | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    overwrite: bool = False,
    progress: bool | None = None,
    shard_progress: ProgressFn | None = print_progress,
    **create_kw: Any,
) -> tuple[Index, EncodeReport, WriteReport]:
    """Build the index ``out`` from ``corpus`` (a glob or a list of files) with ``model`` running on the Ray
    cluster at ``address`` (each actor loads ``model_source``, which every node must reach). ``create_kw`` are
    :meth:`Index.create`'s options (engine, url, chunking, sparse, ann)."""
    out = Path(out)
    if (out / META_NAME).exists() and not overwrite:
        if read_index_meta(out)["state"]["status"] != "building":
            raise M3EError(f"{out} already holds a built index; use `m3e index add` or --overwrite")
        overwrite = True  # an interrupted load: the parts are kept, the index is loaded again from them
    shards = list_shards(corpus) if isinstance(corpus, str) else [Path(p).resolve() for p in corpus]
    index = Index.create(out, model, model_source=model_source, overwrite=overwrite, **create_kw)
    try:
        spec = EncodeSpec(
            model=model_source, backend=model.backend, threads=threads, max_length=int(model.max_length),
            pooling=model.pooling, query_prompt=model.query_prompt, document_prompt=model.document_prompt,
            id_field=id_field, text_field=text_field,
            metadata_fields=tuple(metadata_fields) if metadata_fields is not None else None, fmt=fmt,
            encoding=encoding,
            chunking=dict(index.meta["chunking"]), sparse=index.meta.get("sparse"),
        )
        where = Path(parts_dir) if parts_dir is not None else parts_dir_for(out)
        encoded = encode_shards([str(s) for s in shards], where, spec, address=address, actors=actors,
                                progress=shard_progress)
        parts = [where / part_name(s) for s in shards]
        loaded = index.build_from_encoded(read_parts(parts, batch_chunks), progress=progress)
    except BaseException:
        index.close()
        raise
    return index, encoded, loaded
