"""A document with more chunks than a batch holds: chunked lazily and written in batches of at most
``--batch-chunks`` of its chunks, committed as one unit with its last batch; an interrupted build keeps the
documents before it and resumes at it; add / update handle its id once."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3e.cli import main
from m3e.index.chunking import chunk_document, iter_token_spans, token_offsets

pytestmark = pytest.mark.usefixtures("single_thread")

SENTENCE = "保险理赔需要身份证、保单和医院的发票。"  # 19 characters, ends with a sentence break


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _corpus(path, long_sentences=120):
    """Short documents around one long one (id "long")."""
    rows = [{"id": f"a{i}", "text": f"第{i}个短文档：天气很好。"} for i in range(5)]
    rows.append({"id": "long", "text": "".join(f"{i}{SENTENCE}" for i in range(long_sentences))})
    rows += [{"id": f"b{i}", "text": f"第{i}个后来的文档：公园散步。"} for i in range(5)]
    return _jsonl(path, rows)


def _build(corpus, out, model, *extra):
    return main(["index", "build", str(corpus), "--out", str(out), "-m", str(model), "--no-progress",
                 "--chunk-size", "40", "--overlap", "5", *extra])


def _encoded_batches(monkeypatch):
    """The size of every batch the index encodes (the real encoder runs)."""
    from m3e.model import EmbeddingModel

    sizes: list[int] = []
    real = EmbeddingModel.encode_documents

    def counting(self, texts, *args, **kwargs):
        sizes.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(EmbeddingModel, "encode_documents", counting)
    return sizes


def _chunks_of(out):
    from m3e.index import Index

    with Index.open(out) as index:
        return index.store.count(), index.store.count_docs(), index.meta["state"]


def test_a_long_document_is_written_in_bounded_batches(tmp_path, tiny_st_model_dir, monkeypatch):
    corpus = _corpus(tmp_path / "c.jsonl")
    long_text = json.loads(corpus.read_text(encoding="utf-8").splitlines()[5])["text"]
    expected_long = len(chunk_document("long", long_text, 40, 5))
    assert expected_long > 3 * 8
    sizes = _encoded_batches(monkeypatch)
    out = tmp_path / "idx"
    assert _build(corpus, out, tiny_st_model_dir, "--batch-chunks", "8") == 0
    assert max(sizes) <= 8 and sum(sizes) == expected_long + 10
    chunks, docs, state = _chunks_of(out)
    assert (chunks, docs, state["status"]) == (expected_long + 10, 11, "ready")
    from m3e.index import Index

    with Index.open(out) as index:  # every chunk of the long document, in order, searchable
        hits = index.search(long_text[-30:], k=3, mode="dense")
        assert hits and hits[0].doc_id == "long"
        assert index.store.existing_docs(["long", "a0", "b4"]) == {"long", "a0", "b4"}


def test_an_interrupted_long_document_is_not_kept_and_the_build_resumes_at_it(tmp_path, tiny_st_model_dir,
                                                                              capsys, monkeypatch):
    from m3e.index.lance_store import LanceStore

    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "idx"
    real = LanceStore.add
    calls = [0]

    def interrupt_fourth(self, rows, vectors):  # batch 1: a0-a4; 2, 3, 4: pieces of the long document
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(self, rows, vectors)

    monkeypatch.setattr(LanceStore, "add", interrupt_fourth)
    assert _build(corpus, out, tiny_st_model_dir, "--batch-chunks", "8") == 130
    assert "interrupted; 5 documents stored" in capsys.readouterr().err
    chunks, docs, state = _chunks_of(out)
    assert (chunks, docs, state["docs_done"]) == (5, 5, 5)  # the long document's two written pieces are gone
    monkeypatch.setattr(LanceStore, "add", real)
    assert _build(corpus, out, tiny_st_model_dir, "--resume", "--batch-chunks", "8") == 0
    printed = capsys.readouterr().out
    assert "(6 documents / " in printed and "5 already stored before resuming" in printed
    clean = tmp_path / "clean"
    assert _build(corpus, clean, tiny_st_model_dir, "--batch-chunks", "8") == 0
    assert _chunks_of(out)[:2] == _chunks_of(clean)[:2]


@pytest.mark.slow
def test_kill9_within_a_long_document_then_resume(tmp_path, tiny_st_model_dir):
    """A build killed while writing the long document's pieces resumes to the same index as a clean build."""
    import os
    import signal
    import subprocess
    import sys
    import time

    corpus = _corpus(tmp_path / "c.jsonl", long_sentences=400)
    out = tmp_path / "idx"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "m3e.cli", "index", "build", str(corpus), "--out", str(out), "-m",
           str(tiny_st_model_dir), "--no-progress", "--chunk-size", "40", "--overlap", "5", "--batch-chunks", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    versions = out / "lance" / "chunks.lance" / "_versions"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:  # kill once a few pieces of it are written
        if versions.is_dir() and len(list(versions.iterdir())) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    if proc.returncode == 0:  # finished before the kill: nothing to resume, the index is whole
        assert _chunks_of(out)[2]["status"] == "ready"
    else:
        state = _chunks_of(out)[2]
        assert state["status"] == "building" and state["docs_done"] in (0, 5, 11)  # never within "long"
        assert _build(corpus, out, tiny_st_model_dir, "--resume", "--batch-chunks", "8") == 0
    clean = tmp_path / "clean"
    assert _build(corpus, clean, tiny_st_model_dir, "--batch-chunks", "8") == 0
    assert _chunks_of(out)[:2] == _chunks_of(clean)[:2]


