"""Where m3e keeps things on disk: the cache root and the default model.

The cache root is ``$M3E_HOME`` or ``~/.cache/m3e`` (downloads, built data, compiled backend artefacts).
The default model is ``$M3E_DEFAULT_MODEL`` when set, else the model bundled inside the package
(``m3e/default_model/``): m3e's own bilingual student of multilingual-e5-small. The default reranker is
``$M3E_DEFAULT_RERANKER`` or ``m3e/default_reranker/`` when the package bundles one.
"""

from __future__ import annotations

import os
from pathlib import Path

from m3e.errors import ModelNotFoundError

BUNDLED_MODEL_DIR = Path(__file__).parent / "default_model"
BUNDLED_RERANKER_DIR = Path(__file__).parent / "default_reranker"


def cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``root`` if given, else ``$M3E_HOME``, else ``~/.cache/m3e``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("M3E_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "m3e"


def bundled_model_path() -> Path | None:
    return BUNDLED_MODEL_DIR if (BUNDLED_MODEL_DIR / "modules.json").exists() else None


def default_model_path() -> Path:
    env = os.environ.get("M3E_DEFAULT_MODEL")
    if env:
        return Path(env).expanduser()
    bundled = bundled_model_path()
    if bundled is not None:
        return bundled
    raise ModelNotFoundError(
        f"no default model: {BUNDLED_MODEL_DIR} is missing from this installation. Reinstall m3e, set "
        "$M3E_DEFAULT_MODEL, or name a model (a local directory or a hub id)."
    )


def default_reranker_path() -> Path:
    """``$M3E_DEFAULT_RERANKER`` when set, else the reranker bundled inside the package (when this installation
    has one)."""
    env = os.environ.get("M3E_DEFAULT_RERANKER")
    if env:
        return Path(env).expanduser()
    if (BUNDLED_RERANKER_DIR / "config.json").exists():
        return BUNDLED_RERANKER_DIR
    raise ModelNotFoundError(
        "no default reranker in this installation: name one (a CrossEncoder directory or a hub id such as "
        "BAAI/bge-reranker-base), set $M3E_DEFAULT_RERANKER, or build m3e's own with `make default-reranker`"
    )
