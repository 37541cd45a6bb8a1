"""Write a BERT encoder as a standard Hugging Face + sentence-transformers directory.

The directory holds config.json, model.safetensors, tokenizer.json / tokenizer_config.json /
special_tokens_map.json (a fast tokenizer), and the sentence-transformers files
(modules.json, sentence_bert_config.json, 1_Pooling, 2_Normalize,
config_sentence_transformers.json), so that both ``SentenceTransformer(path)`` and
``m3e.load(path)`` load it. It is written into a temporary sibling directory and moved into
place in one rename.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from m3e.atomic import replace_dir, temp_dir_beside
from m3e.errors import M3EError


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: Path, obj: object) -> None:
    _write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def sentence_transformers_files(
    directory: Path, *, dim: int, max_seq_length: int, prompts: dict[str, str], default_prompt: str | None = None
) -> None:
    """modules.json and the module configs: transformer -> mean pooling -> normalise. ``default_prompt`` names
    the prompt that texts without one get (sentence-transformers' ``default_prompt_name``)."""
    if default_prompt is not None and default_prompt not in prompts:
        raise M3EError(f"default prompt {default_prompt!r} is not one of the prompts ({', '.join(prompts)})")
    write_json(
        directory / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(
        directory / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False}
    )
    write_json(
        directory / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (directory / "2_Normalize").mkdir(parents=True, exist_ok=True)
    write_json(
        directory / "config_sentence_transformers.json",
        {"prompts": prompts, "default_prompt_name": default_prompt, "similarity_fn_name": "cosine"},
    )


def write_directory_atomically(out: Path, fill: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Create ``out`` by letting ``fill`` write into a temporary sibling, then renaming it."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise M3EError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise M3EError(f"--out {out} exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out, prefix=f".{out.name}.tmp-")
    try:
        fill(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
