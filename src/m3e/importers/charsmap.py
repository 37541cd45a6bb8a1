"""Build a SentencePiece "precompiled charsmap" from a per-character replacement table.

The ``tokenizers`` Precompiled normaliser takes the charsmap format that SentencePiece
stores in its models: a uint32 byte length of a double-array trie, the trie (darts-clone
units, uint32 little-endian), then a blob of NUL-terminated replacement strings. A key is
the UTF-8 bytes of one source character; its trie value is the offset of the replacement in
the blob. This module builds that structure from scratch for a ``{code point: text}`` table.

darts-clone unit encoding: bits 0-7 the label, bit 8 "has leaf", bit 9 the offset scale
flag, bits 10-31 the offset (xor distance to the node's children base); a leaf unit has
bit 31 set and carries the value in bits 0-30. A lookup starts at unit 0, moves to
``pos ^ offset`` and then to ``base ^ byte`` for each key byte, checking the label.
"""

from __future__ import annotations

import struct
from typing import Any

_MAX_OFFSET = 1 << 21  # offsets below this need no scale flag; our tries are far smaller


def _build_trie(keys: dict[bytes, int]) -> list[int]:
    # nested-dict trie; a b"" child marks a key end holding its value
    root: dict[int, Any] = {}
    for key, value in keys.items():
        if not key or 0 in key:
            raise ValueError("charsmap keys must be non-empty and contain no NUL byte")
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[-1] = value  # label 0 slot = the leaf

    units: list[int] = [0]
    used = [True]  # position 0 is the root
    used_bases: set[int] = set()

    def ensure(size: int) -> None:
        if len(units) < size:
            grow = size - len(units)
            units.extend([0] * grow)
            used.extend([False] * grow)

    search_from = 1
    queue: list[tuple[int, dict[int, Any]]] = [(0, root)]
    while queue:
        pos, node = queue.pop(0)
        labels = sorted(0 if k == -1 else k for k in node)
        # first base whose child slots are all free, trying only bases that put the
        # first label on a free slot (xor keeps all children in one 256-block)
        free = search_from
        while True:
            ensure((free | 0xFF) + 1)
            if not used[free]:
                base = free ^ labels[0]
                if base not in used_bases and all(
                    not used[base ^ lab] and (base ^ lab) != 0 for lab in labels
                ):
                    break
            free += 1
        used_bases.add(base)
        # the base slot itself is kept out of use too (it is the leaf slot if there is
        # one), so that later searches do not stall on a free slot whose base is taken
        used[base] = True
        while search_from < len(used) and used[search_from]:
            search_from += 1
        offset = pos ^ base
        if offset >= _MAX_OFFSET:
            raise ValueError("charsmap trie too large")
        unit = units[pos] & 0xFF  # keep this node's own label
        unit |= offset << 10
        if -1 in node:
            unit |= 1 << 8
        units[pos] = unit
        for lab in labels:
            child = base ^ lab
            used[child] = True
            if lab == 0:
                units[child] = (1 << 31) | node[-1]
            else:
                units[child] = lab
                queue.append((child, node[lab]))
    while len(units) > 1 and units[-1] == 0:
        units.pop()
    return units


def build_precompiled_charsmap(table: dict[int, str]) -> bytes:
    """The charsmap bytes that map each code point in ``table`` to its replacement."""
    blob = bytearray()
    offsets: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for cp in sorted(table):
        out = table[cp]
        if out not in offsets:  # identical replacements share one blob entry
            offsets[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = offsets[out]
    units = _build_trie(keys)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)
