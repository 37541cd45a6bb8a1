"""Adapters that let other frameworks use m3e models: LangChain (``langchain``), LlamaIndex (``llama_index``),
Chroma (``chroma``, and ``chroma_autoload``: Chroma finds the function by name without an m3e import).

The sentence-transformers path needs no adapter: ``EmbeddingModel.save(path)`` writes a
sentence-transformers directory that ``SentenceTransformer(path)`` loads as it is.
Each adapter imports its framework lazily, so ``import m3e`` never needs them.
"""
