"""Build the offline benchmark and the training pairs from the fetched sources; write a manifest.

``build`` is deterministic: the same cache gives byte-identical task files, training files and
manifest (no timestamps, sorted keys, sha1-ordered selections). ``ensure_built`` is what the
evaluation side and CI call: it fetches and builds only what a profile lacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from m3e.atomic import write_atomic
from m3e.data import sources
from m3e.data.corpora import Inputs
from m3e.data.distill import POOLS, finish_pool
from m3e.data.paths import data_dir, distill_path, task_path, train_path
from m3e.data.task_builders import (
    BUNDLED_SMOKE,
    CLASS_PER_LABEL,
    SIZES,
    TASKS,
    Task,
    bundled_smoke,
    counts,
    eval_texts,
    smoke,
)
from m3e.data.text import Exclusion
from m3e.data.training import TRAIN, finish
from m3e.errors import M3EError

logger = logging.getLogger(__name__)

BUILDER_VERSION = 3  # 2: bylines, photo credits and dash-led subtitles are no headlines; 3: dev splits
PROFILES = ("full", "smoke", "dev")  # dev: held-out splits for choosing settings, for the tasks that have one
MANIFEST = "manifest.json"


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=None) + "\n").encode("utf-8")


def _write(path: Path, data: bytes) -> str:
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_manifest(data: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((data / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _parameters(caps: dict[str, int]) -> dict[str, Any]:
    from m3e.data import task_builders as t

    return {
        "split": "bucket = int(sha1(salt + NUL + key)) mod 100; buckets 0-49 evaluation test, 50-99 the rest; "
        "salt = task or training-file name; selections follow sha1 order",
        "normalisation": "NFKC, lowercase, whitespace removed, traditional -> simplified (zhconv zh-cn)",
        "exclusion": "a training record is dropped when any of its fields equals (normalised) any text of "
        "any evaluation task, either split, queries or corpus",
        "classification_per_label": CLASS_PER_LABEL,
        "sizes": SIZES,
        "smoke": {"test": t.SMOKE_TEST, "train": t.SMOKE_TRAIN, "queries": t.SMOKE_QUERIES,
                  "docs": t.SMOKE_DOCS, "pairs": t.SMOKE_PAIRS},
        "caps": caps,
    }


def build(
    out: Path | str | None = None,
    root: Path | str | None = None,
    *,
    profiles: Iterable[str] = PROFILES,
    train: bool = True,
    caps: dict[str, int] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build task files for ``profiles`` (and training files when ``train``); return the manifest."""
    profiles = tuple(p for p in PROFILES if p in set(profiles))
    if not profiles and not train:
        raise M3EError("nothing to build: give a profile (full, smoke, dev) or training")
    data = Path(out) if out is not None else data_dir(root)
    caps = {name: (caps or {}).get(name, spec.cap) for name, spec in TRAIN.items()}
    inp = Inputs(root)
    say = log or (lambda _msg: None)
    start = time.perf_counter()

    old = read_manifest(data)
    manifest: dict[str, Any] = (
        old if old and old.get("builder_version") == BUILDER_VERSION
        else {"builder_version": BUILDER_VERSION, "sources": {}, "tasks": {}, "train": {}}
    )
    manifest["parameters"] = _parameters(caps)
    used_sources: set[str] = set()
    bundled: set[str] = set()
    full_tasks: dict[str, Task] = {}
    dev_tasks: dict[str, Task] = {}
    need_full = "full" in profiles or train

    for name, spec in TASKS.items():
        t0 = time.perf_counter()
        built: dict[str, Task] = {}
        if not train and all(name not in _profile_tasks(p) for p in profiles):
            continue  # no profile asked for has this task (a dev-only build, a task without a dev split)
        use_bundle = (
            not need_full and name in BUNDLED_SMOKE and not sources.is_ready(BUNDLED_SMOKE[name], root)
        )
        if use_bundle:
            if "smoke" in profiles:
                built["smoke"] = bundled_smoke(name)
                bundled.add(BUNDLED_SMOKE[name])
        elif need_full or "smoke" in profiles:
            full = spec.build(inp)
            full_tasks[name] = full
            used_sources.update(spec.sources)
            if "full" in profiles:
                built["full"] = full
            if "smoke" in profiles:
                built["smoke"] = smoke(full)
        # Training must avoid dev texts as it avoids test texts, so training builds the dev splits too.
        if spec.dev is not None and ("dev" in profiles or train):
            dev = spec.dev(inp)
            used_sources.update(spec.sources)
            if min(counts(dev).values()) > 0:  # a small source may leave nothing beyond the test
                dev_tasks[name] = dev
                if "dev" in profiles:
                    built["dev"] = dev
            else:
                say(f"  {name:<40} dev    none: the source has no items beyond the test's")
        entry = manifest["tasks"].setdefault(name, {})
        meta = next(iter(built.values())) if built else full_tasks[name]
        entry.update({k: meta[k] for k in ("type", "languages", "main_score", "sources", "license")})
        profiles_entry = entry.setdefault("profiles", {})
        for profile, task in built.items():
            path = task_path(data, name, profile)
            digest = _write(path, _dumps(task))
            profiles_entry[profile] = {
                "file": path.relative_to(data).as_posix(),
                "sha256": digest,
                "counts": counts(task),
                "origin": "bundled smoke set (identical to the one built from the source)"
                if profile == "smoke" and use_bundle else "built from source",
            }
            say(f"  {name:<40} {profile:<6} {_fmt_counts(counts(task))}")
        logger.info("%s built in %.1fs", name, time.perf_counter() - t0)

    if train:
        exclusion = Exclusion()
        for task in full_tasks.values():
            exclusion.add(eval_texts(task))
            exclusion.add(eval_texts(smoke(task)))
        for task in dev_tasks.values():
            exclusion.add(eval_texts(task))
        manifest["exclusion"] = {"texts": len(exclusion)}
        manifest["train"] = {}
        for name, tspec in TRAIN.items():
            t0 = time.perf_counter()
            records, stats = finish(tspec.build(inp), exclusion, caps[name], tspec.triplets)
            used_sources.add(tspec.source)
            payload = b"".join(_dumps(r) for r in records)
            path = train_path(data, name)
            digest = _write(path, payload)
            manifest["train"][name] = {
                "file": path.relative_to(data).as_posix(),
                "sha256": digest,
                "source": tspec.source,
                "license": sources.SOURCES[tspec.source].license,
                "description": tspec.description,
                "records": stats.records,
                "kind": "triplets" if tspec.triplets else "pairs",
                "cap": caps[name],
                "capped": stats.capped,
                "candidates_seen": stats.candidates,
                "dropped_excluded": stats.excluded,
                "dropped_duplicates": stats.duplicates,
                "dropped_no_negative": stats.no_negative,
            }
            say(f"  train/{name:<34} {stats.records:>7} {'triplets' if tspec.triplets else 'pairs':<8} "
                f"(excluded {stats.excluded}, duplicates {stats.duplicates}{', capped' if stats.capped else ''})")
            logger.info("train/%s built in %.1fs", name, time.perf_counter() - t0)
        manifest["distill"] = {}
        for name, pspec in POOLS.items():
            texts, excluded = finish_pool(pspec.build(inp), exclusion, pspec.cap, name)
            used_sources.add(pspec.source)
            path = distill_path(data, name)
            digest = _write(path, b"".join(_dumps({"text": t}) for t in texts))
            manifest["distill"][name] = {
                "file": path.relative_to(data).as_posix(),
                "sha256": digest,
                "source": pspec.source,
                "license": sources.SOURCES[pspec.source].license,
                "description": pspec.description,
                "side": pspec.side,
                "texts": len(texts),
                "cap": pspec.cap,
                "dropped_excluded": excluded,
            }
            say(f"  distill/{name:<32} {len(texts):>7} texts    ({pspec.side} side, excluded {excluded})")

    for sid in sorted(used_sources):
        manifest["sources"][sid] = sources.source_record(sid, root)
    for sid in sorted(bundled - used_sources):
        record = sources.source_record(sid, root)
        record.update({"version": sources.SOURCES[sid].version, "sha256": sources.SOURCES[sid].sha256,
                       "file": sources.SOURCES[sid].filename, "verified": True,
                       "origin": "not fetched: the smoke set bundled with m3e was used"})
        manifest["sources"].setdefault(sid, record)
    manifest["sources"] = dict(sorted(manifest["sources"].items()))
    _write(data / MANIFEST, _dumps_pretty(manifest))
    say(f"built {data} in {time.perf_counter() - start:.1f}s")
    return manifest


