"""Length-sorted batches under a size and token budget (encode, serve and export share this)."""

from __future__ import annotations

from collections.abc import Sequence


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None
) -> list[list[int]]:
    """Group indices into batches of similar length, longest first.

    A batch holds at most ``batch_size`` items and, when ``max_batch_tokens`` is set, at most
    that many padded tokens (items x longest item). Sorting by length keeps padding small; the
    longest batch first makes an out-of-memory failure show up at once, not at the end.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        width = max(longest, n)
        too_many = len(current) >= batch_size
        too_big = max_batch_tokens is not None and current and width * (len(current) + 1) > max_batch_tokens
        if current and (too_many or too_big):
            batches.append(current)
            current, width = [], n
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches
