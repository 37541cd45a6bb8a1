"""Hard-negative mining with faiss: rank window, positives excluded, output readable as triplets."""

from __future__ import annotations

import json

import pytest

from m3e.cli import main
from m3e.training.records import load_datasets

pytestmark = pytest.mark.usefixtures("single_thread")


def test_mine_cli(tiny_st_model_dir, tmp_path):
    words = "天气 很好 我们 公园 北京 上海 城市 旅游 吃饭 喝茶 咖啡 读书 写字 模型 向量 检索".split()
    rows = [{"query": f"{words[i]}{words[(i + 3) % 16]}", "pos": [f"{words[i]}{words[(i + 5) % 16]}", f"p{i}"]} for i in range(16)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"额外{w}" for w in words) + "\n", encoding="utf-8")
    out = tmp_path / "mined.jsonl"
    rc = main(["mine", str(tiny_st_model_dir), str(data), "--output", str(out), "--corpus", str(corpus),
               "--rank-window", "2-20", "--negatives", "3"])
    assert rc == 0
    mined = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(mined) == 16
    for src, got in zip(rows, mined, strict=True):
        assert got["query"] == src["query"] and got["pos"] == src["pos"]
        assert len(got["neg"]) == 3 and len(set(got["neg"])) == 3
        assert not set(got["neg"]) & set(src["pos"])
    (ds,) = load_datasets(out)
    assert ds.type == "triplet"
    assert main(["mine", str(tiny_st_model_dir), str(data), "--output", str(out), "--rank-window", "5-2"]) == 2


def test_mine_reads_data_paths(tiny_st_model_dir, tmp_path, monkeypatch):
    """``data:train/...`` and ``data:distill/...`` name files inside m3e's data directory, as in recipes."""
    monkeypatch.setenv("M3E_HOME", str(tmp_path / "home"))
    data = tmp_path / "home" / "data"
    (data / "train").mkdir(parents=True)
    (data / "distill").mkdir()
    rows = [{"text": f"问题{i}", "text_pos": f"答案{i}"} for i in range(8)]
    (data / "train" / "qa.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (data / "distill" / "extra.jsonl").write_text(
        "".join(json.dumps({"text": f"段落{i}"}, ensure_ascii=False) + "\n" for i in range(8)), encoding="utf-8")
    out = tmp_path / "mined.jsonl"
    assert main(["mine", str(tiny_st_model_dir), "data:train/qa.jsonl", "--corpus", "data:distill/extra.jsonl",
                 "--rank-window", "1-16", "--negatives", "2", "--no-random-fill", "-o", str(out)]) == 0
    mined = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [m["query"] for m in mined] == [r["text"] for r in rows]
    assert any(n.startswith("段落") for m in mined for n in m["neg"])  # the corpus was read
    assert main(["mine", str(tiny_st_model_dir), "data:train/qa.jsonl", "--corpus", "data:distill/none.jsonl",
                 "-o", str(out)]) == 2


def test_window_is_respected(tiny_st_model_dir):
    import numpy as np

    import m3e
    from m3e.training.mining import mine_hard_negatives
    from m3e.training.records import Record

    model = m3e.load(str(tiny_st_model_dir))
    recs = [Record(f"查询{i}", (f"文档{i}",)) for i in range(12)]
    corpus = [f"额外{i}" for i in range(20)]
    rows, stats = mine_hard_negatives(model, recs, corpus=corpus, window=(3, 8), num_negatives=2, random_fill=False)
    passages = list(dict.fromkeys([r.pos[0] for r in recs] + corpus))
    qv = model.encode_queries([r.text for r in recs])
    pv = model.encode_documents(passages)
    scores = qv @ pv.T
    for i, row in enumerate(rows):
        ranked = np.sort(scores[i])[::-1]
        for neg in row["neg"]:
            assert neg != recs[i].pos[0]
            s = scores[i][passages.index(neg)]
            # ranks 3..7 of the similarity order (a small tolerance for faiss vs numpy rounding on ties)
            assert ranked[7] - 1e-5 <= s <= ranked[3] + 1e-5
    assert stats.random_fill == 0


def test_mine_progress_and_quiet(tiny_st_model_dir, tmp_path, capsys):
    """--progress: a bar with rate and ETA over the encoded texts; -q: nothing but the output file."""
    rows = [{"query": f"问题{i}天气", "pos": [f"答案{i}公园"]} for i in range(24)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "mined.jsonl"
    args = ["mine", str(tiny_st_model_dir), str(data), "--output", str(out), "--rank-window", "1-10",
            "--negatives", "2"]
    assert main([*args, "--progress"]) == 0
    err = capsys.readouterr().err
    assert "encode" in err and "text/s" in err and "<" in err and "negatives" in err  # tqdm's "elapsed<left"
    out.unlink()
    assert main([*args, "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "" and len(out.read_text(encoding="utf-8").splitlines()) == 24
