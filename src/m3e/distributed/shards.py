"""Input shards and the output part each one becomes: the unit of work, of resume and of exactly-once.

Every input file (a shard) is encoded whole by one actor into one parquet part, written to a temporary file
and renamed into place (m3e.atomic). So a part exists completely or not at all: a worker killed mid-shard
leaves no rows, Ray runs the shard again elsewhere, and a run that was interrupted is resumed by skipping the
shards whose part exists and was written from the same input (size and modification time, recorded in the
part's parquet metadata). Exactly one output row per input row follows without any coordination: one part
per shard, parts never appended to.

``_m3e_run.json`` in the output directory records the model and options the parts were written with; a
re-run with other settings is refused instead of mixing two kinds of vector.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from m3e.atomic import write_atomic
from m3e.errors import M3EError

RUN_FILE = "_m3e_run.json"
SOURCE_KEY = b"m3e.source"  # the parquet metadata key holding the shard's fingerprint


def list_shards(pattern: str) -> list[Path]:
    """The files a glob (or a directory, or one file) names, sorted; an error when there are none."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    elif path.is_file():
        found = [path]
    else:
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not found:
        raise M3EError(f"no input files match {pattern}")
    return [p.resolve() for p in found]


def part_name(shard: Path) -> str:
    """The part a shard becomes: its name, plus a hash of its full path so equal names in two folders differ."""
    digest = hashlib.sha1(str(shard.resolve()).encode("utf-8")).hexdigest()[:10]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in shard.stem)[:60]
    return f"part-{stem}-{digest}.parquet"


def fingerprint(shard: Path) -> dict[str, Any]:
    st = shard.stat()
    return {"path": str(shard.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def part_source(part: Path) -> dict[str, Any] | None:
    """The fingerprint recorded in a part, or None when the part is missing or unreadable."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(part).metadata or {}
    except (OSError, ValueError):
        return None
    raw = meta.get(SOURCE_KEY)
    return json.loads(raw) if raw else None


def finished(out_dir: Path, shard: Path) -> bool:
    """Whether ``shard`` already has its complete part, written from the file as it is now."""
    return part_source(out_dir / part_name(shard)) == fingerprint(shard)


def check_run(out_dir: Path, settings: dict[str, Any], overwrite: bool = False) -> None:
    """Record the run's settings in ``out_dir``, or refuse settings that differ from the recorded ones."""
    run_file = out_dir / RUN_FILE
    if run_file.exists() and not overwrite:
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
        if recorded != settings:
            diffs = [k for k in sorted(set(recorded) | set(settings)) if recorded.get(k) != settings.get(k)]
            raise M3EError(f"{out_dir} holds parts written with other settings ({', '.join(diffs)}); "
                           "use another output directory or --overwrite")
        return
    if overwrite and out_dir.exists():
        for old in out_dir.glob("part-*.parquet"):
            old.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_file, json.dumps(settings, ensure_ascii=False, indent=2, sort_keys=True))


def remove_stale_temporaries(out_dir: Path) -> int:
    """Temporary files of attempts that died (a killed worker leaves its half-written part behind)."""
    n = 0
    for tmp in out_dir.glob(".part-*.tmp"):
        try:
            tmp.unlink()
            n += 1
        except FileNotFoundError:  # another process cleaned it
            pass
    return n


def parts(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The finished parts of an output directory, in name order."""
    return sorted(Path(out_dir).glob("part-*.parquet"))
