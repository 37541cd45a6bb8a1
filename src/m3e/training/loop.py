"""The training loop: plan -> batch -> the task's loss -> step -> atomic checkpoint, resumable.

:class:`TrainingLoop` runs any :class:`m3e.training.task.TrainingTask` (an embedding model, a reranker). Resuming
restores weights, optimizer, scheduler, RNG and the position in the epoch's batch plan, which is rebuilt from the
seed: the run continues as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from m3e.backends import bf16_native
from m3e.errors import M3EError
from m3e.training import checkpoints as ckpt
from m3e.training import distributed as dist_
from m3e.training.batch_plan import PlannedBatch, batch_rng
from m3e.training.card import display_name
from m3e.training.config import EVAL_BEFORE, TrainConfig, lr_lambda, resolve_defaults
from m3e.training.curves import write_csv, write_png
from m3e.training.records import TrainingDataset
from m3e.training.stopping import StopRequest, TrainingStopped, signal_name
from m3e.training.strategies import (
    apply_strategy,
    enable_gradient_checkpointing,
    is_lora,
    load_trainable_state,
    saveable,
    trainable_state,
)
from m3e.training.task import RunFacts, StepLoss, TrainableModel, TrainingTask

logger = logging.getLogger(__name__)
FINGERPRINTED_LATER = frozenset({"losses"})  # a task's fingerprint keys that older checkpoints were written without

# Options a card leaves out: where the run started and ended are said elsewhere, the rest are not settings.
_NOT_HYPER = ("model", "output", "progress", "weights", "task", "checkpoint_dir", "keep_checkpoint_dir", "encoding")


def _bf16_where_native(config: TrainConfig, device: torch.device) -> TrainConfig:
    """bf16 autocast only where the device computes bf16: on a CPU without it (AVX2, no AVX-512 or AMX) torch runs
    bf16 matrix products through a one-thread reference kernel, several times slower than fp32, so the run
    trains in fp32 and says so. The checkpoints' fingerprint leaves precision out: a run may resume on either."""
    if config.bf16 and device.type == "cpu" and not bf16_native():
        logger.warning("bf16 asked for, but this CPU has no bf16 kernels (no AVX-512 or AMX): training in fp32, "
                       "which is faster here")
        return dataclasses.replace(config, bf16=False)
    return config


@dataclass
class TrainResult:
    output: Path
    steps: int
    epochs_done: float
    train_seconds: float
    final_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None


