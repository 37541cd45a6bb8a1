"""Chroma finds m3e's embedding function by name in a process that never imported m3e.

A persistent Chroma collection stores its embedding function as a name and a config
(``{"name": "m3e", "config": {"model": ...}}``) and, when the collection is opened again, looks the name up
in ``chromadb.utils.embedding_functions.known_embedding_functions``: a plain dict that only
``register_embedding_function`` fills. chromadb (1.5) has no plugin discovery (no entry points), so without
help a fresh process that opens the collection fails with "Embedding function m3e not found" unless it
imported m3e first.

The help: m3e installs ``m3e-chroma.pth`` into site-packages (setup.py), whose one line runs :func:`install`
at interpreter start-up. That adds an import hook and nothing else (no m3e import, no chromadb import: a
few microseconds). The hook waits for ``chromadb.utils.embedding_functions`` to be imported, then imports
:mod:`m3e.integrations.chroma`, which registers :class:`~m3e.integrations.chroma.M3EEmbeddingFunction` under
its name, and removes itself. The model itself loads only when Chroma builds the function from the config.

This file is run by path from the ``.pth`` line (so that start-up does not import the m3e package and its
settings); it imports nothing from m3e at module level.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (re, enum) into every process
if TYPE_CHECKING:  # names for the annotations only
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

TARGET = "chromadb.utils.embedding_functions"  # the module that holds Chroma's registry

# What the .pth file holds: one line, run by site.py at start-up (lines that start with "import" are executed).
# It finds this file on sys.path itself and runs it with compile + exec: importlib.util or runpy would import
# more modules into every Python process than the whole hook costs.
PTH_LINE = (
    "import os, sys; p = next((c for c in (os.path.join(d, 'm3e', 'integrations', 'chroma_autoload.py') "
    "for d in sys.path if d) if os.path.isfile(c)), None); g = {'__name__': 'm3e_chroma_autoload'}; "
    "p and exec(compile(open(p, encoding='utf-8').read(), p, 'exec'), g) is None and g['install']()\n"
)


class RegisterAfterChroma:  # a meta path finder by its find_spec (importlib.abc would cost start-up time)
    """Finds nothing itself: it lets the other finders find Chroma's registry module, and has that module's
    loader register m3e right after executing it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = _spec_from_the_others(self, fullname, path, target)
        loader = spec.loader if spec is not None else None
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            uninstall()
            register()

        loader.exec_module = exec_module  # type: ignore[method-assign]  # this module's loader only
        return spec


def _spec_from_the_others(
    me: RegisterAfterChroma, fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    for finder in list(sys.meta_path):
        if finder is me or not hasattr(finder, "find_spec"):
            continue
        spec: ModuleSpec | None = finder.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def register() -> None:
    """Register m3e's embedding function with Chroma (importing m3e's adapter registers it); a failure must
    not break the user's chromadb import."""
    try:
        import m3e.integrations.chroma  # noqa: F401
    except Exception:  # m3e broken or partly installed: Chroma then says the name is unknown, as before
        return


def install() -> None:
    """Register at once when Chroma's registry is already imported, else when it is."""
    if TARGET in sys.modules:
        register()
    elif not any(_is_hook(f) for f in sys.meta_path):
        sys.meta_path.insert(0, RegisterAfterChroma())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_hook(f)]


def _is_hook(finder: object) -> bool:
    # By name: each run of this file by path (site-packages can be on sys.path twice, lib and lib64) makes
    # its own class.
    return type(finder).__name__ == RegisterAfterChroma.__name__
