"""Old names kept working for a while: a module-level ``__getattr__`` that serves them with a warning."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any


def renamed_attributes(module: str, renames: Mapping[str, str], namespace: Mapping[str, Any]) -> Callable[[str], Any]:
    """``__getattr__ = renamed_attributes(__name__, {"old": "new"}, globals())``: reading ``module.old`` warns
    (DeprecationWarning, naming the new name) and returns ``module.new``."""

    def __getattr__(name: str) -> Any:
        if name in renames:
            new = renames[name]
            warnings.warn(f"{module}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
            return namespace[new]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
