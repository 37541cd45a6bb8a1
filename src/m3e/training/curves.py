"""The loss curve: a CSV of every logged step and a PNG plot, both written atomically."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from m3e.atomic import write_atomic

log = logging.getLogger(__name__)
FIELDS = ("step", "epoch", "dataset", "loss", "lr", "examples_per_s", "elapsed_s")


def write_csv(history: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_atomic(path, buf.getvalue())


def write_png(history: list[dict[str, Any]], path: Path, title: str = "training loss") -> bool:
    """Plot loss (and its running mean) against the step. Returns False when matplotlib is missing."""
    if not history:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; %s not written", path.name)
        return False
    steps = [int(r["step"]) for r in history]
    losses = [float(r["loss"]) for r in history]
    smooth, ema = [], losses[0]
    for x in losses:
        ema = 0.9 * ema + 0.1 * x
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="#9bb7d4", linewidth=0.8, label="loss")
    ax.plot(steps, smooth, color="#1f4e79", linewidth=1.6, label="running mean")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return True
