"""``auto`` by measurement: where the preference order was not measured on the CPU's family, the candidates are
timed on the CPU itself once per model, the fastest recorded and reused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import m3e
from m3e.backends import measurement, selection
from m3e.backends.measurement import auto_choice, fastest, read_record, time_runners
from m3e.cli import main
from tests.test_backends_auto import CASCADE_LAKE, TOLERANCE, cpu
from tests.test_backends_int8 import FIDELITY_TEXTS, _cos


class FakeClock:
    """A clock that each fake runner advances by its cost per text."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_runners_are_timed_per_workload_and_in_rotated_turns() -> None:
    clock = FakeClock()
    order: list[str] = []

    def runner(name: str, per_text: dict[int, float]):  # type: ignore[no-untyped-def]
        def run(features: dict[str, torch.Tensor]) -> torch.Tensor:
            batch, tokens = features["input_ids"].shape
            clock.now += batch * per_text[tokens]
            order.append(name)
            return torch.zeros(batch, tokens, 4)

        return run

    # "a" is faster on short texts, "b" on long ones; "b" wins the geometric mean
    runners = {"a": runner("a", {8: 0.001, 64: 0.010}), "b": runner("b", {8: 0.002, 64: 0.004})}
    workloads = {
        "queries": [{"input_ids": torch.zeros(4, 8, dtype=torch.long)}] * 2,
        "passages": [{"input_ids": torch.zeros(4, 64, dtype=torch.long)}],
    }
    rates = time_runners(runners, workloads, rounds=3, clock=clock)  # type: ignore[arg-type]
    assert rates["a"] == pytest.approx({"queries": 1000.0, "passages": 100.0})
    assert rates["b"] == pytest.approx({"queries": 500.0, "passages": 250.0})
    assert fastest(rates) == "b"
    assert fastest({"a": {"queries": 1000.0, "passages": 100.0}, "b": {"queries": 300.0, "passages": 300.0}}) == "a"
    # one untimed warm-up per workload, then the first runner of each round alternates
    timed = order[4:]
    assert [timed[0], timed[3], timed[6], timed[9], timed[12]] == ["a", "b", "b", "a", "a"]


@pytest.mark.slow  # exports MiniLM to OpenVINO and quantises it with NNCF
def test_auto_encodes_within_tolerance_and_times_its_candidates_where_the_order_is_a_guess(
    minilm_dir: Path, m3e_home: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # on this CPU as it is: the table's choice (or a timing, on a family the table does not cover)
    reference = m3e.load(str(minilm_dir)).encode(FIDELITY_TEXTS)
    model = m3e.load(str(minilm_dir), backend="auto")
    assert model.backend == auto_choice(model).backend != "auto"
    vectors = model.encode(FIDELITY_TEXTS)
    if model.backend == "torch":
        np.testing.assert_allclose(vectors, reference, atol=1e-5)
    else:
        assert _cos(reference, vectors).min() >= TOLERANCE[model.backend], model.backend
    for stale in (m3e_home / "auto").glob("*.json"):
        stale.unlink()

    # this CPU as a VNNI one without AVX512_BF16 would be seen (the engines still run on the real one and build
    # what it needs; what this adds is the timing)
    monkeypatch.setattr(selection, "detect_cpu", lambda: cpu(CASCADE_LAKE))
    with caplog.at_level(logging.INFO, logger="m3e.backends"):
        model = m3e.load(str(minilm_dir), backend="auto")
    records = list((m3e_home / "auto").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text(encoding="utf-8"))
    assert set(record["texts_per_s"]) == {"openvino-int8", "openvino"}
    assert all(rate > 0 for rates in record["texts_per_s"].values() for rate in rates.values())
    assert record["cpu"]["family"] == "vnni" and record["engines"]["openvino"]
    assert model.backend == record["choice"] in record["texts_per_s"]
    assert _cos(reference, model.encode(FIDELITY_TEXTS)).min() >= TOLERANCE[model.backend]
    said = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("timing openvino-int8, openvino") for m in said) == 1
    assert any(m.startswith(f"backend auto -> {model.backend}: fastest of") for m in said)

    # the next load reads the record instead of timing again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="m3e.backends"):
        again = m3e.load(str(minilm_dir), backend="auto")
    assert again.backend == model.backend
    assert not any(r.getMessage().startswith("timing") for r in caplog.records)

    # info shows the recorded choice without building or timing anything
    assert main(["info", str(minilm_dir), "--backends", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["backends"]
    assert shown["auto"] == model.backend and "timed on this CPU" in shown["why"]
    assert shown["candidates"] == ["openvino-int8", "openvino"]

    # a record made under other engine versions, or on another CPU, no longer holds
    kept = records[0].read_text(encoding="utf-8")
    record["engines"]["openvino"] = "2020.1"
    records[0].write_text(json.dumps(record), encoding="utf-8")
    assert read_record(model, ("openvino-int8", "openvino")) is None
    records[0].write_text(kept, encoding="utf-8")
    assert read_record(model, ("openvino-int8", "openvino")) is not None
    monkeypatch.setattr(measurement, "cpu_identity", lambda: {**record["cpu"], "threads": 64})
    assert read_record(model, ("openvino-int8", "openvino")) is None


def test_measure_goes_with_backends(tiny_st_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_st_model_dir), "--measure"]) == 2
    assert "--measure goes with --backends" in capsys.readouterr().err