@dataclass
class _Run:
    """Where a run stands: optimizer and schedule, position in the data, loss history, clock, progress bar."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    total: int  # optimizer steps of the whole run
    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # index into the epoch's batch plan
    epochs_done: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0  # training seconds before this process resumed the run
    started: float = 0.0  # perf_counter when this process began training
    resumed_from: int | None = None
    last_saved: int = -1  # the step of the newest checkpoint
    ex_rate: float | None = None  # smoothed examples per second
    show_bar: bool = False
    bar: Any = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started


@dataclass(frozen=True)
class _StepOutcome:
    dataset: str
    loss: float
    lr: float
    examples: int  # rows of the global batch
    seconds: float


class TrainingLoop:
    """Train ``task``'s model on its datasets as ``config`` says."""

    def __init__(self, task: TrainingTask, config: TrainConfig):
        if not task.datasets:
            raise M3EError("no training data")
        if config.task != task.name:
            raise M3EError(f"a {task.name} run was given a config for task {config.task}")
        self.task = task
        self.config = _bf16_where_native(resolve_defaults(config, task.num_parameters()), task.model.device)
        self.output = Path(self.config.output).expanduser()  # the final model, its card and loss curve
        self.checkpoints = self.config.checkpoint_path()  # checkpoints/ and the resume state
        self.history: list[dict[str, Any]] = []  # the loss curve, once trained
        self.dist = dist_.init_from_env()
        self._plan_sha: str | None = None
        self._apply_weights()
        self._saved_max_length = int(task.model.max_length)

    @property
    def model(self) -> TrainableModel:
        return self.task.model

    @property
    def datasets(self) -> Sequence[TrainingDataset]:
        return self.task.datasets

    def _apply_weights(self) -> None:
        for name, w in self.config.weights.items():
            match = [d for d in self.datasets if d.name == name]
            if not match:
                known = ", ".join(d.name for d in self.datasets)
                raise M3EError(f"weight given for unknown dataset {name!r} (datasets: {known})")
            for d in match:
                d.weight = float(w)

    # ------------------------------------------------------------------ setup
    def _prepare_model(self) -> None:
        cfg = self.config
        if cfg.max_length is not None:  # training-time truncation; saved models keep their own maximum
            self.model.max_length = min(int(cfg.max_length), self._saved_max_length)
        apply_strategy(
            self.model, cfg.strategy, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            head=self.task.head(),
        )
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.model.train()
        assert isinstance(self.model, torch.nn.Module)  # both of m3e's models are torch modules
        dist_.broadcast_parameters(self.model)

    def _fingerprint(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "datasets": [(d.name, d.type, len(d), d.weight) for d in self.datasets],
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "shuffle": cfg.shuffle,
            "no_duplicates": cfg.no_duplicates,
            "strategy": cfg.strategy,
            # The batches, not the number of processes: a run may resume on another world size (more or fewer
            # nodes) when every epoch plans the same batches (no short last batch dropped for equal slices).
            "plan": self._plan_digest(),
            **self.task.fingerprint(),
        }

    def _plan_digest(self) -> str:
        if self._plan_sha is None:
            digest = hashlib.sha1()
            for epoch in range(self.config.epochs):
                for batch in self._plan(epoch):
                    digest.update(repr((batch.dataset, batch.indices)).encode("ascii"))
            self._plan_sha = digest.hexdigest()
        return self._plan_sha

    def _plan(self, epoch: int) -> list[PlannedBatch]:
        return self.task.plan(self.config, epoch, drop_last=self.dist.enabled)  # equal slices per process

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, int, int]:
        cfg = self.config
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n else decay).append(p)
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}
        ]
        assert cfg.lr is not None  # resolve_defaults filled it
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=float(cfg.lr))
        lengths = [len(self._plan(e)) for e in range(cfg.epochs)]
        total = sum(lengths)
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        if total == 0:
            raise M3EError(f"no full batch of {cfg.batch_size} in the data; lower --batch-size")
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, total, warmup, cfg.scheduler))
        return opt, sched, total, warmup

    # ------------------------------------------------------------------ resume
    def _restore(self, checkpoint: Path, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
        state = ckpt.load_state(checkpoint)
        fp = self._fingerprint()
        saved = state.get("fingerprint") or {}
        if "world_size" in saved:  # written before the plan was fingerprinted
            fp = {k: v for k, v in fp.items() if k != "plan"} | {"world_size": self.dist.world_size}
        # keys that checkpoints written before them lack: such a checkpoint is checked on the rest
        fp = {k: v for k, v in fp.items() if k in saved or k not in FINGERPRINTED_LATER}
        if saved != fp:
            raise M3EError(
                f"{checkpoint} was written for other data or settings ({saved} vs {fp}); "
                "resume with the same data and options, or use a new --output"
            )
        if is_lora(self.model):
            load_trainable_state(self.model, state["trainable"])
        else:
            self.task.load_weights(checkpoint / "model")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        return state

    def _state(self, run: _Run, epoch: int, next_batch: int) -> dict[str, Any]:
        state = {
            "step": run.step,
            "epoch": epoch,
            "next_batch": next_batch,
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "history": run.history,
            "config": self.config.to_dict(),
            "fingerprint": self._fingerprint(),
            "elapsed_s": run.elapsed(),
        }
        if is_lora(self.model):
            state["trainable"] = trainable_state(self.model)
        return state

    # ------------------------------------------------------------------ train
    def train(self, resume: bool = False) -> TrainResult:
        """Train to the end (or to a stop request, which leaves a checkpoint and raises TrainingStopped)."""
        run = self._start(resume)
        stop_request = StopRequest().install()  # SIGTERM / Ctrl-C: finish this step, checkpoint, then stop
        try:
            while run.step < run.total and run.epoch < self.config.epochs:
                plan = self._plan(run.epoch)
                while run.next_batch < len(plan) and run.step < run.total:
                    outcome = self._train_step(run, plan)
                    self._log_step(run, outcome)
                    self._checkpoint_or_stop(run, len(plan), stop_request)
                if run.next_batch >= len(plan):
                    run.epoch, run.next_batch = run.epoch + 1, 0
        finally:
            stop_request.restore()
            run.bar.close()
        return self._finish(run)

    def _start(self, resume: bool) -> _Run:
        """Prepare the model and optimizer, then restore the latest checkpoint when resuming."""
        cfg = self.config
        if self.dist.enabled and cfg.batch_size % self.dist.world_size:
            raise M3EError(
                f"batch size {cfg.batch_size} must be divisible by the {self.dist.world_size} processes"
            )
        existing = self._existing_checkpoint(resume)
        if existing is not None and not resume:
            raise M3EError(
                f"{self.checkpoints} already has checkpoints of a run into {self.output}; pass --resume to "
                "continue, or choose another --output"
            )
        if existing is None and (self.output / "modules.json").is_file():
            reason = (f" and {self.checkpoints} no checkpoint to resume from (a successful run removes them "
                      "unless --keep-checkpoint-dir)" if resume else "; choose another --output, or delete it")
            raise M3EError(f"{self.output} already holds a finished model{reason}")
        torch.manual_seed(cfg.seed)  # dropout and LoRA initialisation; a resume restores the saved state below
        self._prepare_model()
        opt, sched, total, _warmup = self._optimizer()
        run = _Run(opt, sched, total)
        if resume and existing is not None:
            self._resume(run, existing)
        elif resume and self.dist.is_main:
            print(f"no checkpoint in {self.checkpoints}; starting from step 0", file=sys.stderr)
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        run.show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        run.bar = _bar(total, run.step, run.show_bar and self.dist.is_main)
        run.started = time.perf_counter()
        return run

    def _existing_checkpoint(self, resume: bool) -> Path | None:
        """The newest checkpoint of this run; on resume, also one of the earlier layout (``OUTPUT/checkpoints``),
        which then stays the checkpoint directory of the run."""
        found = ckpt.latest_checkpoint(self.checkpoints)
        if found is None and resume:
            legacy = ckpt.latest_checkpoint(self.output)
            if legacy is not None:
                self.checkpoints = self.output
                return legacy
        return found

    def _resume(self, run: _Run, checkpoint: Path) -> None:
        state = self._restore(checkpoint, run.opt, run.sched)
        run.step, run.epoch, run.next_batch = state["step"], state["epoch"], state["next_batch"]
        run.history, run.elapsed_before = list(state["history"]), float(state.get("elapsed_s", 0.0))
        run.resumed_from = run.last_saved = run.step
        run.epochs_done = float(run.epoch)
        if self.dist.is_main:
            print(f"resuming from {checkpoint} (step {run.step} of {run.total})", file=sys.stderr)

    def _train_step(self, run: _Run, plan: list[PlannedBatch]) -> _StepOutcome:
        """One optimizer step on the plan's next batch (this process's slice of it under torchrun)."""
        cfg = self.config
        t0 = time.perf_counter()
        pb = plan[run.next_batch]
        rng = batch_rng(cfg.seed, run.epoch, run.next_batch)
        step_loss: StepLoss = self.task.forward_backward(pb, rng, cfg, self.dist)
        params = [p for p in self.model.parameters() if p.requires_grad]
        dist_.average_gradients(params)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = run.opt.param_groups[0]["lr"]
        run.opt.step()
        run.sched.step()
        run.opt.zero_grad(set_to_none=True)
        run.step += 1
        run.next_batch += 1
        run.epochs_done = run.epoch + run.next_batch / len(plan)
        name = self.datasets[pb.dataset].name
        return _StepOutcome(name, step_loss.loss, lr, step_loss.examples, time.perf_counter() - t0)

    def _log_step(self, run: _Run, outcome: _StepOutcome) -> None:
        """The loss history, the progress bar, and (without a bar) a line per tenth of the run."""
        step, total, loss = run.step, run.total, outcome.loss
        rate = outcome.examples / max(outcome.seconds, 1e-9)  # examples (rows of the global batch) per second
        run.ex_rate = ex_rate = rate if run.ex_rate is None else 0.9 * run.ex_rate + 0.1 * rate
        if step % max(1, self.config.log_steps) == 0 or step == total:
            run.history.append({
                "step": step, "epoch": round(run.epochs_done, 4), "dataset": outcome.dataset, "loss": loss,
                "lr": outcome.lr, "examples_per_s": rate, "elapsed_s": run.elapsed(),
            })
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{ex_rate:.1f}", refresh=False)
        if not run.show_bar and self.dist.is_main and (step % max(1, total // 10) == 0 or step == total):
            line = f"step {step}/{total}  loss {loss:.4f}  {ex_rate:.1f} examples/s{_time_left(run)}"
            print(line, file=sys.stderr, flush=True)

    def _checkpoint_or_stop(self, run: _Run, plan_length: int, stop_request: StopRequest) -> None:
        """A checkpoint every save_steps, and one before stopping when a process was asked to stop."""
        signum = dist_.all_reduce_max(stop_request.signum or 0)  # every process stops at the same step
        periodic = bool(self.config.save_steps) and run.step % self.config.save_steps == 0
        if (periodic or signum) and run.step < run.total:
            pos = (run.epoch + 1, 0) if run.next_batch >= plan_length else (run.epoch, run.next_batch)
            self._checkpoint(run, *pos)
            run.last_saved = run.step
        if signum and run.step < run.total:
            saved = self.checkpoints / ckpt.CHECKPOINTS / ckpt.step_name(run.step)
            raise TrainingStopped(
                f"stopped by {signal_name(signum)} after step {run.step} of {run.total}; checkpoint saved in "
                f"{saved}: run the same command with --resume to continue",
                signum,
            )

    def _finish(self, run: _Run) -> TrainResult:
        """The final model (with its card and loss curve) in the output directory; then the checkpoints are
        removed, or (--keep-checkpoint-dir) kept with one of the last step."""
        elapsed = run.elapsed()
        self.history = run.history
        keep = self.config.keep_checkpoint_dir
        if keep and run.last_saved != run.step:
            self._checkpoint(run, run.epoch, run.next_batch)
        self.model.eval()
        self.model.max_length = self._saved_max_length
        if self.dist.is_main:
            self._save_final(run.step, elapsed, run.history)
            if not keep:
                self._remove_checkpoints()
        dist_.barrier()
        final_loss = run.history[-1]["loss"] if run.history else None
        return TrainResult(
            self.output, run.step, run.epochs_done, elapsed, final_loss, run.history, run.resumed_from
        )

    @contextmanager
    def _inference_max_length(self) -> Iterator[None]:
        training = self.model.max_length
        self.model.max_length = self._saved_max_length
        try:
            yield
        finally:
            self.model.max_length = training

    def _checkpoint(self, run: _Run, epoch: int, next_batch: int) -> None:
        if self.dist.is_main:
            state = self._state(run, epoch, next_batch)
            with self._inference_max_length():
                ckpt.save_checkpoint(
                    self.checkpoints, run.step, self.model, state, keep=self.config.keep_checkpoints
                )
            self.output.mkdir(parents=True, exist_ok=True)
            write_csv(run.history, self.output / "loss.csv")
            write_png(run.history, self.output / "loss.png")
        dist_.barrier()

    # ------------------------------------------------------------------ final model
    def card(
        self, steps: int, seconds: float, scores: dict[str, dict[str, float | None]] | None = None,
        scored_on: str = "offline suite",
    ) -> str:
        hyper = {k: v for k, v in self.config.applying().items() if k not in _NOT_HYPER and v is not None}
        hyper["world_size"] = self.dist.world_size
        facts = RunFacts(
            name=self.output.name, base_model=display_name(self.config.model), hyper=hyper, steps=steps,
            seconds=seconds, scores=scores, scored_on=scored_on,
            losses=(self.history[0]["loss"], self.history[-1]["loss"]) if self.history else None,
        )
        return self.task.card(facts)

    def _remove_checkpoints(self) -> None:
        """What the run wrote beside the model: its checkpoints and resume state (the directory too, when that
        leaves it empty; a --checkpoint-dir holding other files keeps them)."""
        shutil.rmtree(self.checkpoints / ckpt.CHECKPOINTS, ignore_errors=True)
        (self.checkpoints / EVAL_BEFORE).unlink(missing_ok=True)
        if self.checkpoints != self.output:
            with contextlib.suppress(OSError):  # not empty, or already gone
                self.checkpoints.rmdir()

    def _save_final(self, steps: int, seconds: float, history: list[dict[str, Any]]) -> None:
        write_csv(history, self.output / "loss.csv")
        write_png(history, self.output / "loss.png")
        save_model_into(self.model, self.output, self.card(steps, seconds), dtype=self.config.save_dtype)


def save_model_into(model: TrainableModel, out: Path, card: str, dtype: str | None = None) -> None:
    """Write the model's files into ``out`` without touching checkpoints/ and the loss curve.

    Built in a hidden temporary directory, then moved in entry by entry with modules.json last, so a directory
    with modules.json always holds a complete model.
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".final-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with saveable(model) as plain:
        was_training = plain.training
        plain.save(tmp, model_card=card, dtype=dtype)
        plain.train(was_training)
    (out / "modules.json").unlink(missing_ok=True)
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "modules.json"):
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(entry, target)
    shutil.rmtree(tmp, ignore_errors=True)


def _time_left(run: _Run) -> str:
    """``, about 12 min left`` from this process's pace so far (steps before a resume are not timed here)."""
    done_here = run.step - (run.resumed_from or 0)
    left = run.total - run.step
    if done_here <= 0 or left <= 0:
        return ""
    seconds = (time.perf_counter() - run.started) / done_here * left
    return f", about {seconds:.0f} s left" if seconds < 90 else f", about {seconds / 60:.0f} min left"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, initial: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
