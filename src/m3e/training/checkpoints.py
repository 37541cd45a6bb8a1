"""Atomic checkpoints: a kill -9 at any moment leaves the previous complete checkpoint loadable.

Layout under the run directory::

    checkpoints/step-00000120/model/        a sentence-transformers directory (LoRA merged): m3e.load works on it
    checkpoints/step-00000120/state.pt      optimizer, scheduler, position in the data, RNG, loss history, adapters
    checkpoints/step-00000120/COMPLETE      written last: the step and the sha256 of every other file
    checkpoints/LATEST                      name of the newest complete checkpoint (replaced atomically)

A checkpoint is built in a hidden temporary directory, fsynced, then renamed into place
(:func:`m3e.atomic.building_dir`). A resume verifies the newest checkpoint against the hashes in its COMPLETE
file and falls back to the newest intact one, saying which were damaged (a truncated or bit-flipped file
after a disk fault, a copy, a restore). A write that fails (disk full) leaves the previous checkpoints and
says so.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

from m3e.atomic import building_dir, sha256_file, write_atomic
from m3e.errors import FaultError, M3EError, as_os_error, describe_os_error

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(run_dir: Path, step: int, model: Any, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` (model directory + trainer state), then point LATEST at it, then prune."""
    import torch

    from m3e.training.strategies import saveable

    root = Path(run_dir) / CHECKPOINTS
    final = root / step_name(step)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # fsynced before the rename; re-saving a step (the end of a resumed run) moves the old one aside first
        with building_dir(final, durable=True) as tmp:
            with saveable(model) as plain:
                was_training = plain.training
                plain.save(tmp / "model")
                plain.train(was_training)
            with open(tmp / "state.pt", "wb") as fh:
                torch.save(state, fh)
            record = {"step": step, "sha256": file_hashes(tmp)}
            (tmp / COMPLETE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        write_atomic(root / "LATEST", final.name + "\n")
    except Exception as exc:
        fault = as_os_error(exc, str(final))
        if fault is None:
            raise
        kept = list_checkpoints(run_dir)
        last = f"the newest saved checkpoint is {kept[-1]}" if kept else "no checkpoint was saved before"
        raise FaultError(f"{describe_os_error(fault)}: checkpoint {final.name} was not written; {last}") from exc
    _prune(root, keep, final)
    return final


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file below ``directory`` but COMPLETE, by relative path."""
    return {p.relative_to(directory).as_posix(): sha256_file(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != COMPLETE}


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files (missing, changed, unreadable record), or None when they match
    the hashes recorded at write time. A checkpoint from before hashes were recorded is taken as it is."""
    try:
        record = json.loads((checkpoint / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its {COMPLETE} record is unreadable ({exc})"
    hashes = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(hashes, dict):
        return None
    for name, digest in sorted(hashes.items()):
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            actual = sha256_file(path)
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
        if actual != digest:
            return f"{name} differs from what was written (sha256 {actual[:12]}..., recorded {digest[:12]}...)"
    return None


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / COMPLETE).is_file() and (path / "state.pt").is_file()


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and _complete(p))


def latest_checkpoint(run_dir: Path, *, verify: bool = True) -> Path | None:
    """The newest complete checkpoint (LATEST if valid, else a scan: LATEST may lag by one rename).

    ``verify``: check its files against the recorded hashes and fall back to the newest intact one, saying on
    stderr which were skipped and why; damaged checkpoints only is an error (starting over would hide it).
    """
    root = Path(run_dir) / CHECKPOINTS
    found = list_checkpoints(run_dir)  # LATEST names one of these (or lags one rename behind): the scan decides
    if not verify:
        return found[-1] if found else None
    damaged: list[str] = []
    for checkpoint in reversed(found):
        problem = damage(checkpoint)
        if problem is None:
            if damaged:
                print(f"checkpoint {'; '.join(damaged)}: resuming from {checkpoint.name}, the newest intact one",
                      file=sys.stderr)
            return checkpoint
        damaged.append(f"{checkpoint.name} is damaged ({problem})")
    if damaged:
        raise M3EError(f"no intact checkpoint in {root}: {'; '.join(damaged)}; remove the damaged ones to start "
                       "over, or train into a new --output")
    return None


def _prune(root: Path, keep: int, current: Path) -> None:
    for p in root.iterdir():
        if _is_leftover(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)  # leftovers of a killed run
    if keep <= 0:
        return
    done = sorted(p for p in root.iterdir() if p.name.startswith("step-") and _complete(p))
    for p in done[:-keep]:
        if p != current:
            shutil.rmtree(p, ignore_errors=True)


def _is_leftover(name: str) -> bool:
    """A checkpoint being built or replaced when a run was killed: ``.step-N.tmp-*``, ``.step-N.old-*`` (and,
    from before building_dir, ``.tmp-step-N-*``, ``.old-step-N-*``)."""
    if name.startswith((".tmp-", ".old-")):
        return True
    return name.startswith(".step-") and (".tmp-" in name or ".old-" in name)


def load_state(checkpoint: Path) -> dict[str, Any]:
    import torch

    try:
        with open(Path(checkpoint) / "state.pt", "rb") as fh:
            return torch.load(fh, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise M3EError(f"{checkpoint}: cannot read the trainer state: {exc}") from None
