"""TrainConfig is the one declaration of training's options: `m3e finetune` / `m3e train` flags, the recipe's
checks and FineTuner's arguments all come from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from m3e.cli import finetune as finetune_cli
from m3e.cli import train as train_cli
from m3e.errors import M3EError
from m3e.training.checkpoints import COMPLETE, _prune
from m3e.training.config import TrainConfig, train_options
from m3e.training.finetuner import FineTuner
from m3e.training.recipe import config_from_recipe

TRAINING_FLAGS = [
    "--task", "--epochs", "--max-steps", "--batch-size", "--mini-batch", "--lr", "--warmup-ratio", "--scheduler",
    "--weight-decay", "--max-length", "--encoding", "--loss", "--temperature", "--symmetric", "--matryoshka-dims", "--negatives",
    "--group-size",
    "--teacher", "--teacher-temperature", "--strategy",
    "--lora-r", "--lora-alpha", "--gradient-checkpointing", "--bf16", "--no-shuffle", "--allow-duplicates",
    "--no-prompts", "--seed", "--weight", "--save-dtype", "--save-steps", "--keep-checkpoints", "--checkpoint-dir",
    "--keep-checkpoint-dir", "--resume", "--device",
    "--progress", "--no-progress",
]


def _parser(add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def _training_flags(parser: argparse.ArgumentParser) -> list[str]:
    (group,) = [g for g in parser._action_groups if g.title == "training"]
    return [flag for action in group._group_actions for flag in action.option_strings]


def test_the_cli_offers_the_same_training_flags_in_the_same_order():
    assert _training_flags(_parser(finetune_cli.add_arguments)) == TRAINING_FLAGS
    assert _training_flags(_parser(train_cli.add_arguments)) == TRAINING_FLAGS


def test_finetune_flags_default_to_the_config():
    args = _parser(finetune_cli.add_arguments).parse_args(["MODEL", "DATA", "-o", "out"])
    given = finetune_cli.options_from_args(args)
    assert TrainConfig.from_dict(given) == TrainConfig()
    exposed = {opt.name for opt in train_options() if opt.cli}
    unset = {"weights", "progress", "max_steps", "mini_batch", "lr", "max_length", "teacher", "teacher_temperature",
             "checkpoint_dir", "matryoshka_dims"}
    assert set(given) == exposed - unset


def test_train_flags_override_only_what_is_given():
    parser = _parser(train_cli.add_arguments)
    assert train_cli.options_from_args(parser.parse_args(["--recipe", "r.yaml"])) == {}
    args = parser.parse_args(["--recipe", "r.yaml", "--no-shuffle", "--lr", "1e-4", "--negatives", "3",
                              "--weight", "a=0.5", "--no-progress", "--scheduler", "linear"])
    assert train_cli.options_from_args(args) == {
        "lr": 1e-4, "scheduler": "linear", "num_negatives": 3, "shuffle": False, "weights": {"a": 0.5},
        "progress": False,
    }


@pytest.mark.parametrize(("recipe", "message"), [
    ({"train": {"bacth_size": 8}}, "unknown training option.*bacth_size"),
    ({"train": {"batch_size": "8"}}, "batch_size must be an integer, not '8'"),
    ({"train": {"scheduler": "cos"}}, "scheduler must be one of cosine, linear, constant"),
    ({"loss": "cosent"}, "loss must be one of softmax, sigmoid"),
    ({"loss": {"name": "softmax", "symmetric": "yes"}}, "symmetric must be true or false"),
    ({"train": {"distill_loss": "kl"}}, "distill_loss must be one of mse, cosine"),
    ({"train": {"save_dtype": "int8"}}, "save_dtype must be one of fp32, fp16, bf16"),
    ({"train": {"weights": {"a": "half"}}}, "weights must be a mapping of dataset names to numbers"),
    ({"train": {"epochs": None}}, "epochs must be an integer, not null"),
])
def test_recipe_options_are_checked_against_the_declaration(recipe, message):
    with pytest.raises(M3EError, match=message):
        config_from_recipe(recipe)


def test_recipe_numbers_are_read_as_their_options_take_them():
    config = config_from_recipe({"train": {"lr": "3e-5", "epochs": 2.0, "weights": {"a": 1}}, "output": "run"})
    assert config.lr == 3e-5  # PyYAML reads 3e-5 (no dot) as text
    assert config.epochs == 2 and isinstance(config.epochs, int)
    assert config.weights == {"a": 1} and config.output == "run"


def test_finetuner_takes_the_config():
    config = TrainConfig(output="run", epochs=3, batch_size=8)
    tuner = FineTuner(object(), [], model_name="m", config=config, lr=1e-4)
    assert tuner.config == dataclasses.replace(config, lr=1e-4)
    with pytest.raises(M3EError, match="unknown training option"):
        FineTuner(object(), [], config=config, batchsize=8)
    plain = FineTuner(object(), [], model_name="/models/base", batch_size=16)
    assert (plain.config.model, plain.config.output, plain.config.batch_size) == ("/models/base", "base-finetuned", 16)


def test_pruning_clears_what_a_killed_save_left(tmp_path: Path):
    root = tmp_path / "checkpoints"
    for name in ("step-00000001", "step-00000002"):
        (root / name).mkdir(parents=True)
        (root / name / COMPLETE).write_text(json.dumps({"step": 1}))
        (root / name / "state.pt").write_bytes(b"")
    leftovers = [".step-00000003.tmp-ab12", ".step-00000002.old-cd34", ".tmp-step-00000003-ef56"]
    for name in leftovers:
        (root / name / "model").mkdir(parents=True)
    _prune(root, keep=2, current=root / "step-00000002")
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000002"]


def test_a_recipe_keeps_its_checkpoint_directory_unless_it_says_not_to():
    """A recipe is rerun with --resume (make default-model): its finished stages keep their checkpoints."""
    assert TrainConfig().keep_checkpoint_dir is False  # m3e finetune: the output alone
    assert config_from_recipe({"train": {}}).keep_checkpoint_dir is True
    assert config_from_recipe({"train": {"keep_checkpoint_dir": False}}).keep_checkpoint_dir is False
