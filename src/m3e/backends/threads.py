"""How many threads inference should use: one per physical core, no more.

Hyper-threads share a core's vector units, so a second thread per core only adds contention
to matrix multiplies; a container's CPU affinity may allow fewer cores than the host has.
``M3E_NUM_THREADS`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores this process may run on (at least 1)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = _count_physical()
    return max(1, min(allowed, cores) if cores else allowed)


def _count_physical() -> int | None:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    # Linux without psutil: distinct (physical id, core id) pairs.
    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and phys is not None and core is not None:
                    pairs.add((phys, core))
                    phys = core = None
        if phys is not None and core is not None:
            pairs.add((phys, core))
        return len(pairs) or None
    except OSError:
        return None


def inference_threads() -> int:
    """Threads for one inference engine: ``M3E_NUM_THREADS`` or the physical core count."""
    env = os.environ.get("M3E_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            logger.warning("ignoring M3E_NUM_THREADS=%r (not an integer)", env)
    return physical_cores()


def limit_torch_threads() -> int:
    """Lower torch's intra-op threads to :func:`inference_threads` when it uses more (it counts
    logical CPUs in some containers); never raise a limit the user set lower."""
    import torch

    n = inference_threads()
    if torch.get_num_threads() > n or os.environ.get("M3E_NUM_THREADS"):
        torch.set_num_threads(n)
    return torch.get_num_threads()
