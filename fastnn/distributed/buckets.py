"""Gradient buckets: contiguous slices of the flat gradient buffer, reduced as units.

Parameters are taken in reverse registration order (the order backward produces their
gradients); a bucket closes once it holds ``cap`` bytes, the first one at ``first_cap``
(DDP's defaults: 25 MB, first 1 MB, so the first reduction starts early). Because the flat
buffer is laid out in registration order, each bucket is one contiguous slice and is
reduced in place, with no copy.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    index: int
    start: int          # first element in the flat buffer
    stop: int           # one past the last element (padding included)
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_buckets(slots: list[tuple[str, int, int]], itemsize: int, cap_bytes: int,
                 first_cap_bytes: int) -> list[Bucket]:
    """``slots``: (name, start, stop) per parameter in registration order. Returns buckets in
    reduction order (bucket 0 holds the last parameters)."""
    if cap_bytes <= 0 or first_cap_bytes <= 0:
        raise ValueError(f"bucket sizes must be positive, got cap={cap_bytes} B, first={first_cap_bytes} B")
    buckets: list[Bucket] = []
    names: list[str] = []
    start = stop = None
    for name, s_start, s_stop in sorted(slots, key=lambda s: s[1], reverse=True):
        if stop is None:
            stop = s_stop
        start = s_start
        names.append(name)
        limit = first_cap_bytes if not buckets else cap_bytes
        if (stop - start) * itemsize >= limit:
            buckets.append(Bucket(len(buckets), start, stop, tuple(names)))
            names, stop = [], None
    if names:
        buckets.append(Bucket(len(buckets), start, stop, tuple(names)))
    return buckets
