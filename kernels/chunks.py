"""Work chunks over a flat buffer: the unit of parallelism of every fused kernel.

Math    a flat buffer of n elements is covered by segments [start, stop) each
        tagged with a parameter-group id; segments are cut into chunks of at most
        ``chunk`` elements, ``chunk`` a multiple of 16 (one 64-byte cache line of
        float32), so two threads never write the same cache line.
Shapes  returns (starts int64[c], stops int64[c], groups int64[c]).
Why     the partition depends only on the buffer layout, never on the thread
        count, so every kernel gives bitwise-equal results for any thread count.
Note    kernels loop over a slice ``a[lo:hi]`` from index 0, never ``range(lo, hi)``:
        Numba cannot prove ``lo >= 0``, keeps its negative-index wraparound, and LLVM
        then leaves the loop scalar (about 6x slower for Adam).
"""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 15


def make_chunks(segments: list[tuple[int, int, int]], chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``(start, stop, group)`` segments into chunks of at most ``chunk`` elements.

    Adjacent segments of the same group are merged first, so a model of 1,000
    small tensors costs the same as one tensor of the same total size.
    """
    if chunk <= 0 or chunk % 16:
        raise ValueError(f"chunk must be a positive multiple of 16, got {chunk}")
    merged: list[list[int]] = []
    for start, stop, group in sorted(segments):
        if stop <= start:
            continue
        if merged and merged[-1][1] == start and merged[-1][2] == group:
            merged[-1][1] = stop
        else:
            merged.append([start, stop, group])
    starts, stops, groups = [], [], []
    for start, stop, group in merged:
        for s in range(start, stop, chunk):
            starts.append(s)
            stops.append(min(s + chunk, stop))
            groups.append(group)
    as_i64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return as_i64(starts), as_i64(stops), as_i64(groups)
