"""Reranker training end to end on tiny models: listwise, pointwise and distilled runs, held-out scores, exact
resume, gradient accumulation, data errors with file:line, and a saved model that CrossEncoder scores alike."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

import m3e
from m3e.cli import main
from m3e.errors import M3EError
from m3e.training.config import TrainConfig
from m3e.training.rerank import RerankFineTuner
from tests.test_reranker import _bert_cross_encoder

pytestmark = pytest.mark.usefixtures("single_thread")

TOPICS = "天气 城市 旅游 吃饭 喝茶 咖啡 读书 写字 模型 向量 检索 问题 保险 医疗 汽车 房屋 价格 语言".split()
FILLER = "的 一 是 不 了 人 我 在 有 他 这 为 之 大 来 以 个 中 上 们".split()
# What makes a passage relevant here: its mark, where a negative has a decoy of the same length. A random model
# prefers some of these words to others but not the mark to every decoy; a tiny one learns them in a few dozen steps.
MARK = "答案"
DECOYS = ["北京", "上海", "广州", "深圳", "电脑", "笔记", "咖啡", "价格", "汽车"]
FAST = {"batch_size": 8, "group_size": 4, "lr": 1e-3, "progress": False}


def _passage(rng: random.Random, topic: str, relevant: bool) -> str:
    words = [*rng.sample(FILLER, 4), topic, MARK if relevant else rng.choice(DECOYS)]
    rng.shuffle(words)
    return "".join(words)


def _groups(path: Path, n: int, seed: int = 0, negatives: int = 7) -> Path:
    """BGE triplet records (as `m3e mine` writes them): a query, its positive, ``negatives`` negatives."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            topic = rng.choice(TOPICS)
            record = {
                "query": topic + "".join(rng.sample(FILLER, 2)) + str(i),
                "pos": [_passage(rng, topic, True)],
                "neg": [_passage(rng, rng.choice(TOPICS), False) for _ in range(negatives)],
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m3e.load_reranker(str(path)).state_dict().items()}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-7, msg=k)


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bert_cross_encoder(tmp_path_factory.mktemp("rerank-train") / "cross-encoder")


