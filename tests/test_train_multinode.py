"""Multi-node training as torchrun runs it: `torchrun --nnodes 2 --nproc-per-node 1` started twice on loopback
(node ranks 0 and 1, gloo) gives the loss and gradients of one process with the whole batch (cross-node
negatives); checkpoints are written by rank 0 only; a run stopped on two nodes resumes on one and ends with
the weights of a run that was never stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny_st_model
from tests.test_train_distributed import P, Q

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]  # slow: two torchrun launchers
ROOT = Path(__file__).resolve().parent.parent

# What each node's torchrun starts: one process, told its rank and the world by torchrun's environment.
WORKER = textwrap.dedent('''
    import json, os, signal, sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    job, model_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    from m3e.training.distributed import init_from_env

    info = init_from_env("gloo")
    if job == "gradients":
        from tests.test_train_distributed import _run

        results = {name: _run(model_dir, name, info.rank, info.world_size, None)
                   for name in ("softmax", "sigmoid", "cosent")}
        torch.save({"results": results, "node": os.environ["GROUP_RANK"], "world": info.world_size},
                   out / f"rank{info.rank}.pt")
    else:  # train, stopped by SIGTERM to rank 1 in its third step; each node has its own output directory
        import m3e
        import m3e.training.trainer as trainer_mod
        from m3e.training.stopping import TrainingStopped

        real, calls = trainer_mod.forward_backward, {"n": 0}

        def signal_rank1_on_third(*args, **kwargs):
            calls["n"] += 1
            if info.rank == 1 and calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)

        trainer_mod.forward_backward = signal_rank1_on_third
        data, run_dir = sys.argv[4], out / f"node{os.environ['GROUP_RANK']}"
        try:
            m3e.FineTuner.from_pretrained(model_dir, data).run(
                epochs=1, output_dir=run_dir, batch_size=8, save_steps=100, progress=False, lr=1e-3)
            outcome = "finished"
        except TrainingStopped as exc:
            outcome = str(exc)
        (out / f"stop{info.rank}.json").write_text(json.dumps({"outcome": outcome, "steps": calls["n"]}))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(tmp_path: Path, *args: str) -> None:
    """Start the worker on two "nodes": two torchrun launchers with node ranks 0 and 1 and one master."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    nodes = [
        subprocess.Popen([torchrun, "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
                          "--master-addr=127.0.0.1", f"--master-port={port}", str(script), *args],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=300)[0].decode() for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait(timeout=30)
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]


def test_two_nodes_give_the_gradients_of_one_process_with_the_whole_batch(tiny_st_model_dir, tmp_path):
    from tests.test_train_distributed import _run

    _two_nodes(tmp_path, "gradients", str(tiny_st_model_dir), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [(r["node"], r["world"]) for r in ranks] == [("0", 2), ("1", 2)]  # one process on each node
    for name in ("softmax", "sigmoid", "cosent"):
        single_loss, single_grads = _run(str(tiny_st_model_dir), name, 0, 1, None)
        for rank in ranks:
            loss, grads = rank["results"][name]
            assert loss == pytest.approx(single_loss, rel=1e-5), name
            for k in set(grads) - set(single_grads):  # parameters outside the graph (BERT's pooler)
                assert not grads[k].any(), k
            for k, g in single_grads.items():
                torch.testing.assert_close(grads[k], g, rtol=1e-4, atol=1e-6, msg=f"{name} {k}")


def _no_dropout_model(path: Path) -> Path:
    """The tiny model without dropout: two nodes then compute exactly what one process computes in training."""
    build_tiny_st_model(path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_stopped_on_two_nodes_resumed_on_one_ends_as_an_unstopped_run(tmp_path):
    import m3e

    model_dir = _no_dropout_model(tmp_path / "tiny")
    data = tmp_path / "pairs.jsonl"
    rows = [{"text": f"{q}{i}", "text_pos": f"{p}{i}"} for i in range(4) for q, p in zip(Q, P, strict=True)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    _two_nodes(tmp_path, "train", str(model_dir), str(tmp_path), str(data))
    for r in range(2):
        seen = json.loads((tmp_path / f"stop{r}.json").read_text())
        assert seen["steps"] == 3 and "SIGTERM after step 3 of 4" in seen["outcome"], (r, seen)
    node0 = tmp_path / "node0"
    latest = next(tmp_path.glob("node0*/**/LATEST"))  # the checkpoints of node 0's run
    assert latest.read_text().strip() == "step-00000003"
    assert not list(tmp_path.glob("node1*"))  # rank 0 alone writes checkpoints and files

    # Resume the two-node run on one process (world size 1) and finish it.
    options = {"epochs": 1, "batch_size": 8, "save_steps": 100, "progress": False, "lr": 1e-3}
    m3e.FineTuner.from_pretrained(str(model_dir), str(data)).run(output_dir=node0, resume=True, **options)
    m3e.FineTuner.from_pretrained(str(model_dir), str(data)).run(output_dir=tmp_path / "one", **options)
    resumed, straight = m3e.load(str(node0)), m3e.load(str(tmp_path / "one"))
    start = dict(m3e.load(str(model_dir)).named_parameters())
    moved = 0
    # AdamW divides by the gradient's running scale, so parameters whose gradient is almost zero take steps
    # that carry its rounding: 1e-4 is under a twentieth of the steps the weights took here (about 2.5e-3).
    for (name, a), (_, b) in zip(resumed.named_parameters(), straight.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=name)
        moved += int((a - start[name]).abs().max() > 1e-3)
    assert moved > 10  # training changed the weights: the comparison is not of two untouched models
    texts = ["今天天气很好", "保险理赔", "the cat sits on the mat"]
    torch.testing.assert_close(torch.as_tensor(resumed.encode(texts)), torch.as_tensor(straight.encode(texts)),
                               rtol=0, atol=1e-5)