def test_add_and_update_of_a_long_document_check_its_id_once(tmp_path, tiny_st_model_dir, capsys):
    out = tmp_path / "idx"
    assert _build(_jsonl(tmp_path / "c.jsonl", [{"id": "x", "text": "短的"}]), out, tiny_st_model_dir) == 0
    long_doc = _jsonl(tmp_path / "long.jsonl", [{"id": "long", "text": SENTENCE * 60}])
    assert main(["index", "add", str(out), str(long_doc), "--batch-chunks", "4", "--no-progress"]) == 0
    first = _chunks_of(out)[0]
    assert first > 1 + 3 * 4
    assert main(["index", "add", str(out), str(long_doc), "--batch-chunks", "4", "--no-progress"]) == 2
    assert "document id 'long' is already in the index" in capsys.readouterr().err
    shorter = _jsonl(tmp_path / "shorter.jsonl", [{"id": "long", "text": SENTENCE * 30}])
    assert main(["index", "update", str(out), str(shorter), "--batch-chunks", "4", "--no-progress"]) == 0
    chunks, docs, _ = _chunks_of(out)
    assert docs == 2 and 1 < chunks < first


@pytest.fixture(scope="module")
def tokenizer(tiny_st_model_dir):
    import m3e

    return m3e.load(str(tiny_st_model_dir)).tokenizer


def _token_spans_reference(offsets, length, size, overlap):
    """Token windows as computed with every offset held (the list version before streaming)."""
    n = len(offsets)
    if n <= size:
        return [(0, length)]
    out, first = [], 0
    while True:
        last = min(first + size, n)
        out.append((0 if first == 0 else offsets[first][0], length if last == n else offsets[last - 1][1]))
        if last == n:
            return out
        first = last - overlap


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 60), size=st.integers(1, 12), data=st.data())
def test_streamed_token_windows_are_the_held_ones(n, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    offsets = [(i, i + 1) for i in range(n)]
    assert list(iter_token_spans(iter(offsets), n + 2, size, overlap)) == _token_spans_reference(
        offsets, n + 2, size, overlap)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(["保险", "理赔", "weather", "is", "nice", "。", "公园", "42", "a.b", "\n"]),
                      max_size=120), segment=st.integers(8, 64))
def test_a_long_text_tokenized_in_segments_gives_the_offsets_of_the_whole(tokenizer, words, segment):
    """Segments end after a space, line or sentence break, where the tokenizer splits anyway."""
    text = " ".join(words)
    whole = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                                 verbose=False)["offset_mapping"]
    assert list(token_offsets(text, tokenizer, segment)) == [(int(s), int(e)) for s, e in whole]