def _dumps_pretty(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n").encode("utf-8")


def _fmt_counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items())


# --------------------------------------------------------------------------- ensure_built


def _profile_tasks(profile: str) -> list[str]:
    """The tasks a profile has: every task, or for ``dev`` those with a dev split."""
    return [name for name, spec in TASKS.items() if profile != "dev" or spec.dev is not None]


def sources_for(profile: str, root: Path | str | None = None) -> list[str]:
    """The sources a profile's tasks need. The smoke profile skips sources it ships a sample of."""
    needed = {s for name in _profile_tasks(profile) for s in TASKS[name].sources}
    if profile == "smoke":
        needed -= {s for s in BUNDLED_SMOKE.values() if not sources.is_ready(s, root)}
    return sorted(needed)


def is_built(profile: str, data: Path) -> bool:
    """True when every task file of ``profile`` exists with the hash the manifest recorded."""
    manifest = read_manifest(data)
    if not manifest or manifest.get("builder_version") != BUILDER_VERSION:
        return False
    for name in _profile_tasks(profile):
        entry = manifest.get("tasks", {}).get(name, {}).get("profiles", {}).get(profile)
        if not entry:
            return False
        path = data / entry["file"]
        try:
            if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
                return False
        except OSError:
            return False
    return True


def ensure_built(
    profile: str = "smoke",
    *,
    root: Path | str | None = None,
    out: Path | str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fetch and build whatever ``profile``'s tasks lack; return the data directory.

    Cheap when already built (hashes ten small files). On a fresh machine the smoke profile
    downloads about 75 MB of small packages (not the 85 MB poetry tarball: its smoke set ships
    with m3e) and builds in seconds.
    """
    if profile not in PROFILES:
        raise M3EError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    data = Path(out) if out is not None else data_dir(root)
    if is_built(profile, data):
        return data
    missing = [s for s in sources_for(profile, root) if not sources.is_ready(s, root)]
    if missing:
        sources.fetch(missing, root, log=log)
    build(data, root, profiles=(profile,), train=False, log=log)
    return data
