"""Read and check the benchmark task files written by ``m3e data build``.

Layout (the contract with ``m3e data``): ``<data>/tasks/<TaskName>/<profile>.json``, one JSON
object with "name", "type", "languages", "main_score", "description", "sources", "license" and
the records of its type. A broken file is reported with its path and the offending record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from m3e.errors import InputError, M3EError

TaskType = Literal["Classification", "Retrieval", "BitextMining", "PairClassification"]
TASK_TYPES: tuple[TaskType, ...] = ("Classification", "Retrieval", "BitextMining", "PairClassification")
PROFILES = ("full", "smoke", "dev", "skills")

# mteb's name of each type's main score (the contract lets the file name it; these are defaults).
DEFAULT_MAIN_SCORE: dict[TaskType, str] = {
    "Classification": "accuracy",
    "Retrieval": "ndcg_at_10",
    "BitextMining": "f1",
    "PairClassification": "max_ap",
}
# Spellings a person might write for mteb's score names.
_SCORE_ALIASES = {
    "ndcg@10": "ndcg_at_10",
    "ndcg10": "ndcg_at_10",
    "accuracy@1": "accuracy",
    "acc": "accuracy",
    "max ap": "max_ap",
    "maxap": "max_ap",
    "ap": "max_ap",
    "max accuracy": "max_accuracy",
    "f1@1": "f1",
}


@dataclass
class TaskFile:
    """One task file, checked. ``records`` holds the type's fields ("train"/"test", "queries"/...)."""

    name: str
    type: TaskType
    languages: list[str]
    main_score: str
    description: str
    path: Path
    profile: str
    revision: str  # sha256 prefix of the file bytes: the results name the exact data they came from
    sources: list[str] = field(default_factory=list)
    license: str = ""
    records: dict[str, Any] = field(default_factory=dict)

    def size(self) -> dict[str, int]:
        """Item counts, for reports (e.g. {"train": 300, "test": 300})."""
        r = self.records
        if self.type == "Classification":
            return {"train": len(r["train"]), "test": len(r["test"])}
        if self.type == "Retrieval":
            return {"queries": len(r["queries"]), "corpus": len(r["corpus"])}
        return {"pairs": len(r["pairs"])}


def _fail(path: Path, message: str) -> InputError:
    return InputError(message, path=str(path))


