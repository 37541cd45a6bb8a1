"""`m3e index` on bad input and interrupted work: a failed new build removes what it created, an interrupted
one waits for --resume, duplicated and unknown ids are errors, an empty corpus is "no records"."""

from __future__ import annotations

import json

import pytest

from m3e.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _docs(n, prefix="d"):
    return [{"id": f"{prefix}{i}", "text": f"第{i}个文档：保险理赔需要哪些材料。"} for i in range(n)]


def _build(corpus, out, model, *extra):
    return main(["index", "build", str(corpus), "--out", str(out), "-m", str(model), "--no-progress", *extra])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("dup.jsonl", "".join(json.dumps(r) + "\n" for r in [*_docs(20), {"id": "d3", "text": "again"}]),
     "dup.jsonl:21: duplicate document id 'd3' (an earlier record has it)"),
    ("open.csv", 'id,text\n1,ok\n2,"never closed\n3,swallowed\n', "open.csv:3: a quoted field starting in this row"),
    ("empty.jsonl", "\n", "empty.jsonl: no records"),
    ("latin.txt", "ok\ncaf\xe9\n", "latin.txt:2: not valid UTF-8 at byte 6"),
])
def test_a_failed_new_build_removes_what_it_created(tmp_path, tiny_st_model_dir, capsys, name, content, message):
    corpus = tmp_path / name
    corpus.write_bytes(content.encode("latin-1") if name == "latin.txt" else content.encode("utf-8"))
    out = tmp_path / "idx"
    assert _build(corpus, out, tiny_st_model_dir, "--batch-chunks", "4") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and f"the failed build was not kept: {out} was removed" in err and "\n" not in err, err
    assert not out.exists()
    if name == "latin.txt":  # the same file read in its own encoding builds
        assert _build(corpus, out, tiny_st_model_dir, "--encoding", "latin-1") == 0


def test_an_interrupted_build_waits_for_resume(tmp_path, tiny_st_model_dir, capsys, monkeypatch):
    from m3e.index import Index
    from m3e.index.lance_store import LanceStore

    corpus = _jsonl(tmp_path / "c.jsonl", _docs(40))
    out = tmp_path / "idx"
    real = LanceStore.add
    calls = [0]

    def interrupt_third(self, rows, vectors):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(self, rows, vectors)

    monkeypatch.setattr(LanceStore, "add", interrupt_third)
    assert _build(corpus, out, tiny_st_model_dir, "--batch-chunks", "8") == 130
    assert "interrupted; 16 documents stored" in capsys.readouterr().err
    monkeypatch.setattr(LanceStore, "add", real)
    assert _build(corpus, out, tiny_st_model_dir) == 2
    assert "unfinished build (16 documents stored): --resume continues it" in capsys.readouterr().err
    assert _build(corpus, out, tiny_st_model_dir, "--resume") == 0
    assert "(24 documents / 24 chunks encoded now, 16 already stored before resuming)" in capsys.readouterr().out
    with Index.open(out) as index:
        assert index.store.count_docs() == 40


def test_delete_unknown_ids_is_an_error_unless_missing_ok(tmp_path, tiny_st_model_dir, capsys):
    out = tmp_path / "idx"
    assert _build(_jsonl(tmp_path / "c.jsonl", _docs(5)), out, tiny_st_model_dir) == 0
    capsys.readouterr()
    assert main(["index", "delete", str(out), "--id", "d1", "--id", "nope"]) == 2
    err = capsys.readouterr().err
    assert "1 of the ids are not in" in err and "'nope'" in err and "nothing deleted" in err
    assert f"{out} holds 5 documents" in err
    assert main(["index", "delete", str(out), "--id", "d1", "--id", "nope", "--missing-ok"]) == 0
    captured = capsys.readouterr()
    assert "not in the index (1): nope" in captured.err and "now holds 4 documents" in captured.out
    assert main(["index", "add", str(out), str(_jsonl(tmp_path / "e.jsonl", []))]) == 2
    assert f"e.jsonl: no records; nothing was added: {out} holds 4 documents" in capsys.readouterr().err
