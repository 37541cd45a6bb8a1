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


class _CharacterVectors:
    """An embedder whose vector of a text depends on that text alone (a sum of per-character random vectors),
    so that results cannot depend on how texts are batched: blocks of any size must give the same rows."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def _encode(self, texts, **_kw):
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for ch in text[:512]:
                out[i] += np.random.default_rng(ord(ch)).standard_normal(self.dim).astype(np.float32)
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out

    encode_queries = encode_documents = _encode


def _reference_mining(model, recs, corpus, window, num_negatives, seed):
    """Mining as it was done with every text held (the earlier implementation): the streamed one must give the
    same rows."""
    import faiss
    import numpy as np

    passages = list(dict.fromkeys([p for r in recs for p in r.pos] + [t for t in corpus if t.strip()]))
    qv = model.encode_queries([r.text for r in recs])
    pv = model.encode_documents(passages)
    index = faiss.IndexFlatIP(pv.shape[1])
    index.add(pv)
    k = min(window[1], len(passages))
    _, hits = index.search(qv, k)
    rng = np.random.default_rng(seed)
    rows = []
    for i, rec in enumerate(recs):
        exclude = set(rec.pos) | {rec.text}
        candidates = [passages[j] for j in hits[i][window[0]:k] if j >= 0 and passages[j] not in exclude]
        if len(candidates) > num_negatives:
            negs = [candidates[j] for j in sorted(rng.choice(len(candidates), size=num_negatives, replace=False))]
        else:
            negs = candidates
        if len(negs) < num_negatives:
            pool = [p for p in passages if p not in exclude and p not in negs]
            if pool:
                negs += [pool[j] for j in rng.choice(len(pool), size=min(num_negatives - len(negs), len(pool)),
                                                     replace=False)]
        rows.append({"query": rec.text, "pos": list(rec.pos), "neg": negs})
    return rows


@pytest.mark.parametrize("block", [1, 5, 4096])
def test_streamed_mining_gives_the_rows_of_mining_everything_at_once(block):
    """Blocks of any size, repeated passages, a query that is also a passage, too few hits (random top-up)."""
    from m3e.training.mining import mine_streamed
    from m3e.training.records import Record

    model = _CharacterVectors()
    recs = [Record(f"查询{i % 9}号", (f"文档{i % 7}号", f"段落{i}")) for i in range(14)]
    corpus = [f"额外{i % 11}的文本" for i in range(25)] + ["", "查询3号", "  "]
    for window, negatives in (((0, 6), 3), ((2, 60), 4), ((30, 40), 5)):
        rows: list[dict] = []
        stats = mine_streamed(model, lambda: iter(recs), lambda: iter(corpus), rows.append, window=window,
                              num_negatives=negatives, block=block)
        assert rows == _reference_mining(model, recs, corpus, window, negatives, 42)
        assert stats.queries == 14 and stats.corpus == len({t for r in recs for t in r.pos} | set(corpus[:25]) |
                                                           {"查询3号"})


def test_a_large_corpus_tops_up_without_listing_every_passage():
    import numpy as np

    from m3e.training.mining import _random_fill

    rng = np.random.default_rng(0)
    taken = {0, 5, 9}
    drawn = _random_fill(rng, 1 << 20, taken, 7)
    assert len(set(drawn)) == 7 and not set(drawn) & taken and all(0 <= d < 1 << 20 for d in drawn)
    assert sorted(_random_fill(rng, 5, {0, 1}, 7)) == [2, 3, 4]  # fewer allowed than asked: all of them
    assert _random_fill(rng, 3, {0, 1, 2}, 2) == []


def test_mining_holds_neither_the_corpus_nor_a_huge_passage(tiny_st_model_dir, tmp_path):
    """A 24 MB corpus of long lines: the texts are read on each pass, cut at max_chars, never all held."""
    import tracemalloc

    import m3e
    from m3e.textio import RecordReader
    from m3e.training.mining import mine_streamed
    from m3e.training.records import Record

    model = m3e.load(str(tiny_st_model_dir))
    big = tmp_path / "corpus.txt"
    line = "很长的段落，" * 20_000  # 120,000 characters, 360 KB
    with big.open("w", encoding="utf-8") as fh:
        for i in range(64):
            fh.write(f"{i}{line}\n")
    recs = [Record(f"查询{i}", (f"文档{i}",)) for i in range(8)]
    rows: list[dict] = []
    tracemalloc.start()
    try:
        stats = mine_streamed(model, lambda: recs,
                              lambda: (r.text for r in RecordReader(big, max_chars=2000, blank="skip")),
                              rows.append, window=(0, 40), num_negatives=3, max_chars=2000, block=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.corpus == 72 and len(rows) == 8
    assert all(len(n) <= 2000 for r in rows for n in r["neg"])
    assert peak < 8_000_000, peak  # the corpus is 7.7 million characters (23 MB of UTF-8)


def test_mine_writes_nothing_on_bad_data_and_keeps_the_old_output(tiny_st_model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"query": "a", "pos": "b"}) + "\n" + '{"query": "c", "pos": \n', encoding="utf-8")
    out = tmp_path / "mined.jsonl"
    out.write_text("old\n", encoding="utf-8")
    assert main(["mine", str(tiny_st_model_dir), str(data), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data}:2: invalid JSON" in err
    scored = tmp_path / "scored.jsonl"
    scored.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 1}) + "\n", encoding="utf-8")
    assert main(["mine", str(tiny_st_model_dir), str(scored), "-o", str(out)]) == 2
    assert "mining needs pairs or triplets; scored are scored records" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "mined.jsonl", "pairs.jsonl", "scored.jsonl"]
