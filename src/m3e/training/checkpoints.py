"""Atomic checkpoints: a kill -9 at any moment leaves the previous complete checkpoint loadable.

Layout under the run directory::

    checkpoints/step-00000120/model/        a sentence-transformers directory (LoRA merged): m3e.load works on it
    checkpoints/step-00000120/state.pt      optimizer, scheduler, position in the data, RNG, loss history, adapters
    checkpoints/step-00000120/COMPLETE      written last; a directory without it is ignored
    checkpoints/LATEST                      name of the newest complete checkpoint (replaced atomically)

A checkpoint is built in a hidden temporary directory, fsynced, then renamed into place
(:func:`m3e.atomic.building_dir`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from m3e.atomic import building_dir, write_atomic
from m3e.errors import M3EError

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(run_dir: Path, step: int, model: Any, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` (model directory + trainer state), then point LATEST at it, then prune."""
    import torch

    from m3e.training.strategies import saveable

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    # fsynced before the rename; re-saving a step (the end of a resumed run) moves the old one aside first
    with building_dir(final, durable=True) as tmp:
        with saveable(model) as plain:
            was_training = plain.training
            plain.save(tmp / "model")
            plain.train(was_training)
        with open(tmp / "state.pt", "wb") as fh:
            torch.save(state, fh)
        (tmp / COMPLETE).write_text(json.dumps({"step": step}) + "\n", encoding="utf-8")
    write_atomic(root / "LATEST", final.name + "\n")
    _prune(root, keep, final)
    return final


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / COMPLETE).is_file() and (path / "state.pt").is_file()


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and _complete(p))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (LATEST if valid, else a scan: LATEST may lag by one rename)."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / "LATEST"
    found = list_checkpoints(run_dir)
    if pointer.is_file():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if _complete(named) and (not found or named.name >= found[-1].name):
            return named
    return found[-1] if found else None


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
    except (OSError, RuntimeError, EOFError) as exc:
        raise M3EError(f"{checkpoint}: cannot read the trainer state: {exc}") from None
