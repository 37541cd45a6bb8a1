"""Write a BERT encoder as a standard Hugging Face + sentence-transformers directory.

The directory holds config.json, model.safetensors, tokenizer.json / tokenizer_config.json /
special_tokens_map.json (a fast tokenizer), and the sentence-transformers files
(modules.json, sentence_bert_config.json, 1_Pooling, 2_Normalize,
config_sentence_transformers.json), so that both ``SentenceTransformer(path)`` and
``m3e.load(path)`` load it. It is written into a temporary sibling directory and moved into
place in one rename.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from m3e.atomic import building_dir
from m3e.errors import M3EError
from m3e.st_format import STModules, write_json, write_st_modules

__all__ = ["sentence_transformers_files", "write_directory_atomically", "write_json"]


def sentence_transformers_files(
    directory: Path, *, dim: int, max_seq_length: int, prompts: dict[str, str], default_prompt: str | None = None
) -> None:
    """modules.json and the module configs: transformer -> mean pooling -> normalise. ``default_prompt`` names
    the prompt that texts without one get (sentence-transformers' ``default_prompt_name``)."""
    spec = STModules(
        max_seq_length=max_seq_length,
        pooling="mean",
        normalize=True,
        prompts=dict(prompts),
        default_prompt_name=default_prompt,
    )
    write_st_modules(directory, spec, hidden_size=dim)


def write_directory_atomically(out: Path, fill: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Create ``out`` by letting ``fill`` write into a temporary sibling, then renaming it (every file fsynced,
    plain modes)."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise M3EError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise M3EError(f"--out {out} exists and is not empty (use --force to replace it)")
    with building_dir(out, durable=True) as tmp:
        fill(tmp)
    return out
