"""Which tasks a suite runs.

- ``smoke`` / ``offline``: the m3e task files (profile "smoke" / "full") as mteb custom tasks
  (``m3e.evaluation.mteb_tasks``); fully offline.
- ``dev``: the dev splits (profile "dev") of the offline tasks that have one: held-out items for
  choosing training settings, so that the test is looked at once.
- ``skills``: held-out tasks of the broader sources for the skills the offline suite leaves out (long
  Chinese, short and long English, help-text bitext; ``m3e.data.skill_tasks``); fully offline.
- ``cmteb``: mteb's ``MTEB(cmn, v1)`` benchmark (C-MTEB), datasets from the Hugging Face hub.
- ``mteb-zh``: the tasks of the M3E model card's "MTEB-zh" table that mteb carries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from m3e.errors import M3EError

if TYPE_CHECKING:
    from mteb.abstasks import AbsTask

    from m3e.evaluation.taskfile import TaskFile

SUITES = ("smoke", "offline", "dev", "skills", "cmteb", "mteb-zh")
OFFLINE_PROFILES = {"smoke": "smoke", "offline": "full", "dev": "dev", "skills": "skills"}
CMTEB_BENCHMARK = "MTEB(cmn, v1)"
# The M3E card's MTEB-zh tasks as mteb names them: JDIphone ~ JDReview, TYQSentiment ~
# MultilingualSentiment, T2Ranking ~ T2Retrieval / T2Reranking. StockComSentiment and
# GubaEastmony are not in mteb.
MTEB_ZH_TASKS = ("TNews", "IFlyTek", "JDReview", "MultilingualSentiment", "T2Retrieval", "T2Reranking")


@dataclass
class Suite:
    name: str
    tasks: list[AbsTask]
    profile: str | None = None  # task-file profile for offline suites
    data_dir: Path | None = None
    specs: dict[str, TaskFile] = field(default_factory=dict)  # task name -> its file (offline suites)
    benchmark: str | None = None

    @property
    def offline(self) -> bool:
        return self.name in OFFLINE_PROFILES


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_hub(suite: str, timeout: float = 5.0) -> None:
    """Raise one clear M3EError when the Hugging Face hub cannot be used."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _truthy(var):
            raise M3EError(
                f"the {suite} suite downloads its datasets from the Hugging Face hub, but {var}=1 "
                f"switches the hub off; run it where the hub is reachable, or use --suite offline"
            )
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/datasets/C-MTEB/TNews-classification"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # the hub answered (even 401/404 means it is reachable)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise M3EError(
            f"the {suite} suite needs the Hugging Face hub, which is unreachable from here "
            f"({endpoint}: {reason}); use --suite offline"
        ) from exc


def resolve_data_dir(profile: str, data_dir: str | Path | None) -> Path:
    """The built-data directory: --data-dir, else the one ``m3e data`` builds (building if needed)."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise M3EError(f"--data-dir {path} is not a directory")
        return path
    try:
        from m3e.data.build import ensure_built
    except ImportError:
        from m3e.data.paths import data_dir as default_data_dir

        return default_data_dir()
    built = Path(ensure_built(profile))
    return built.parent if built.name == "tasks" else built


def offline_suite(name: str, names: list[str] | None = None, data_dir: str | Path | None = None) -> Suite:
    from m3e.evaluation.mteb_tasks import make_task
    from m3e.evaluation.taskfile import load_task_files

    profile = OFFLINE_PROFILES[name]
    data = resolve_data_dir(profile, data_dir)
    specs = load_task_files(data, profile, names)
    return Suite(
        name=name,
        tasks=[make_task(s) for s in specs],
        profile=profile,
        data_dir=data,
        specs={s.name: s for s in specs},
    )


def hub_suite(name: str, names: list[str] | None = None) -> Suite:
    check_hub(name)
    import mteb

    if name == "cmteb":
        tasks = list(mteb.get_benchmark(CMTEB_BENCHMARK).tasks)
        benchmark = CMTEB_BENCHMARK
    else:
        tasks = list(mteb.get_tasks(tasks=list(MTEB_ZH_TASKS)))
        benchmark = None
    if names:
        lower = {t.metadata.name.lower(): t for t in tasks}
        missing = [n for n in names if n.lower() not in lower]
        if missing:
            raise M3EError(
                f"task(s) {', '.join(missing)} are not in the {name} suite; it has: "
                + ", ".join(t.metadata.name for t in tasks)
            )
        tasks = [lower[n.lower()] for n in dict.fromkeys(names)]
    return Suite(name=name, tasks=tasks, benchmark=benchmark)


def get_suite(name: str, names: list[str] | None = None, data_dir: str | Path | None = None) -> Suite:
    if name not in SUITES:
        raise M3EError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    if name in OFFLINE_PROFILES:
        return offline_suite(name, names, data_dir)
    return hub_suite(name, names)
