"""Training inputs in another encoding: `m3e finetune` / `m3e train` / `m3e mine` read a gb18030 (or any
ASCII-compatible) .jsonl / .json / .csv with ``--encoding``; without it such a file is one line naming the file,
the line and the byte offset, exit status 2."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3e.cli import main
from m3e.errors import InputError, M3EError
from m3e.training.config import TrainConfig
from m3e.training.records import load_datasets, load_file

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Characters gb18030 encodes, including ones outside GBK (emoji, rare CJK) and ones CSV and JSON escape.
TEXT = st.text(alphabet=st.sampled_from(list('ab ,"\'\t\\保险理赔天气€é😀𠀀')) | st.characters(
    blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(lambda t: t.strip() != "")
PAIRS = [{"query": f"第{i}个问题：保险理赔要什么材料", "pos": f"第{i}个回答：身份证和保单"} for i in range(16)]


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _json(rows: list[dict[str, str]]) -> str:
    return json.dumps(rows, ensure_ascii=False, indent=1)


WRITERS = {".jsonl": _jsonl, ".csv": _csv, ".json": _json}


@FUZZ
@given(rows=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6), suffix=st.sampled_from(list(WRITERS)))
def test_a_gb18030_file_reads_back_with_its_encoding(tmp_path_factory, rows, suffix):
    records = [{"query": q, "pos": p} for q, p in rows]
    path = tmp_path_factory.mktemp("g") / f"pairs{suffix}"
    path.write_bytes(WRITERS[suffix](records).encode("gb18030"))
    (ds,) = load_datasets(path, encoding="gb18030")
    assert [(r.text, r.pos[0]) for r in ds.records] == [(q, p) for q, p in rows]
    assert ds.encoding == "gb18030"
    try:
        utf8 = [(r.text, r.pos[0]) for r in load_file(path).records]
    except InputError as exc:  # the usual case: one line naming the file, the line and the byte offset
        assert str(exc).startswith(f"{path}:") and "not valid UTF-8 at byte " in str(exc)
        assert "--encoding" in str(exc)
    else:  # gb18030 of ASCII text is ASCII
        assert utf8 == [(q, p) for q, p in rows]


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_the_byte_offset_and_line_of_the_first_undecodable_byte(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    text = WRITERS[suffix]([{"query": "ascii only", "pos": "fine"}, {"query": "保险", "pos": "理赔"}])
    path.write_bytes(text.encode("gb18030"))
    offset = text.encode("utf-8").index("保".encode())
    line = text[: text.index("保")].count("\n") + 1
    with pytest.raises(InputError, match=rf"p\{suffix}:{line}: not valid UTF-8 at byte {offset} of the file "
                                         r"\(training files are read as UTF-8: choose another with --encoding"):
        load_file(path)
    assert load_file(path, encoding="gb18030").records[1].text == "保险"
    # a byte the chosen codec cannot decode names that codec and says to choose the file's encoding
    ascii_text = WRITERS[suffix]([{"query": "ascii", "pos": "only"}, {"query": "x", "pos": "y"}])
    path.write_bytes(ascii_text.encode() + b"\x80\n")
    with pytest.raises(InputError, match=rf"not valid big5 at byte {len(ascii_text.encode())} of the file "
                                         r"\(training files are read as big5 here: choose the file's encoding"):
        load_file(path, encoding="big5")


def test_the_encoding_is_a_checked_training_option():
    assert TrainConfig().encoding == "utf-8"
    assert TrainConfig(encoding="gb18030").encoding == "gb18030"
    with pytest.raises(M3EError, match="unknown encoding 'klingon'"):
        TrainConfig(encoding="klingon")
    with pytest.raises(M3EError, match="encoding 'utf-16' is not supported"):
        TrainConfig.from_dict({"encoding": "utf-16"})


def _gb18030_pairs(tmp_path: Path, suffix: str = ".jsonl") -> Path:
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(WRITERS[suffix](PAIRS).encode("gb18030"))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_finetune_reads_a_gb18030_file_with_encoding(tmp_path, tiny_st_model_dir, single_thread, capsys, suffix):
    data = _gb18030_pairs(tmp_path, suffix)
    out = tmp_path / "out"
    args = ["finetune", str(tiny_st_model_dir), str(data), "-o", str(out), "--batch-size", "8", "--max-steps", "2",
            "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    line = 2 if suffix == ".csv" else 1  # a CSV's first line is its header
    assert len(err.splitlines()) == 1 and f"{data}:{line}: not valid UTF-8 at byte " in err and "--encoding" in err
    assert not out.exists()
    assert main([*args, "--encoding", "gb18030"]) == 0
    assert (out / "modules.json").is_file()
    assert "encoding" not in (out / "README.md").read_text(encoding="utf-8")  # how files are read is no hyper-parameter


def test_a_recipe_takes_the_encoding_per_dataset_and_from_the_flag(tmp_path, tiny_st_model_dir, single_thread,
                                                                   capsys):
    data = _gb18030_pairs(tmp_path)
    (tmp_path / "utf8.jsonl").write_text(_jsonl(PAIRS[:8]), encoding="utf-8")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({
        "model": str(tiny_st_model_dir), "output": str(tmp_path / "out"),
        "datasets": [{"path": str(data)}, {"path": "utf8.jsonl", "encoding": "utf-8"}],
        "train": {"batch_size": 8, "max_steps": 2, "progress": False},
    }), encoding="utf-8")
    assert main(["train", "--recipe", str(recipe)]) == 2
    assert f"{data}:1: not valid UTF-8" in capsys.readouterr().err
    assert main(["train", "--recipe", str(recipe), "--encoding", "gb18030"]) == 0
    assert (tmp_path / "out" / "modules.json").is_file()


def test_mine_reads_gb18030_data_and_corpus_with_encoding(tmp_path, tiny_st_model_dir, single_thread, capsys):
    data = _gb18030_pairs(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("".join(f"额外的段落{i}：天气很好\n" for i in range(10)).encode("gb18030"))
    out = tmp_path / "mined.jsonl"
    args = ["mine", str(tiny_st_model_dir), str(data), "--corpus", str(corpus), "-o", str(out), "--negatives", "2",
            "--rank-window", "1-20"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data}:1: not valid UTF-8 at byte 11" in err and not out.exists()
    assert main([*args, "--encoding", "gb18030"]) == 0
    mined = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]  # written as UTF-8
    assert [m["query"] for m in mined] == [p["query"] for p in PAIRS]
    assert any(n.startswith("额外的段落") for m in mined for n in m["neg"])
