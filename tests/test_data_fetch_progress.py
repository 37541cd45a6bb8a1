"""`m3e data fetch` says what it will download (each source and its size, the total) before it starts, then
counts the bytes arriving (a bar with an ETA on a terminal, a line per source with what is left otherwise),
and prints nothing with -q."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from m3e.cli import main as m3e_main
from m3e.data import sources
from tests.test_data_sources import archive_dir, fake_registry  # noqa: F401  (fixtures)


def _slow_copy(paths: dict[str, Path], pieces: int = 4, pause: float = 0.3):  # type: ignore[no-untyped-def]
    """A registry client that writes its file a piece at a time, as a download does."""

    def download(source: sources.Source, dest: Path) -> Path:
        data = paths[source.name].read_bytes()
        target = dest / paths[source.name].name
        step = max(1, len(data) // pieces)
        with open(target, "wb") as fh:
            for start in range(0, len(data), step):
                fh.write(data[start:start + step])
                fh.flush()
                time.sleep(pause)
        return target

    return download


def test_the_announcement_names_each_source_its_size_and_the_total(
    tmp_path: Path, fake_registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    monkeypatch.setattr(sources, "download_with_client", fake_registry)
    assert m3e_main(["data", "fetch", "--sources", "A,B", "--root", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    a, b = sources.get_source("A"), sources.get_source("B")
    assert err[0] == f"downloading 2 source(s), {a.size_mb + b.size_mb:.1f} MB in all:"
    assert re.match(rf"\s+A\s+{a.name}\s+{re.escape(a.spec)}\s+{a.size_mb:.1f} MB$", err[1])
    assert re.match(rf"\s+B\s+{b.name}\s+{re.escape(b.spec)}\s+{b.size_mb:.1f} MB$", err[2])
    # stderr is not a terminal here: a line per finished download with the MB left, not a bar
    left = [line for line in err if "MB left" in line]
    assert len(left) == 2 and left[-1].strip().startswith("B:") and "0.0 MB left" in left[-1]
    assert "about" in left[0]  # the time to go, from the rate so far

    # A second fetch downloads nothing and says so.
    assert m3e_main(["data", "fetch", "--sources", "A,B,H", "--root", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    h = sources.get_source("H")
    assert err[0] == f"downloading 1 source(s), {h.size_mb:.1f} MB in all:"
    assert "already in the cache (verified, not downloaded): A, B" in err
    assert m3e_main(["data", "fetch", "--sources", "A,B,H", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "all 3 source(s) are in the cache; verifying them"


def test_quiet_prints_nothing(
    tmp_path: Path, fake_registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    monkeypatch.setattr(sources, "download_with_client", fake_registry)
    assert m3e_main(["data", "fetch", "-q", "--sources", "A,H", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert sources.is_ready("A", tmp_path) and sources.is_ready("H", tmp_path)


def test_a_bar_counts_the_bytes_when_asked(
    tmp_path: Path, fake_registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    monkeypatch.setattr(sources, "download_with_client", _slow_copy(fake_registry.paths))
    assert m3e_main(["data", "fetch", "--progress", "--sources", "A", "--root", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "download" in err and "B/s" in err  # tqdm's byte units and rate
    assert "MB left" not in err  # the bar replaces the per-source lines


def test_bytes_are_counted_while_the_client_writes(tmp_path: Path, fake_registry) -> None:  # noqa: F811
    """The meter sees a client's file grow before the client returns (it cannot call back into m3e)."""
    source = sources.get_source("A")
    meter = sources.DownloadProgress([source], show=False, log=None)
    seen: list[int] = []
    write = _slow_copy(fake_registry.paths, pieces=4, pause=2 * sources.DownloadProgress.POLL_S)

    def download(src: sources.Source, dest: Path) -> Path:
        got = write(src, dest)
        seen.append(meter.position)
        return got

    (tmp_path / "dl").mkdir()
    with meter.watching(source, tmp_path / "dl"):
        got = download(source, tmp_path / "dl")
    size = got.stat().st_size
    assert 0 < seen[0] <= min(size, meter.expected["A"])  # part of the file, counted during the download
    meter.finished(source, size)
    assert meter.position == meter.total == meter.expected["A"]


def test_pip_downloads_where_the_meter_looks(tmp_path: Path) -> None:
    """pip's own temporary download directory is put inside the download directory (TMPDIR), so the bytes of a
    wheel are seen as they arrive; the real client for the smallest pinned wheel."""
    dest = tmp_path / "dl"
    dest.mkdir()
    got = sources.download_with_client(sources.get_source("B"), dest)
    assert got.parent == dest and got.name == sources.get_source("B").filename
    assert (dest / ".pip-tmp").is_dir()  # the temporary directory pip was given
    assert os.environ.get("TMPDIR") != str(dest / ".pip-tmp")  # only the client's environment changed
