"""Fine-tuning end to end on the tiny model: one-liners, strategies, checkpoints, exact resume, kill -9, recipes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import m3e
from m3e.cli import main

WORDS = "天气 很好 我们 公园 北京 上海 城市 旅游 吃饭 喝茶 咖啡 读书 写字 模型 向量 检索 问题 答案 保险 医疗 汽车 房屋 价格".split()


pytestmark = pytest.mark.usefixtures("single_thread")


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
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["LATEST", "step-00000004", "step-00000006"]
    m3e.load(str(out / "checkpoints" / "step-00000004" / "model"))  # every checkpoint is a loadable model
    assert result.model is tuner.model
    # the same output again without --resume is refused
    with pytest.raises(m3e.M3EError, match="--resume"):
        tuner.run(epochs=1, output_dir=out, batch_size=8, progress=False)


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
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6, msg=k)
    la = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    lb = (tmp_path / "b" / "loss.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in la] == [r.split(",")[:4] for r in lb]


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
        changed = {k for k in base if not torch.equal(base[k], tuned[k])}
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


@pytest.mark.slow
def test_kill9_then_resume(tiny_st_model_dir, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl", 320)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "m3e.cli", "finetune", str(tiny_st_model_dir), str(data), "--output", str(out),
           "--batch-size", "16", "--epochs", "2", "--save-steps", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "checkpoints" / "LATEST"
    deadline = time.time() + 180
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # land somewhere in the middle of later steps or the next checkpoint write
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().strip().split("-")[1])
    assert killed_at >= 2 and not (out / "modules.json").exists()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = int(done.stderr.split("(step ")[1].split(" ")[0])
    assert resumed >= killed_at  # the newest complete checkpoint (a later one may have completed before the kill)
    steps = [int(r.split(",")[0]) for r in (out / "loss.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 41))
    m3e.load(str(out)).encode(["天气很好"])