def _records(
    path: Path, obj: dict[str, Any], key: str, fields: dict[str, type | tuple[type, ...]]
) -> list[dict[str, Any]]:
    items = obj.get(key)
    if not isinstance(items, list) or not items:
        raise _fail(path, f"{key!r} must be a non-empty list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _fail(path, f"{key}[{i}] is not an object")
        for name, kind in fields.items():
            if name not in item:
                raise _fail(path, f"{key}[{i}] has no {name!r}")
            if not isinstance(item[name], kind) or (isinstance(item[name], bool) and kind is not bool):
                raise _fail(path, f"{key}[{i}].{name} has type {type(item[name]).__name__}")
    return items


def _main_score(path: Path, task_type: TaskType, raw: Any) -> str:
    if raw in (None, ""):
        return DEFAULT_MAIN_SCORE[task_type]
    if not isinstance(raw, str):
        raise _fail(path, "'main_score' must be a string")
    key = raw.strip()
    return _SCORE_ALIASES.get(key.lower(), key)


def read_task_file(path: str | Path, profile: str | None = None) -> TaskFile:
    """Parse and check one task file."""
    path = Path(path)
    raw, obj = _read_json(path)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(path, "'name' must be a non-empty string")
    task_type = _task_type(path, obj.get("type"))
    languages = obj.get("languages")
    if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
        raise _fail(path, "'languages' must be a non-empty list of codes like 'cmn-Hans'")
    records = _RECORD_READERS[task_type](path, obj)
    sources = obj.get("sources") or []
    return TaskFile(
        name=name,
        type=task_type,
        languages=list(languages),
        main_score=_main_score(path, task_type, obj.get("main_score")),
        description=str(obj.get("description") or name),
        path=path,
        profile=profile or path.stem,
        revision=hashlib.sha256(raw).hexdigest()[:16],
        sources=[str(s) for s in sources] if isinstance(sources, list) else [str(sources)],
        license=str(obj.get("license") or ""),
        records=records,
    )


def _read_json(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes (its revision is their hash) and its one JSON object."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise M3EError(f"cannot read task file {path}: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not a valid UTF-8 JSON file ({exc})") from exc
    if not isinstance(obj, dict):
        raise _fail(path, "expected one JSON object")
    return raw, obj


def _task_type(path: Path, raw: Any) -> TaskType:
    for task_type in TASK_TYPES:
        if raw == task_type:
            return task_type
    raise _fail(path, f"'type' must be one of {', '.join(TASK_TYPES)}, not {raw!r}")


def _classification_records(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, type | tuple[type, ...]] = {"text": str, "label": (str, int)}
    return {split: _records(path, obj, split, fields) for split in ("train", "test")}


def _retrieval_records(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    queries = _records(path, obj, "queries", {"id": (str, int), "text": str})
    corpus = _records(path, obj, "corpus", {"id": (str, int), "text": str})
    qrels = _qrels(path, obj.get("qrels"), {str(q["id"]) for q in queries}, {str(d["id"]) for d in corpus})
    return {"queries": queries, "corpus": corpus, "qrels": qrels}


def _qrels(path: Path, qrels: Any, query_ids: set[str], doc_ids: set[str]) -> dict[str, dict[str, int]]:
    """{query id: {document id: relevance}}, every id pointing into the task's queries and corpus."""
    if not isinstance(qrels, dict) or not qrels:
        raise _fail(path, "'qrels' must be a non-empty object {query_id: {doc_id: relevance}}")
    clean: dict[str, dict[str, int]] = {}
    for qid, rel in qrels.items():
        if not isinstance(rel, dict):
            raise _fail(path, f"qrels[{qid!r}] is not an object")
        if str(qid) not in query_ids:
            raise _fail(path, f"qrels names query {qid!r}, which is not in 'queries'")
        for did, score in rel.items():
            if str(did) not in doc_ids:
                raise _fail(path, f"qrels[{qid!r}] names document {did!r}, which is not in 'corpus'")
            if not isinstance(score, int) or isinstance(score, bool):
                raise _fail(path, f"qrels[{qid!r}][{did!r}] must be an integer")
        clean[str(qid)] = {str(d): int(s) for d, s in rel.items()}
    return clean


def _bitext_records(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    return {"pairs": _records(path, obj, "pairs", {"sentence1": str, "sentence2": str})}


def _pair_classification_records(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    pairs = _records(path, obj, "pairs", {"sentence1": str, "sentence2": str, "label": int})
    for i, p in enumerate(pairs):
        if p["label"] not in (0, 1):
            raise _fail(path, f"pairs[{i}].label must be 0 or 1")
    return {"pairs": pairs}


_RECORD_READERS: dict[TaskType, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "Classification": _classification_records,
    "Retrieval": _retrieval_records,
    "BitextMining": _bitext_records,
    "PairClassification": _pair_classification_records,
}


def _type_order(task: TaskFile) -> tuple[int, str]:
    return (TASK_TYPES.index(task.type), task.name)


def find_task_files(data: Path, profile: str) -> dict[str, Path]:
    """Task name -> file for every ``<data>/tasks/<name>/<profile>.json``."""
    root = Path(data) / "tasks"
    if not root.is_dir():
        return {}
    return {p.parent.name: p for p in sorted(root.glob(f"*/{profile}.json"))}


def load_task_files(data: Path, profile: str, names: list[str] | None = None) -> list[TaskFile]:
    """All (or the named) tasks of a profile, ordered by type then name."""
    if profile not in PROFILES:
        raise M3EError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    found = find_task_files(data, profile)
    if not found:
        raise M3EError(
            f"no {profile!r} task files under {Path(data) / 'tasks'}; build them with "
            f"`m3e data fetch && m3e data build` (or point --data-dir at a built data directory)"
        )
    if names:
        lower = {n.lower(): n for n in found}
        missing = [n for n in names if n.lower() not in lower]
        if missing:
            raise M3EError(f"unknown task(s) {', '.join(missing)}; available: {', '.join(found)}")
        chosen = [lower[n.lower()] for n in dict.fromkeys(names)]
    else:
        chosen = list(found)
    tasks = [read_task_file(found[n], profile) for n in chosen]
    return sorted(tasks, key=_type_order)
