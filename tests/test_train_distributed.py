"""Cross-device negatives: 2 CPU processes on gloo give the loss and gradients of the concatenated batch; a stop
signal seen by one process stops both at the same step."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch

Q = ["今天天气很好", "北京是城市", "保险理赔", "the cat sits", "向量检索", "喝茶吃饭", "汽车价格", "hello world"]
P = ["天气晴", "北京上海", "医疗保险", "a cat on the mat", "检索模型", "咖啡", "房屋价格", "good book"]
N = ["股票", "广州", "汽车", "stock market fell", "句子表示", "读书", "电脑", "bad weather"]
SCORES = [0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4]


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]  # slow: two gloo processes


def _losses():
    from m3e.training.losses import CoSENTLoss, SigmoidLoss, SoftmaxLoss

    return {
        "softmax": (SoftmaxLoss(0.05), [Q, P, N], None),
        "sigmoid": (SigmoidLoss(0.05), [Q, P], None),
        "cosent": (CoSENTLoss(0.05), [Q, P], SCORES),
    }


def _run(model_dir: str, name: str, rank: int, world: int, mini_batch: int | None):
    import numpy as np

    import m3e
    from m3e.training.distributed import average_gradients
    from m3e.training.gradcache import forward_backward

    loss_fn, columns, labels = _losses()[name]
    b = len(columns[0]) // world
    cols = [c[rank * b : (rank + 1) * b] for c in columns]
    lab = np.array(labels[rank * b : (rank + 1) * b], dtype=np.float32) if labels else None
    model = m3e.load(model_dir)
    model.eval()
    loss = forward_backward(model, cols, lab, loss_fn, gather=world > 1, mini_batch=mini_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    average_gradients(params)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name in ("softmax", "sigmoid", "cosent"):
            results[name] = _run(model_dir, name, rank, world, None)
        results["softmax-gradcache"] = _run(model_dir, "softmax", rank, world, 2)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_single_process(tiny_st_model_dir, tmp_path):
    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).parent))
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_st_model_dir), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name in ("softmax", "sigmoid", "cosent", "softmax-gradcache"):
        single_loss, single_grads = _run(str(tiny_st_model_dir), name.split("-")[0], 0, 1, None)
        for r in range(2):
            loss, grads = ranks[r][name]
            assert loss == pytest.approx(single_loss, rel=1e-5), (name, r)
            for k in set(grads) - set(single_grads):  # parameters outside the graph (e.g. BERT's pooler)
                assert not grads[k].any(), k
            for k, g in single_grads.items():
                torch.testing.assert_close(grads[k], g, rtol=1e-4, atol=1e-6, msg=f"{name} rank {r} {k}")


def _stop_worker(rank: int, world: int, port: int, model_dir: str, data: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    import m3e
    import m3e.training.trainer as trainer_mod
    from m3e.training.stopping import TrainingStopped

    real = trainer_mod.forward_backward
    calls = {"n": 0}

    def signal_rank1_on_third(*args, **kwargs):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    trainer_mod.forward_backward = signal_rank1_on_third
    # a process that did not stop would wait on the other's next collective: fail in a minute, not hang
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        outcome = "finished"
        try:
            m3e.FineTuner.from_pretrained(model_dir, data).run(
                epochs=1, output_dir=Path(out_dir) / "run", batch_size=8, save_steps=100, progress=False
            )
        except TrainingStopped as exc:
            outcome = str(exc)
        (Path(out_dir) / f"stop{rank}.json").write_text(json.dumps({"outcome": outcome, "steps": calls["n"]}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_at_the_same_step(tiny_st_model_dir, tmp_path):
    import torch.multiprocessing as mp

    data = tmp_path / "pairs.jsonl"
    rows = [{"text": f"{q}{i}", "text_pos": f"{p}{i}"} for i in range(4) for q, p in zip(Q, P, strict=True)]
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    sys.path.insert(0, str(Path(__file__).parent))
    mp.spawn(_stop_worker, args=(2, _free_port(), str(tiny_st_model_dir), str(data), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        seen = json.loads((tmp_path / f"stop{r}.json").read_text())
        assert seen["steps"] == 3 and "SIGTERM after step 3 of 4" in seen["outcome"], (r, seen)
    assert (tmp_path / "run.checkpoints" / "checkpoints" / "LATEST").read_text().strip() == "step-00000003"
