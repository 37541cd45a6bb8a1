"""Adapters that let other frameworks use m3e models: LangChain, Chroma.

The sentence-transformers path needs no adapter: ``EmbeddingModel.save(path)`` writes a
sentence-transformers directory that ``SentenceTransformer(path)`` loads as it is.
Each adapter imports its framework lazily, so ``import m3e`` never needs them.
"""
