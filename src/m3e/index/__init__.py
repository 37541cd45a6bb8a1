"""Semantic search over a corpus: chunk, embed with an m3e model, store, query.

The store is an existing engine behind one interface (:mod:`m3e.index.store`): LanceDB
embedded in the index directory by default, or a Qdrant server/cluster by URL.
"""

from m3e.index.chunking import Chunk, chunk_document
from m3e.index.corpus import CorpusReader, Document
from m3e.index.index import Index, WriteReport, build_index
from m3e.index.store import Hit

__all__ = [
    "Chunk", "CorpusReader", "Document", "Hit", "Index", "WriteReport", "build_index", "chunk_document",
]
