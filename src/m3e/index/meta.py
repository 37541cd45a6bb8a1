"""The index metadata file: which model built the index, how, and its committed state.

``<index>/index.json`` is the commit point of every index operation: engines write first,
then this file is replaced atomically (temp file, fsync, os.replace) with the new state.
A crash before the replace leaves the previous state in force.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.atomic import write_atomic
from m3e.deprecation import renamed_attributes
from m3e.errors import M3EError

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel

META_NAME = "index.json"
FORMAT = 1


def read_index_meta(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of the index in ``index_dir``, checked for a supported format."""
    path = Path(index_dir) / META_NAME
    if not path.exists():
        if Path(index_dir).exists():
            raise M3EError(f"{index_dir} is not an m3e index (no {META_NAME})")
        raise M3EError(f"no such index: {index_dir}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8 (a damaged or foreign file)
        raise M3EError(f"{path}: unreadable index metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise M3EError(f"{path}: unreadable index metadata (not a JSON object)")
    if meta.get("format") != FORMAT:
        raise M3EError(f"{path}: index format {meta.get('format')!r} is not supported (expected {FORMAT})")
    return meta


def write_meta(index_dir: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    text = json.dumps(meta, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    write_atomic(Path(index_dir) / META_NAME, text)


def weights_fingerprint(model: EmbeddingModel) -> str:
    """A short hash of the model's weights: same name and config but other weights do not match.

    Each tensor contributes its name, shape and first 64k values: fine-tuning changes every
    layer, and hashing a sample keeps this fast for large models.
    """
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        sample = tensor.detach().reshape(-1)[:65536]
        digest.update(sample.float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_signature(model: EmbeddingModel, source: str | None) -> dict[str, Any]:
    """What the index records about the model that built it."""
    return {
        "source": source,
        "name": model.name,
        "dim": int(model.dim),
        "pooling": model.pooling,
        "max_length": int(model.max_length),
        "backend": model.backend,
        "prompts": {"query": model.query_prompt, "document": model.document_prompt},
        "fingerprint": weights_fingerprint(model),
    }


_COMPARED = ("dim", "fingerprint", "pooling", "max_length", "backend", "prompts")


def check_model(recorded: dict[str, Any], model: EmbeddingModel, index_dir: str | os.PathLike[str]) -> None:
    """Refuse a query model whose vectors would not be comparable with the index's."""
    current = model_signature(model, recorded.get("source"))
    diffs = [f"{k}: index {recorded.get(k)!r}, model {current[k]!r}"
             for k in _COMPARED if recorded.get(k) != current[k]]
    if diffs:
        raise M3EError(
            f"model {model.name!r} does not match the model that built {index_dir} "
            f"({recorded.get('name')!r}): " + "; ".join(diffs)
        )


# The name before read_index_meta (the backends' artefacts had a read_meta too).
__getattr__ = renamed_attributes(__name__, {"read_meta": "read_index_meta"}, globals())
