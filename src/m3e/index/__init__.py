"""Search over a corpus: chunk, embed with an m3e model and keep each chunk's words, store, query by meaning,
by words or both (hybrid), per chunk or per document.

The store is an existing engine behind one interface (:mod:`m3e.index.store`): LanceDB
embedded in the index directory by default, a PostgreSQL table with pgvector, or a Qdrant server/cluster, by URL.
"""

from m3e.index.chunking import Chunk, chunk_document
from m3e.index.corpus import CorpusReader, Document
from m3e.index.index import MODES, Index, WriteReport, build_index
from m3e.index.results import DocumentHit
from m3e.index.store import Hit

__all__ = [
    "MODES", "Chunk", "CorpusReader", "Document", "DocumentHit", "Hit", "Index", "WriteReport", "build_index",
    "chunk_document",
]
