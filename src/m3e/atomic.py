"""Files on disk: atomic writes (a crash leaves the old file or directory or the new one, never half of
either) and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import, before any thread writes files
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() would give: temporary files are private, what replaces them is not
DIR_MODE = 0o777 & ~_UMASK


def temp_dir_beside(target: str | os.PathLike[str], prefix: str) -> Path:
    """A new directory next to ``target`` (same filesystem, so it can be renamed into place), with the mode a
    plain mkdir gives: ``tempfile.mkdtemp`` makes it private, and a model or cache swapped in from it would be
    unreadable to the other users of a shared install."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=Path(target).parent))
    tmp.chmod(DIR_MODE)
    return tmp


def give_plain_modes(root: str | os.PathLike[str]) -> None:
    """Give a tree about to be swapped into place the modes of plain files and directories. Needed beyond
    :func:`temp_dir_beside`: safetensors writes its files owner-only (0600)."""
    for dirpath, _dirs, files in os.walk(root):  # does not descend into linked directories
        os.chmod(dirpath, DIR_MODE)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):  # chmod would follow it out of the tree
                os.chmod(path, FILE_MODE)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write via a temporary file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (numpy, pyarrow, a stream of
    chunks); when the block ends without error the file is given plain modes, fsynced and renamed over
    ``path``. On any error the temporary file is removed and ``path`` is left as it was, so "written" is only
    ever said of a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_dir(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Swap directory ``new`` into ``target``; the old one is removed only after the swap."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        fsync_dir(target.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "d")
    os.replace(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building_dir(
    target: str | os.PathLike[str],
    *,
    durable: bool = False,
    swap: Callable[[Path, Path], None] | None = None,
) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it into ``target`` when the block ends without error.

    The one place for "write into a temp dir, then rename": the block fills the yielded directory; on success
    the tree gets the modes of plain files (:func:`give_plain_modes`), optionally every file is fsynced
    (``durable``), and it replaces ``target`` (:func:`replace_dir`, or ``swap(tmp, target)``). On any error, Ctrl-C included, the
    temporary directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(target, prefix=f".{target.name}.tmp-")
    try:
        yield tmp
        give_plain_modes(tmp)
        if durable:
            fsync_tree(tmp)
        (swap or replace_dir)(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory below ``root`` (before a rename makes the tree visible)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(dirpath)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