def test_training_lowers_the_loss_and_ranks_the_positive_first(tiny_st_model_dir, tmp_path):
    data = _groups(tmp_path / "groups.jsonl", 300)
    out = tmp_path / "out"
    tuner = RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(data))
    result = tuner.run(epochs=2, output_dir=out, eval_split=0.1, save_steps=30, save_dtype="fp32", **FAST)
    assert result.steps == 68  # 270 training groups (30 queries held out) in batches of 8, twice
    losses = [float(r.split(",")[3]) for r in (out / "loss.csv").read_text().splitlines()[1:]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    hit = result.scores["hit@1"]
    assert hit["before"] is not None and hit["after"] is not None and hit["after"] > hit["before"] + 0.3
    assert result.scores["mrr@10"]["after"] > result.scores["mrr@10"]["before"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "fresh one-logit classification head" in card and "listwise softmax cross-entropy" in card
    assert "## Scores (30 held-out groups, 10% of the queries of groups)" in card and "| hit@1 |" in card
    # the output is the reranker alone: its checkpoints (OUTPUT.checkpoints) are removed after the run
    assert not (tmp_path / "out.checkpoints").exists() and not (out / "checkpoints").exists()
    assert "model.safetensors" in {p.name for p in out.iterdir()}

    # what m3e saved scores alike in sentence-transformers' CrossEncoder
    pairs = [("天气我们", _passage(random.Random(1), "天气", True)), ("天气我们", "今天很好")]
    ours = m3e.load_reranker(str(out)).predict(pairs)
    np.testing.assert_allclose(ours, CrossEncoder(str(out), device="cpu").predict(pairs), atol=1e-5)
    np.testing.assert_allclose(ours, result.model.predict(pairs), atol=1e-6)


def test_resume_after_a_crash_gives_identical_weights(tiny_st_model_dir, tmp_path, monkeypatch):
    """A run killed after a checkpoint and resumed ends with the weights and losses of one that never stopped
    (gradient accumulation over chunks of groups included)."""
    from m3e.training.rerank.task import RerankTask

    data = _groups(tmp_path / "groups.jsonl", 56)
    opts = {**FAST, "save_steps": 3, "mini_batch": 3}
    a = RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(output_dir=tmp_path / "a", **opts)
    assert a.steps == 7

    real = RerankTask.forward_backward
    calls = {"n": 0}

    def crash_on_fifth(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RerankTask, "forward_backward", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(output_dir=tmp_path / "b", **opts)
    monkeypatch.setattr(RerankTask, "forward_backward", real)
    assert not (tmp_path / "b" / "modules.json").exists()
    b = RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
        output_dir=tmp_path / "b", resume=True, **opts
    )
    assert b.resumed_from == 3 and b.steps == 7
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    rows_a = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "loss.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in rows_a] == [r.split(",")[:4] for r in rows_b]


def test_sigterm_checkpoints_the_step_and_resumes(tiny_st_model_dir, tmp_path, monkeypatch):
    from m3e.training.rerank.task import RerankTask
    from m3e.training.stopping import TrainingStopped

    data = _groups(tmp_path / "groups.jsonl", 40)
    opts = {**FAST, "save_steps": 100}
    RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(output_dir=tmp_path / "a", **opts)
    real = RerankTask.forward_backward
    calls = {"n": 0}

    def signal_during_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RerankTask, "forward_backward", signal_during_third)
    with pytest.raises(TrainingStopped, match=r"SIGTERM after step 3 of 5"):
        RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(output_dir=tmp_path / "b", **opts)
    monkeypatch.setattr(RerankTask, "forward_backward", real)
    b = RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(data)).run(
        output_dir=tmp_path / "b", resume=True, **opts
    )
    assert b.resumed_from == 3
    _assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_gradient_accumulation_over_chunks_of_groups_is_exact(tiny_st_model_dir, tmp_path):
    from m3e.training.batch_plan import batch_rng
    from m3e.training.distributed import DistInfo
    from m3e.training.rerank.task import RerankTask

    tuner = RerankFineTuner.from_pretrained(str(tiny_st_model_dir), str(_groups(tmp_path / "g.jsonl", 8)))
    model = tuner.model.eval()  # no dropout: the chunks see the same network as the whole batch
    grads = []
    for chunk in (None, 3):
        config = tuner.config.updated({"group_size": 4, "mini_batch": chunk, "batch_size": 8})
        task = RerankTask(model, tuner.datasets, config)
        (batch,) = task.plan(config, 0, drop_last=False)
        model.zero_grad(set_to_none=True)
        step = task.forward_backward(batch, batch_rng(0, 0, 0), config, DistInfo())
        grads.append((step.loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_whole, whole), (loss_chunks, chunks) = grads
    assert step.examples == 32 and loss_chunks == pytest.approx(loss_whole, rel=1e-5)
    for g_whole, g_chunks in zip(whole, chunks, strict=True):
        torch.testing.assert_close(g_chunks, g_whole, rtol=1e-4, atol=1e-6)


def test_pointwise_bce_with_scored_pairs_bf16_and_lora(tiny_st_model_dir, tmp_path):
    data = _groups(tmp_path / "groups.jsonl", 24)
    scored = tmp_path / "labels.csv"
    scored.write_text("sentence1,sentence2,score\n" + "".join(
        f"天气{i},{_passage(random.Random(i), '天气', i % 2 == 0)},{1.0 if i % 2 == 0 else 0.2}\n" for i in range(16)
    ), encoding="utf-8")
    out = tmp_path / "o"
    rc = main(["finetune", "--task", "rerank", str(tiny_st_model_dir), str(data), str(scored), "--output", str(out),
               "--loss", "bce", "--batch-size", "8", "--group-size", "3", "--bf16", "--strategy", "lora",
               "--no-progress"])
    assert rc == 0
    rows = (out / "loss.csv").read_text().splitlines()[1:]
    assert {r.split(",")[2] for r in rows} == {"groups", "labels"} and len(rows) == 3 + 2
    assert all(np.isfinite(float(r.split(",")[3])) for r in rows)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "pointwise binary cross-entropy" in card and '"strategy": "lora"' in card
    before = CrossEncoder(str(tmp_path / "o"), device="cpu").model.state_dict()
    assert not any("lora" in k for k in before)  # adapters merged: a plain classifier


def test_distillation_from_a_teacher_is_scored_once(tiny_st_model_dir, cross_encoder_dir, tmp_path, monkeypatch):
    from m3e.training.rerank.teacher import Teacher

    data = _groups(tmp_path / "groups.jsonl", 24)
    opts = {**FAST, "group_size": 5}
    for teacher, kind in ((str(cross_encoder_dir), "logit"), (str(tiny_st_model_dir), "cosine")):
        out = tmp_path / kind
        result = RerankFineTuner.from_pretrained(str(cross_encoder_dir), str(data), teacher=teacher).run(
            output_dir=out, **opts
        )
        assert result.steps == 3 and result.final_loss is not None and result.final_loss >= 0
        card = (out / "README.md").read_text(encoding="utf-8")
        assert f"KL distillation from the teacher's {kind} over each group" in card
        assert "starting from its own weights and classification head" in card
    caches = sorted(p.name for p in tmp_path.glob("groups.jsonl.teacher-*.npz"))
    assert len(caches) == 2  # one per teacher, beside the data

    def no_scoring(self, device):
        raise AssertionError("the teacher scored the data again")

    monkeypatch.setattr(Teacher, "scorer", no_scoring)
    again = RerankFineTuner.from_pretrained(str(cross_encoder_dir), str(data), teacher=str(cross_encoder_dir))
    first = again.run(output_dir=tmp_path / "again", **opts)
    assert first.final_loss == pytest.approx(
        float((tmp_path / "logit" / "loss.csv").read_text().splitlines()[-1].split(",")[3]), rel=1e-5
    )
    # another file (same name, other bytes) is another key
    _groups(data, 24, seed=5)
    with pytest.raises(AssertionError, match="scored the data again"):
        RerankFineTuner.from_pretrained(str(cross_encoder_dir), str(data), teacher=str(cross_encoder_dir)).run(
            output_dir=tmp_path / "changed", **opts
        )


def test_bad_records_name_file_and_line(tiny_st_model_dir, tmp_path, capsys):
    cases = {
        "missing.jsonl": ('{"query": "a", "pos": ["b"], "neg": ["c"]}\n{"query": "a", "pos": [], "neg": ["c"]}\n',
                          "missing.jsonl:2: field 'pos' is missing or empty"),
        "score.csv": ("sentence1,sentence2,score\na,b,1\na,c,0.5\n\na,d,3\n",
                      "score.csv:5: a reranker's scored pair needs a score in [0, 1]"),
        "pairs.jsonl": ('{"query": "a", "pos": ["b"]}\n', "pairs without negatives cannot train a reranker"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        rc = main(["finetune", "--task", "rerank", str(tiny_st_model_dir), str(tmp_path / name),
                   "--output", str(tmp_path / "x")])
        assert rc == 2 and message in capsys.readouterr().err, name


def test_options_belong_to_their_task(tmp_path):
    with pytest.raises(M3EError, match="group_size applies to task rerank only"):
        TrainConfig(group_size=4)
    with pytest.raises(M3EError, match="symmetric applies to task embed only"):
        TrainConfig(task="rerank", symmetric=True)
    with pytest.raises(M3EError, match="loss sigmoid does not apply to task rerank"):
        TrainConfig(task="rerank", loss="sigmoid")
    with pytest.raises(M3EError, match="loss bce does not apply to task embed"):
        TrainConfig(loss="bce")
    rc = main(["finetune", "MODEL", "DATA", "--output", str(tmp_path / "x"), "--eval-split", "0.1"])
    assert rc == 2


@pytest.mark.slow
def test_kill9_then_resume(tiny_st_model_dir, tmp_path):
    data = _groups(tmp_path / "groups.jsonl", 320)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "m3e.cli", "finetune", "--task", "rerank", str(tiny_st_model_dir), str(data),
           "--output", str(out), "--batch-size", "8", "--group-size", "4", "--epochs", "2", "--save-steps", "4",
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "out.checkpoints" / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 180
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # not a wait: the kill should land in later steps or the next checkpoint write
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "modules.json").exists()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [int(r.split(",")[0]) for r in (out / "loss.csv").read_text().splitlines()[1:]] == list(range(1, 81))
    straight = tmp_path / "straight"
    subprocess.run([*cmd[:cmd.index("--output") + 1], str(straight), *cmd[cmd.index("--output") + 2 :]], env=env,
                   check=True, capture_output=True, timeout=300)
    _assert_same_weights(straight, out)
