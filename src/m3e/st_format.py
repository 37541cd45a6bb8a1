"""The sentence-transformers directory format: the one place that reads and writes it.

A directory is a chain of modules listed in ``modules.json``: a Transformer (the Hugging Face files, at the
root or in a sub-directory, with ``sentence_bert_config.json``), a Pooling (``1_Pooling/config.json``),
optional Dense layers (``N_Dense/config.json`` + weights) and an optional Normalize. Beside them,
``config_sentence_transformers.json`` holds the prompts, the default prompt and the similarity function.
M3E and BGE checkpoints are published this way; what m3e writes loads in sentence-transformers unchanged.

The Hugging Face part (config, weights, tokenizer) is written by transformers itself; this module writes and
reads everything around it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3e.errors import M3EError
from m3e.version import __version__

# Reading and writing the configuration files needs no torch: Dense (a torch module) and the pooling helpers
# (whose module computes with torch) are imported where a layer is built or a pooling config is read.
if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from m3e.dense import Dense

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
_TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_xlnet_config.json")
_MODULE_TYPE = "sentence_transformers.models.{}"
# The sentence-transformers version whose format m3e writes (every later version reads it).
ST_FORMAT_VERSION = "3.0.0"


@dataclass
class STModules:
    """What a sentence-transformers directory says about the chain around its transformer."""

    transformer_path: str = ""
    max_seq_length: int | None = None
    do_lower_case: bool = False
    pooling: str | None = None
    include_prompt: bool = True
    dense_paths: list[str] = field(default_factory=list)
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"


def is_st_dir(path: str | Path) -> bool:
    """True when ``path`` is a sentence-transformers directory (it has modules.json)."""
    return (Path(path) / MODULES_FILE).is_file()


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise M3EError(f"cannot read {path}: {exc}") from exc


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- read
def read_st_modules(model_dir: Path) -> STModules | None:
    """The module chain of a sentence-transformers directory; None for a plain Hugging Face checkpoint."""
    modules_file = model_dir / MODULES_FILE
    if not modules_file.exists():
        return None
    out = STModules()
    found_transformer = False
    for module in sorted(read_json(modules_file), key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = str(module.get("path", ""))
        if kind == "Transformer":
            found_transformer = True
            out.transformer_path = sub
            _read_transformer_config(model_dir / sub, out)
        elif kind == "Pooling":
            from m3e.pooling import pooling_from_st_config

            out.pooling, out.include_prompt = pooling_from_st_config(read_json(model_dir / sub / "config.json"))
        elif kind == "Dense":
            out.dense_paths.append(sub)
        elif kind == "Normalize":
            out.normalize = True
        else:
            raise M3EError(f"{model_dir}: sentence-transformers module {module.get('type')!r} is not supported by m3e")
    if not found_transformer:
        raise M3EError(f"{model_dir}: modules.json has no Transformer module")
    cfg_file = model_dir / ST_CONFIG_FILE
    if cfg_file.exists():
        cfg = read_json(cfg_file)
        out.prompts = {k: v for k, v in (cfg.get("prompts") or {}).items() if isinstance(v, str)}
        out.default_prompt_name = cfg.get("default_prompt_name")
        out.similarity_fn_name = cfg.get("similarity_fn_name") or "cosine"
    return out


def _read_transformer_config(directory: Path, out: STModules) -> None:
    for name in _TRANSFORMER_CONFIGS:
        cfg_file = directory / name
        if cfg_file.exists():
            cfg = read_json(cfg_file)
            if cfg.get("max_seq_length"):
                out.max_seq_length = int(cfg["max_seq_length"])
            out.do_lower_case = bool(cfg.get("do_lower_case", False))
            return


def read_dense_layers(model_dir: Path, paths: Sequence[str]) -> list[Dense]:
    """The Dense modules at ``paths`` (relative to ``model_dir``), weights loaded, in eval mode."""
    import torch

    from m3e.dense import Dense

    layers = []
    for sub in paths:
        cfg = read_json(model_dir / sub / "config.json")
        layer = Dense(
            int(cfg["in_features"]),
            int(cfg["out_features"]),
            bool(cfg.get("bias", True)),
            cfg.get("activation_function"),
        )
        st_file = model_dir / sub / "model.safetensors"
        if st_file.exists():
            from safetensors.torch import load_file

            state = load_file(str(st_file))
        else:
            state = torch.load(model_dir / sub / "pytorch_model.bin", map_location="cpu", weights_only=True)
        layer.load_state_dict({k: v for k, v in state.items() if k.startswith("linear.")}, strict=True)
        layers.append(layer.eval())
    return layers


# ---------------------------------------------------------------------------- write
def write_hf_files(out: Path, transformer: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dtype: str | None) -> None:
    """The transformer's config and weights and the tokenizer, as transformers writes them. ``dtype`` fp16 /
    bf16 stores half-precision weights; the config keeps float32 as the compute dtype (transformers'
    ``dtype="auto"`` reads that key), so m3e and sentence-transformers upcast them on load."""
    import torch
    from transformers.utils import logging as hf_logging

    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype or "")
    state = None
    if half is not None:
        state = {k: v.to(half) if v.is_floating_point() else v for k, v in transformer.state_dict().items()}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        transformer.save_pretrained(out, safe_serialization=True, state_dict=state)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if half is not None:
        config = read_json(out / "config.json")
        config["dtype"] = "float32"
        write_json(out / "config.json", config)
    _save_tokenizer(tokenizer, out)


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    """The tokenizer as a property of the model, not of its last call: a fast tokenizer keeps the truncation of
    the last ``max_length`` it was called with (a training run's 128) and would write it into tokenizer.json and
    tokenizer_config.json; the loading option ``local_files_only`` is no property either."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    truncation = getattr(backend, "truncation", None)
    init_kwargs = getattr(tokenizer, "init_kwargs", None)
    saved = dict(init_kwargs) if isinstance(init_kwargs, dict) else None
    if backend is not None and truncation:
        backend.no_truncation()
    if isinstance(init_kwargs, dict):
        init_kwargs.pop("max_length", None)
        init_kwargs.pop("local_files_only", None)
    try:
        tokenizer.save_pretrained(out)
    finally:
        if backend is not None and truncation:
            backend.enable_truncation(**{k: v for k, v in truncation.items() if k in ("max_length", "stride", "strategy", "direction")})
        if saved is not None and isinstance(init_kwargs, dict):
            init_kwargs.clear()
            init_kwargs.update(saved)


def write_st_modules(out: Path, spec: STModules, *, hidden_size: int, dense: Sequence[Dense] = ()) -> None:
    """Write the files around the transformer (which sits at the root of ``out``): modules.json,
    sentence_bert_config.json, 1_Pooling, the Dense and Normalize modules and config_sentence_transformers.json."""
    import torch

    if spec.pooling is None:
        raise M3EError("a sentence-transformers directory needs a pooling")
    if spec.default_prompt_name is not None and spec.default_prompt_name not in spec.prompts:
        raise M3EError(
            f"default prompt {spec.default_prompt_name!r} is not one of the prompts ({', '.join(spec.prompts)})"
        )
    modules: list[dict[str, Any]] = []

    def add(kind: str, path: str) -> None:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": path, "type": _MODULE_TYPE.format(kind)})

    add("Transformer", "")
    write_json(out / "sentence_bert_config.json", {"max_seq_length": spec.max_seq_length, "do_lower_case": spec.do_lower_case})
    add("Pooling", "1_Pooling")
    from m3e.pooling import st_pooling_config

    write_json(out / "1_Pooling" / "config.json", st_pooling_config(spec.pooling, hidden_size, spec.include_prompt))
    for layer in dense:
        sub = f"{len(modules)}_Dense"
        _write_dense(out / sub, layer)
        add("Dense", sub)
    if spec.normalize:
        sub = f"{len(modules)}_Normalize"
        (out / sub).mkdir(parents=True, exist_ok=True)
        add("Normalize", sub)
    write_json(out / MODULES_FILE, modules)
    write_json(
        out / ST_CONFIG_FILE,
        {
            "__version__": {
                "sentence_transformers": ST_FORMAT_VERSION,
                "pytorch": torch.__version__.split("+")[0],
                "m3e": __version__,
            },
            "prompts": spec.prompts,
            "default_prompt_name": spec.default_prompt_name,
            "similarity_fn_name": spec.similarity_fn_name,
        },
    )


def _write_dense(directory: Path, layer: Dense) -> None:
    from safetensors.torch import save_file

    write_json(directory / "config.json", layer.st_config())
    weights = {k: v.detach().cpu().contiguous() for k, v in layer.state_dict().items() if "activation" not in k}
    save_file(weights, str(directory / "model.safetensors"))
