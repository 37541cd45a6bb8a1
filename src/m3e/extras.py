"""Optional dependencies: one way to import them, one message when one is missing.

``import m3e`` needs only torch, transformers and tokenizers. Everything else belongs to an extra of the
package (``pip install 'm3e[serve]'``) and is imported through :func:`require` at the point of use, so a
missing one is reported the same way everywhere: what needed it, which package, and the command that
installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from m3e.errors import M3EError


class MissingDependencyError(M3EError, ImportError):
    """An optional dependency is not installed; the message says how to install it."""


def install_hint(extra: str | None, package: str) -> str:
    return f"pip install 'm3e[{extra}]'" if extra else f"pip install {package}"


def require(module: str, *, purpose: str, extra: str | None, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError`:
    ``<purpose> needs <package> (not installed): pip install 'm3e[<extra>]'``.

    ``package`` is the name to install when it differs from the module (``faiss-cpu`` for ``faiss``);
    ``extra`` None means a package outside m3e's extras (the hint then names the package itself).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(purpose, package or module.split(".")[0], extra, exc, module=module) from exc


def missing(
    purpose: str,
    package: str,
    extra: str | None,
    exc: BaseException | None = None,
    *,
    module: str | None = None,
) -> MissingDependencyError:
    """The error :func:`require` raises, for code that imports the module itself (e.g. several at once).

    It names the package to install, or, when what failed to import is another module (a dependency of that
    package missing or broken), that module.
    """
    failed = getattr(exc, "name", None)
    top = (module or package).split(".")[0]
    name = package if not failed or failed.split(".")[0] in (top, package) else failed
    return MissingDependencyError(f"{purpose} needs {name} (not installed): {install_hint(extra, package)}")
