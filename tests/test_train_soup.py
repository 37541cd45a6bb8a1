"""m3e average / m3e.training.soup: the weighted average of models of one start."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import m3e
from m3e.errors import M3EError
from m3e.training.soup import average_models


def _shifted(src: Path, dst: Path, delta: float) -> Path:
    model = m3e.load(str(src))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(delta)
    return model.save(dst)


def test_average_is_the_weighted_mean_of_the_parameters(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    a = _shifted(tiny_st_model_dir, tmp_path / "a", 0.0)
    b = _shifted(tiny_st_model_dir, tmp_path / "b", 0.3)
    out = average_models([a, b], tmp_path / "avg", weights=[3, 1], dtype="fp32")
    pa, pb, po = (dict(m3e.load(str(p)).named_parameters()) for p in (a, b, out))
    for name, value in po.items():
        assert torch.allclose(value, 0.75 * pa[name] + 0.25 * pb[name], atol=1e-6), name
    vectors = m3e.load(str(out)).encode(["你好", "hello"])
    assert vectors.shape[0] == 2


def test_models_of_another_start_or_bad_weights_are_refused(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    a = _shifted(tiny_st_model_dir, tmp_path / "a", 0.0)
    other = tmp_path / "other"
    shutil.copytree(a, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace("[UNK]", "[unk]"))
    with pytest.raises(M3EError, match="tokenizer differs"):
        average_models([a, other], tmp_path / "x")
    with pytest.raises(M3EError, match="two models or more"):
        average_models([a], tmp_path / "x")
    with pytest.raises(M3EError, match="one non-negative weight per model"):
        average_models([a, a], tmp_path / "x", weights=[1.0])


def test_cli(tiny_st_model_dir: Path, tmp_path: Path) -> None:
    a = _shifted(tiny_st_model_dir, tmp_path / "a", 0.0)
    b = _shifted(tiny_st_model_dir, tmp_path / "b", 0.1)
    ok = subprocess.run([sys.executable, "-m", "m3e.cli", "average", str(a), str(b), "-o", str(tmp_path / "avg")],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "avg" / "model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "m3e.cli", "average", str(a), str(b), "-o", str(tmp_path / "x"),
                          "--weights", "a,b"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--weights must be numbers" in bad.stderr
