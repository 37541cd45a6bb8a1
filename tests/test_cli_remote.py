"""`m3e encode / similarity / search --server URL` against a real `m3e serve` on loopback: the same vectors,
matrix and results as the local commands, sides sent as the server's input_type, the API key from --api-key or
$M3E_API_KEY, no model loaded (no torch import) on the client, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import m3e
from m3e.cli import main as m3e_main
from m3e.index import build_index
from tests.test_index_store import write_jsonl
from tests.test_serve_cli import _free_port, _healthy, _m3e, _wait_until

pytestmark = pytest.mark.slow  # m3e serve in a subprocess

KEY = "remote-key"
TEXTS = ["今天天气很好", "The weather is nice today.", "保险理赔需要什么材料", "hello"]
DOCS = [
    {"id": "ins", "text": "保险理赔需要保单和事故证明。理赔材料要齐全。", "kind": "faq"},
    {"id": "car", "text": "汽车保险包括交强险和商业险。", "kind": "faq"},
    {"id": "weather", "text": "今天天气很好，我们去公园散步吧。", "kind": "chat"},
]


@pytest.fixture(scope="module")
def prompted_model(tiny_st_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with query and document prompts, so that the two sides give different vectors."""
    out = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(tiny_st_model_dir, out)
    cfg_file = out / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg.update(prompts={"query": "查询: ", "document": "文档: "}, default_prompt_name="query")
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def index_dir(prompted_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote-index")
    index, _ = build_index(write_jsonl(root / "docs.jsonl", DOCS), root / "idx", m3e.load(str(prompted_model)),
                           model_source=str(prompted_model), progress=False, chunk_size=60, overlap=10)
    index.close()
    return root / "idx"


@pytest.fixture(scope="module")
def server(prompted_model: Path, index_dir: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "M3E_API_KEY": KEY}
    proc = subprocess.Popen(
        _m3e("serve", str(prompted_model), "--name", f"tiny={prompted_model}", "--index", f"kb={index_dir}",
             "--port", str(port), "--threads", "1"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: proc.poll() is not None or _healthy(url), "m3e serve to become ready", timeout=120)
    except BaseException:
        proc.kill()
        raise
    if proc.poll() is not None:
        pytest.fail(f"m3e serve exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
    yield url
    proc.kill()
    proc.wait(10)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = m3e_main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _vectors(jsonl: str) -> np.ndarray:
    return np.array([json.loads(line)["embedding"] for line in jsonl.splitlines()], dtype=np.float32)


@pytest.mark.parametrize("side", [[], ["--query"], ["--document"]])
def test_encode_over_the_server_equals_the_local_model(
    server: str, prompted_model: Path, side: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, local, _ = _run(["encode", "-m", str(prompted_model), *side, *TEXTS], capsys)
    assert code == 0
    code, remote, _ = _run(["encode", "--server", server, "--api-key", KEY, *side, *TEXTS], capsys)
    assert code == 0
    assert [json.loads(line)["text"] for line in remote.splitlines()] == TEXTS
    assert np.abs(_vectors(remote) - _vectors(local)).max() <= 1e-5


def test_sides_reach_the_server(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, queries, _ = _run(["encode", "--server", server, "--api-key", KEY, "--query", *TEXTS], capsys)
    _, documents, _ = _run(["encode", "--server", server, "--api-key", KEY, "--document", *TEXTS], capsys)
    assert np.abs(_vectors(queries) - _vectors(documents)).max() > 1e-3


def test_encode_writes_npy_from_the_server(
    server: str, prompted_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [f"第{i}条 文本 text {i}" for i in range(300)]  # more than one request's worth
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, _, err = _run(["encode", "--server", server, "--api-key", KEY, "--document", "-i",
                         str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.npy")], capsys)
    assert code == 0, err
    got = np.load(tmp_path / "out.npy")
    expected = m3e.load(str(prompted_model)).encode_documents(texts)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5


def test_similarity_over_the_server(server: str, prompted_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in ([], ["--query", "天气"]):
        code, local, _ = _run(["similarity", "-m", str(prompted_model), *extra, *TEXTS], capsys)
        assert code == 0
        code, remote, _ = _run(["similarity", "--server", server, "--api-key", KEY, *extra, *TEXTS], capsys)
        assert code == 0
        assert remote.splitlines()[:-1] == local.splitlines()[:-1]  # the last line names the model


@pytest.mark.parametrize("options", [[], ["--mode", "sparse", "-k", "2"], ["--chunks"], ["--filter", "kind=chat"]])
def test_search_over_the_server_prints_what_the_local_search_prints(
    server: str, index_dir: Path, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, local, _ = _run(["search", str(index_dir), "保险理赔", *options, "--json"], capsys)
    assert code == 0
    code, remote, _ = _run(["search", "--server", server, "--api-key", KEY, "kb", "保险理赔", *options, "--json"],
                           capsys)
    assert code == 0
    local_rows = [json.loads(line) for line in local.splitlines()]
    remote_rows = [json.loads(line) for line in remote.splitlines()]
    assert local_rows and [r["id"] for r in remote_rows] == [r["id"] for r in local_rows]
    for a, b in zip(remote_rows, local_rows, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    code, text, _ = _run(["search", "--server", server, "--api-key", KEY, "kb", "保险理赔", *options], capsys)
    assert code == 0 and text.startswith("  1. ")


def test_api_key_from_the_environment_and_a_refused_key(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("M3E_API_KEY", KEY)
    code, out, _ = _run(["encode", "--server", server, "hello"], capsys)
    assert code == 0 and len(_vectors(out)) == 1
    code, out, err = _run(["encode", "--server", server, "--api-key", "wrong", "hello"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "401" in err and "--api-key" in err


def test_the_client_loads_no_model(server: str) -> None:
    script = (
        "import sys\nfrom m3e.cli import main\n"
        f"code = main(['similarity', '--server', {server!r}, 'a', 'b'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'a model library was imported'\n"
        "raise SystemExit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "M3E_API_KEY": KEY},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cosine similarity" in proc.stdout


def test_a_server_that_is_down_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    for command in (["encode", "x"], ["similarity", "a", "b"], ["search", "kb", "q"]):
        proc = subprocess.run(_m3e(*command, "--server", url), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the m3e server at " + url in lines[0], proc.stderr


def test_local_only_options_are_refused_with_server(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    for extra, words in ((["--no-normalize"], "--no-normalize"), (["--prompt", "x: "], "--prompt"),
                         (["--pooling", "cls"], "--pooling")):
        code, _, err = _run(["encode", "--server", server, "--api-key", KEY, *extra, "hello"], capsys)
        assert code == 2 and words in err, err


def test_empty_texts_are_refused_before_sending(server: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("第一行\n\n第三行\n", encoding="utf-8")
    code, out, err = _run(["encode", "--server", server, "--api-key", KEY, "-i", str(tmp_path / "in.txt")], capsys)
    assert code == 2 and out == "" and "1 empty text(s)" in err and "without --server" in err, err


def test_an_unknown_index_is_the_servers_message(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["search", "--server", server, "--api-key", KEY, "nope", "q"], capsys)
    assert code == 2 and "404" in err and "not served" in err, err

