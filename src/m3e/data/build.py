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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3e.atomic import write_atomic
from m3e.data import sources
from m3e.data.corpora import Inputs
from m3e.data.distill import POOLS, PoolSpec, finish_pool
from m3e.data.paths import data_dir, distill_path, task_path, train_path
from m3e.data.skill_tasks import SKILL_TASKS
from m3e.data.task_builders import (
    BUNDLED_SMOKE,
    CLASS_PER_LABEL,
    SIZES,
    SMOKE_DOCS,
    SMOKE_PAIRS,
    SMOKE_QUERIES,
    SMOKE_TEST,
    SMOKE_TRAIN,
    TASKS,
    Task,
    TaskSpec,
    bundled_smoke,
    counts,
    eval_texts,
    smoke,
)
from m3e.data.text import Exclusion
from m3e.data.training import TRAIN, TrainSpec, finish
from m3e.errors import M3EError

logger = logging.getLogger(__name__)

BUILDER_VERSION = 7  # 2: bylines, photo credits and dash-led subtitles are no headlines; 3: dev splits; 4: skills;
# 5: dev splits of InsuranceQARetrieval and IdiomReverseDictionary (their texts leave the training files);
# 6: long pairs of sources K, Q and T (law chapters, the Bible's paragraphs, Inkscape's tutorials)
# 7: sources O and S (Wesnoth's help and lore, zh -> en; the Three Kingdoms novel, inverse cloze)
# dev: held-out splits for choosing settings, for the tasks that have one; skills: the skills suite's tasks
PROFILES = ("full", "smoke", "dev", "skills")
ALL_TASKS: dict[str, TaskSpec] = {**TASKS, **SKILL_TASKS}
MANIFEST = "manifest.json"
TASK_HEADER = ("type", "languages", "main_score", "sources", "license")  # what the manifest repeats of a task

Log = Callable[[str], None]


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=None) + "\n").encode("utf-8")


