"""Text helpers shared by the builders: normalisation for the exclusion set, hash splits.

Everything random-looking in the builders is a sha1 of a stable key, so a build is the same on
every machine and Python version (no RNG state, no dict-order or hash-seed dependence).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import TypeVar

from m3e.extras import require

T = TypeVar("T")

_WS = re.compile(r"\s+")


@functools.lru_cache(maxsize=1 << 17)  # InsuranceQA answers repeat across records
def normalise(text: str) -> str:
    """The exclusion key: NFKC, lowercase, no whitespace, traditional -> simplified (zhconv)."""
    key = _WS.sub("", unicodedata.normalize("NFKC", text).lower())
    if key and not key.isascii():
        key = to_simplified(key)
    return key


def to_simplified(text: str) -> str:
    simplified: str = _zhconv().convert(text, "zh-cn")
    return simplified


@functools.cache
def _zhconv() -> ModuleType:
    # Found once: a build converts hundreds of thousands of texts.
    return require("zhconv", purpose="building the offline data", extra="eval")


def squash(text: str) -> str:
    """Collapse runs of whitespace (InsuranceQA's English has double spaces) and strip."""
    return _WS.sub(" ", text).strip()


def digest(key: str, salt: str = "") -> str:
    return hashlib.sha1(f"{salt}\x00{key}".encode()).hexdigest()


def bucket(key: str, salt: str = "") -> int:
    """The split bucket of ``key``: sha1 mod 100. Buckets 0-49 are evaluation test, 50-99 the rest."""
    return int(digest(key, salt), 16) % 100


TEST_BUCKETS = range(0, 50)


def in_test(key: str, salt: str = "") -> bool:
    return bucket(key, salt) in TEST_BUCKETS


def hash_order(items: Iterable[T], key: Callable[[T], str], salt: str = "") -> list[T]:
    """A deterministic shuffle: items sorted by sha1(salt, key(item))."""
    return sorted(items, key=lambda item: digest(key(item), salt))


def balanced(items: Sequence[T], label: Callable[[T], str], per_label: int) -> list[T]:
    """The first ``per_label`` items of every label, in the given order, interleaved by label."""
    groups: dict[str, list[T]] = {}
    for item in items:
        group = groups.setdefault(label(item), [])
        if len(group) < per_label:
            group.append(item)
    n = min((len(g) for g in groups.values()), default=0)
    out: list[T] = []
    for i in range(n):
        for name in sorted(groups):
            out.append(groups[name][i])
    return out


class Exclusion:
    """The normalised texts of every evaluation item; training records must avoid all of them."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self.keys: set[str] = set()
        self.add(texts)

    def add(self, texts: Iterable[str]) -> None:
        for text in texts:
            key = normalise(text)
            if key:
                self.keys.add(key)

    def hit(self, text: str) -> bool:
        return normalise(text) in self.keys

    def __len__(self) -> int:
        return len(self.keys)
