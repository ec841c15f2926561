"""Gradients in shared memory: a zero-copy allreduce for ranks on one machine.

Between processes on one machine, MPI's Allreduce moves every byte through the library's
own shared-memory cells: the sender copies in, the receiver copies out, then reduces. Here
the flat gradient buffer of every rank is itself a row of one MPI-3 shared window (a
``(ranks, n)`` array). A bucket is reduced in place: after a barrier (every rank's bucket is
final) each rank sums its 1/K share of the bucket over the K rows, in rank order, and writes
the sum into all K rows; a second barrier (every share written) ends it. Each gradient byte
is read once and written once per rank; the sum order is fixed, so the result is bitwise
the same on every rank and from run to run. Measured: 0.75 ms against MPICH's 1.8 ms for
the 7.5 MB of an MLP 784-1024-1024-10 on 2 ranks (bench/bench_distributed.py).
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from fastnn.kernels.shared_sum import sum_rows_into_all

from ..flat import ALIGN_BYTES
from ..module import Module

SHM_DIR = "/dev/shm"
STAGGER_LINES = 9  # rows start 9 cache lines off a 4 KiB multiple apart (no 4K aliasing)


def shared_memory_room(nbytes: int) -> bool:
    """Whether the machine's shared-memory file system (where MPICH maps windows) has room
    for ``nbytes`` more; a tmpfs too small for a window faults (SIGBUS) when touched."""
    if not os.path.isdir(SHM_DIR):
        return True
    return shutil.disk_usage(SHM_DIR).free > 1.25 * nbytes


def window_bytes(numel: int, dtype: np.dtype, ranks: int) -> int:
    """Bytes of the shared window holding ``ranks`` gradient rows of ``numel`` elements."""
    return ranks * _row_stride(numel, dtype) * dtype.itemsize


class SharedGradients:
    """The gradient rows of every rank of ``comm`` (all on one machine) in one shared window.

    Creating it is collective; it moves ``model``'s flat gradient into this rank's row
    (``model.rehome_grad``) and points ``optimizer.grads`` there too.
    """

    def __init__(self, comm, model: Module, optimizer) -> None:
        from mpi4py import MPI

        flat = model.flat
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        self.align = max(1, ALIGN_BYTES // flat.dtype.itemsize)
        numel = flat.grad.size
        stride = _row_stride(numel, flat.dtype)
        nbytes = window_bytes(numel, flat.dtype, self.size)
        # rank 0 allocates every row, so the rows are one contiguous (ranks, stride) array
        self.win = MPI.Win.Allocate_shared(nbytes if self.rank == 0 else 0, flat.dtype.itemsize, comm=comm)
        memory, _ = self.win.Shared_query(0)
        self.rows = np.frombuffer(memory, flat.dtype, count=self.size * stride).reshape(self.size, stride)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        model.rehome_grad(self.rows[self.rank, :numel])
        optimizer.grads = flat.grad

    def fence(self) -> None:
        """Barrier with memory synchronization: every rank's writes before it are visible to
        every rank after it."""
        self.win.Sync()
        self.comm.Barrier()
        self.win.Sync()

    def sum_share(self, start: int, stop: int) -> None:
        """Sum this rank's share of elements [start, stop) over all rows into all rows (call
        between two fences, on every rank with the same range)."""
        per = -(-(stop - start) // (self.size * self.align)) * self.align
        lo = min(stop, start + self.rank * per)
        sum_rows_into_all(self.rows, lo, min(stop, lo + per))


def _row_stride(numel: int, dtype: np.dtype) -> int:
    align = max(1, ALIGN_BYTES // dtype.itemsize)
    return -(-numel // align) * align + STAGGER_LINES * align