def _dumps_pretty(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n").encode("utf-8")


def _write(path: Path, data: bytes) -> str:
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _quiet(_msg: str) -> None:
    pass


def read_manifest(data: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((data / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _parameters(caps: dict[str, int]) -> dict[str, Any]:
    return {
        "split": "bucket = int(sha1(salt + NUL + key)) mod 100; buckets 0-49 evaluation test, 50-99 the rest; "
        "salt = task or training-file name; selections follow sha1 order",
        "normalisation": "NFKC, lowercase, whitespace removed, traditional -> simplified (zhconv zh-cn)",
        "exclusion": "a training record is dropped when any of its fields equals (normalised) any text of "
        "any evaluation task, either split, queries or corpus",
        "classification_per_label": CLASS_PER_LABEL,
        "sizes": SIZES,
        "smoke": {"test": SMOKE_TEST, "train": SMOKE_TRAIN, "queries": SMOKE_QUERIES,
                  "docs": SMOKE_DOCS, "pairs": SMOKE_PAIRS},
        "caps": caps,
    }


@dataclass
class _Build:
    """One run of :func:`build`: where it writes, what it reads, what it has built so far."""

    data: Path
    root: Path | str | None
    inputs: Inputs
    manifest: dict[str, Any]
    say: Log
    used_sources: set[str] = field(default_factory=set)  # names of the sources read
    bundled_sources: set[str] = field(default_factory=set)  # names of the sources a bundled smoke set stood in for
    full_tasks: dict[str, Task] = field(default_factory=dict)  # test sets built: training must avoid their texts
    dev_tasks: dict[str, Task] = field(default_factory=dict)  # dev sets built: the same


def build(
    out: Path | str | None = None,
    root: Path | str | None = None,
    *,
    profiles: Iterable[str] = PROFILES,
    train: bool = True,
    caps: dict[str, int] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Build task files for ``profiles`` (and training files when ``train``); return the manifest."""
    chosen = tuple(p for p in PROFILES if p in set(profiles))
    if not chosen and not train:
        raise M3EError("nothing to build: give a profile (full, smoke, dev, skills) or training")
    data = Path(out) if out is not None else data_dir(root)
    file_caps = {name: (caps or {}).get(name, spec.cap) for name, spec in TRAIN.items()}
    start = time.perf_counter()
    run = _Build(data, root, Inputs(root), _start_manifest(data, file_caps), log or _quiet)
    _build_tasks(run, chosen, train=train)
    if train:
        exclusion = _exclusion(run)
        run.manifest["exclusion"] = {"texts": len(exclusion)}
        run.manifest["train"] = {name: _build_training_file(run, spec, exclusion, file_caps[name])
                                 for name, spec in TRAIN.items()}
        run.manifest["distill"] = {name: _build_pool(run, spec, exclusion) for name, spec in POOLS.items()}
    _record_sources(run)
    _write(data / MANIFEST, _dumps_pretty(run.manifest))
    run.say(f"built {data} in {time.perf_counter() - start:.1f}s")
    return run.manifest


def _start_manifest(data: Path, caps: dict[str, int]) -> dict[str, Any]:
    """The manifest already in ``data`` when this builder version wrote it (a build of some profiles keeps
    the others' entries), else an empty one."""
    old = read_manifest(data)
    manifest: dict[str, Any] = (
        old if old and old.get("builder_version") == BUILDER_VERSION
        else {"builder_version": BUILDER_VERSION, "sources": {}, "tasks": {}, "train": {}}
    )
    manifest["parameters"] = _parameters(caps)
    return manifest


# --------------------------------------------------------------------------- benchmark tasks


def _build_tasks(run: _Build, profiles: tuple[str, ...], *, train: bool) -> None:
    # Training must avoid every test and dev text, so it needs the full and dev profiles built.
    need_dev = "dev" in profiles or train
    for name, spec in ALL_TASKS.items():
        if not train and all(name not in _profile_tasks(p) for p in profiles):
            continue  # no profile asked for has this task (a dev-only build, a task without a dev split)
        started = time.perf_counter()
        need_full = ("skills" if name in SKILL_TASKS else "full") in profiles or train
        _build_task(run, spec, profiles, need_full=need_full, need_dev=need_dev)
        logger.info("%s built in %.1fs", name, time.perf_counter() - started)


def _build_task(run: _Build, spec: TaskSpec, profiles: tuple[str, ...], *, need_full: bool, need_dev: bool) -> None:
    """Build one task's profiles, write them and record them in the manifest."""
    use_bundle = (
        not need_full and spec.name in BUNDLED_SMOKE and not sources.is_ready(BUNDLED_SMOKE[spec.name], run.root)
    )
    if use_bundle:
        built = _bundled_profiles(run, spec.name, profiles)
    else:
        built = _test_profiles(run, spec, profiles, need_full=need_full)
    if spec.dev is not None and need_dev:
        dev = _dev_profile(run, spec, spec.dev)
        if dev is not None and "dev" in profiles:
            built["dev"] = dev
    _write_task(run, spec.name, built, bundled=use_bundle)


def _bundled_profiles(run: _Build, name: str, profiles: tuple[str, ...]) -> dict[str, Task]:
    """The smoke set that ships with m3e, in place of downloading its source."""
    if "smoke" not in profiles:
        return {}
    run.bundled_sources.add(BUNDLED_SMOKE[name])
    return {"smoke": bundled_smoke(name)}


def _test_profiles(run: _Build, spec: TaskSpec, profiles: tuple[str, ...], *, need_full: bool) -> dict[str, Task]:
    """The full profile and the smoke subset of it, built from the source when either is needed."""
    if not (need_full or "smoke" in profiles):
        return {}
    full = spec.build(run.inputs)
    run.full_tasks[spec.name] = full
    run.used_sources.update(spec.sources)
    built: dict[str, Task] = {}
    if spec.name in SKILL_TASKS:  # one profile: the held-out set itself
        return {"skills": full} if "skills" in profiles else {}
    if "full" in profiles:
        built["full"] = full
    if "smoke" in profiles:
        built["smoke"] = smoke(full)
    return built


def _dev_profile(run: _Build, spec: TaskSpec, build_dev: Callable[[Inputs], Task]) -> Task | None:
    """The task's dev split, or None when a small source leaves nothing beyond the test."""
    dev = build_dev(run.inputs)
    run.used_sources.update(spec.sources)
    if min(counts(dev).values()) == 0:
        run.say(f"  {spec.name:<40} dev    none: the source has no items beyond the test's")
        return None
    run.dev_tasks[spec.name] = dev
    return dev


def _write_task(run: _Build, name: str, built: dict[str, Task], *, bundled: bool) -> None:
    if built:
        header = next(iter(built.values()))
    elif name in run.full_tasks:
        header = run.full_tasks[name]
    else:
        return  # a dev-only build of a task whose source leaves no dev split: nothing to record
    entry = run.manifest["tasks"].setdefault(name, {})
    entry.update({k: header[k] for k in TASK_HEADER})
    recorded = entry.setdefault("profiles", {})
    for profile, task in built.items():
        path = task_path(run.data, name, profile)
        recorded[profile] = {
            "file": path.relative_to(run.data).as_posix(),
            "sha256": _write(path, _dumps(task)),
            "counts": counts(task),
            "origin": "bundled smoke set (identical to the one built from the source)"
            if profile == "smoke" and bundled else "built from source",
        }
        run.say(f"  {name:<40} {profile:<6} {_fmt_counts(counts(task))}")


def _fmt_counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items())


# --------------------------------------------------------------------------- training files and pools


def _exclusion(run: _Build) -> Exclusion:
    """Every text of every test and dev set built (the smoke sets are subsets of the tests)."""
    exclusion = Exclusion()
    for task in run.full_tasks.values():
        exclusion.add(eval_texts(task))
        exclusion.add(eval_texts(smoke(task)))
    for task in run.dev_tasks.values():
        exclusion.add(eval_texts(task))
    return exclusion


def _build_training_file(run: _Build, spec: TrainSpec, exclusion: Exclusion, cap: int) -> dict[str, Any]:
    """Write ``train/<name>.jsonl``; return its manifest entry."""
    started = time.perf_counter()
    records, stats = finish(spec.build(run.inputs), exclusion, cap, spec.triplets)
    run.used_sources.add(spec.source)
    source = sources.get_source(spec.source)
    path = train_path(run.data, spec.name)
    kind = "triplets" if spec.triplets else "pairs"
    entry = {
        "file": path.relative_to(run.data).as_posix(),
        "sha256": _write(path, b"".join(_dumps(r) for r in records)),
        "source": source.id,
        "license": source.license,
        "description": spec.description,
        "records": stats.records,
        "kind": kind,
        "cap": cap,
        "capped": stats.capped,
        "candidates_seen": stats.candidates,
        "dropped_excluded": stats.excluded,
        "dropped_duplicates": stats.duplicates,
        "dropped_no_negative": stats.no_negative,
    }
    run.say(f"  train/{spec.name:<34} {stats.records:>7} {kind:<8} "
            f"(excluded {stats.excluded}, duplicates {stats.duplicates}{', capped' if stats.capped else ''})")
    logger.info("train/%s built in %.1fs", spec.name, time.perf_counter() - started)
    return entry


def _build_pool(run: _Build, spec: PoolSpec, exclusion: Exclusion) -> dict[str, Any]:
    """Write ``distill/<name>.jsonl``; return its manifest entry."""
    texts, excluded = finish_pool(spec.build(run.inputs), exclusion, spec.cap, spec.name, spec.max_chars)
    run.used_sources.add(spec.source)
    source = sources.get_source(spec.source)
    path = distill_path(run.data, spec.name)
    entry = {
        "file": path.relative_to(run.data).as_posix(),
        "sha256": _write(path, b"".join(_dumps({"text": t}) for t in texts)),
        "source": source.id,
        "license": source.license,
        "description": spec.description,
        "side": spec.side,
        "texts": len(texts),
        "cap": spec.cap,
        "dropped_excluded": excluded,
    }
    run.say(f"  distill/{spec.name:<32} {len(texts):>7} texts    ({spec.side} side, excluded {excluded})")
    return entry


# --------------------------------------------------------------------------- sources


def _record_sources(run: _Build) -> None:
    """The manifest's record of every source read, and of each source a bundled smoke set stood in for."""
    recorded: dict[str, Any] = run.manifest["sources"]
    for name in run.used_sources:
        recorded[sources.get_source(name).id] = sources.source_record(name, run.root)
    for name in run.bundled_sources - run.used_sources:
        recorded.setdefault(sources.get_source(name).id, _bundled_source_record(name, run.root))
    run.manifest["sources"] = dict(sorted(recorded.items()))


def _bundled_source_record(name: str, root: Path | str | None) -> dict[str, Any]:
    source = sources.get_source(name)
    record = sources.source_record(name, root)
    record.update({"version": source.version, "sha256": source.sha256, "file": source.filename, "verified": True,
                   "origin": "not fetched: the smoke set bundled with m3e was used"})
    return record


# --------------------------------------------------------------------------- ensure_built


def _profile_tasks(profile: str) -> list[str]:
    """The tasks a profile has: the skills suite's for ``skills``, else every offline task (for ``dev``
    those with a dev split)."""
    if profile == "skills":
        return list(SKILL_TASKS)
    return [name for name, spec in TASKS.items() if profile != "dev" or spec.dev is not None]


def sources_for(profile: str, root: Path | str | None = None) -> list[str]:
    """The short ids of the sources a profile's tasks need. The smoke profile skips sources it ships a
    sample of."""
    needed = {s for name in _profile_tasks(profile) for s in ALL_TASKS[name].sources}
    if profile == "smoke":
        needed -= {s for s in BUNDLED_SMOKE.values() if not sources.is_ready(s, root)}
    return sorted(sources.get_source(s).id for s in needed)


def sources_needed(profiles: Iterable[str], *, train: bool, root: Path | str | None = None) -> list[str]:
    """The short ids of the sources a build of ``profiles`` (and of the training files and pools when
    ``train``) reads."""
    needed = {s for p in profiles for s in sources_for(p, root)}
    if train:
        needed |= {sources.get_source(spec.source).id for spec in TRAIN.values()}
        needed |= {sources.get_source(spec.source).id for spec in POOLS.values()}
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
    log: Log | None = None,
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
