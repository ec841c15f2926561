"""Where fastnn's Numba threads run: each worker on a CPU of its own, the calling thread off them.

Why     On the 2-core VMs here the scheduler often put the calling thread and the OpenMP
        worker on one CPU, where one waits (spinning) for the other while the second CPU idles:
        2-thread matmuls of 128^3-512^3 then ran 2-10x slower for whole runs of calls (in
        bench/bench_matmul.py's 2-thread rows, 256^3 read 0.13-0.15x OpenBLAS in two runs).
        Measured in blocks of 8 calls after a quiet gap, 36 blocks each, runs with and without
        FASTNN_PIN_THREADS=0 alternated (median of the block medians; blocks slower than twice
        the best): unpinned 128^3 fp64 276 us (20 of 36 slow), 256^3 fp32 549 us (14), 512^3
        fp32 3563 us (16); pinned 196 us (5), 460 (6), 2517 (2). OMP_PROC_BIND=true did as well
        in its own runs (217 us (5), 444 (8), 2525 (5)), but it pins the calling thread
        (Python's main thread) for good, and every thread and process started from it later
        inherits that one CPU: mpiexec run from a test, torch's pool, fastnn compile's workers,
        DataParallel's communication thread.
How     pin(): one parallel kernel reports the OS thread id of each of Numba's threads
        (gettid), then worker t (t >= 1) is bound to CPU cpus[t] (os.sched_setaffinity on its
        id); thread 0, the caller, is never bound. Before each parallel kernel, keep_off():
        when the caller runs on a CPU other than those left for it (sched_getcpu, ~0.2 us
        through ctypes), it is moved there and its own mask is restored at once (two system
        calls, a few us, only then; restored even if Ctrl-C lands between them; a caller you
        bound to the workers' CPUs stays). Workers are pinned lazily at the first parallel
        kernel, for the team it runs, and again for a larger team or when libgomp replaced
        workers after a smaller one (it ends the workers past a smaller team); each Python
        thread that starts parallel kernels has its own workers, so its own pinning. A rank of
        ``fastnn.distributed`` pins within its share of the machine's CPUs.
Off     with FASTNN_PIN_THREADS=0, when you set OMP_PROC_BIND, OMP_PLACES, GOMP_CPU_AFFINITY or
        KMP_AFFINITY (your binding, left alone), with one thread, a threading layer other than
        OpenMP, where the system calls do not exist (not Linux; glibc < 2.30 has no gettid);
        a team larger than the CPUs keeps the workers pinned so far.
Oracle  tests/test_affinity.py (each worker's own mask, the caller's mask unchanged, moved off).
Bench   python bench/bench_matmul.py  (the 2-thread rows)
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .env import openmp_started, switched_off

_USER_BINDING = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")
#: seconds to wait for a worker above a smaller team to end (see _ended)
ENDING_S = 0.05


def _getcpu_fn():
    """libc's sched_getcpu through ctypes, or None."""
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    fn.argtypes = []
    fn.restype = ctypes.c_int
    return fn


_getcpu = _getcpu_fn()
try:
    _HAS_GETTID = hasattr(ctypes.CDLL(None), "gettid")      # glibc >= 2.30; without it the kernel
except OSError:                                            # below would not link (an abort)
    _HAS_GETTID = False


@intrinsic
def _os_thread_id(typingctx):
    """The calling OS thread's id (glibc's gettid())."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "gettid")
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return types.int64(), codegen


@njit(parallel=True, cache=True)
def _worker_tids(tids):
    """tids[t] = the OS thread id of Numba's thread t, for every thread that ran an iteration."""
    for _ in prange(tids.shape[0]):
        tids[get_thread_id()] = _os_thread_id()


@dataclass
class Pinning:
    """What pin() did for one calling thread: workers 1..threads-1 bound, ``cpus[t]`` worker
    t's CPU (cpus[0] = -1: the caller is never bound) and ``tids[t]`` its OS thread id;
    ``caller_cpus`` where keep_off() moves the caller. ``limit``: the largest team that can be
    pinned (0: none, for ``reason``); ``smallest``: the smallest team run since (libgomp ends
    the workers past a smaller team and starts new ones for a larger)."""
    threads: int
    limit: int
    cpus: list[int]
    tids: list[int]
    caller_cpus: frozenset
    reason: str = ""
    smallest: int = 0
    generation: int = 0


#: the share set by configure() (None: the caller's affinity) and a generation that retires
#: every thread's pinning (configure, fork)
_shared: dict = {"cpus": None, "generation": 0}
#: each calling thread has its own OpenMP workers (libgomp keeps a pool per thread that starts
#: parallel regions), so each has its own Pinning
_local = threading.local()


def _retire() -> None:
    _shared["generation"] += 1


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's workers. If the parent ran a parallel region
    on GNU OpenMP, the child's first one is fatal (Numba: "Terminating: fork() called from a
    process already using GNU OpenMP"), so the child runs one thread, as torch's forked
    workers do; spawn or forkserver children keep every thread."""
    _retire()
    if openmp_started():
        numba.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _current() -> Pinning | None:
    p = getattr(_local, "pinning", None)
    return p if p is not None and p.generation == _shared["generation"] else None


def _keep(p: Pinning) -> Pinning:
    p.smallest = p.threads
    p.generation = _shared["generation"]
    _local.pinning = p
    return p


def _enabled() -> str:
    """"" when pinning applies, else why not."""
    if switched_off("FASTNN_PIN_THREADS"):
        return f"FASTNN_PIN_THREADS={os.environ['FASTNN_PIN_THREADS']}"
    mine = [k for k in _USER_BINDING if k in os.environ]
    if mine:
        return f"{', '.join(mine)} set (your binding, left alone)"
    if _getcpu is None or not _HAS_GETTID or not hasattr(os, "sched_setaffinity"):
        return "no sched_setaffinity, sched_getcpu or gettid on this system"
    return ""


def configure(share: list[int] | None) -> None:
    """Pin within ``share`` (CPU numbers, the first for the calling thread; None: the calling
    thread's affinity; []: pin nothing) from the next parallel kernel on: fastnn.distributed
    calls it with each rank's share of the machine."""
    _shared["cpus"] = None if share is None else list(share)
    _retire()


def pin(threads: int | None = None) -> Pinning:
    """Bind Numba's workers 1..threads-1 (default: numba.get_num_threads()) of the calling
    thread each to a CPU of the share, in order after the caller's; returns (and keeps, for
    this thread) what was done. Past the share's size it keeps what is pinned."""
    reason = _enabled()
    if reason:
        return _keep(Pinning(0, 0, [], [], frozenset(), reason))
    old = numba.get_num_threads()         # also starts Numba's threading layer
    threads = min(old if threads is None else threads, numba.config.NUMBA_NUM_THREADS)
    share = _shared["cpus"] if _shared["cpus"] is not None else sorted(os.sched_getaffinity(0))
    if not share:
        return _keep(Pinning(0, 0, [], [], frozenset(), "this rank's share of the CPUs is empty "
                                                        "(ranks' CPUs overlap, or more threads than CPUs)"))
    if numba.threading_layer() != "omp":
        return _keep(Pinning(0, 0, [], [], frozenset(),
                             f"threading layer {numba.threading_layer()} (workers are not fixed threads)"))
    prev = _current()
    if threads > len(share) or threads < 2:
        if prev is not None and prev.cpus:
            return prev
        why = "one thread" if threads < 2 else f"{threads} threads on {len(share)} CPUs"
        return _keep(Pinning(0, len(share), [], [], frozenset(), why))
    tids = np.zeros(threads, np.int64)
    numba.set_num_threads(threads)
    try:
        for _ in range(8):               # a worker that ran no iteration gets another try
            _worker_tids(tids)
            if (tids[1:] != 0).all():
                break
    finally:
        numba.set_num_threads(old)
    bound = []
    try:
        if not (tids[1:] != 0).all():
            raise OSError("a worker ran no iteration")
        for t in range(1, threads):
            os.sched_setaffinity(int(tids[t]), {share[t]})
            bound.append(int(tids[t]))
    except OSError as e:
        for tid in bound:                # leave no worker half-pinned
            try:
                os.sched_setaffinity(tid, set(share))
            except OSError:
                pass
        return _keep(Pinning(0, 0, [], [], frozenset(), f"a worker could not be bound ({e})"))
    return _keep(Pinning(threads, len(share), [-1] + share[1:threads], tids.tolist(),
                         frozenset(share[:1] + share[threads:])))


def _ended(tids: list[int]) -> bool:
    """Whether one of these workers ended. libgomp ends the workers above a smaller team when it
    starts it, but on a loaded machine one may still be exiting when the next larger team is
    due: it is waited for, up to ENDING_S (once per such change of team size)."""
    deadline = time.monotonic() + ENDING_S
    while True:
        if any(not os.path.exists(f"/proc/self/task/{tid}") for tid in tids):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def keep_off(threads: int) -> None:
    """Before a parallel kernel on ``threads`` threads: pin the workers (once; again for a
    larger team, or when libgomp replaced them); move the calling thread off their CPUs."""
    p = _current()
    if p is None or p.threads < threads <= p.limit:
        p = pin(threads)
    elif p.cpus and threads > p.smallest:
        p = pin(p.threads) if _ended(p.tids[p.smallest:threads]) else p
        p.smallest = min(threads, p.threads)
    if not p.cpus:
        return
    p.smallest = min(p.smallest, threads)
    if _getcpu() in p.caller_cpus:
        return
    mask = os.sched_getaffinity(0)
    target = p.caller_cpus & mask
    if not target:                       # you bound this thread to the workers' CPUs: stay
        return
    try:
        os.sched_setaffinity(0, target)
    except OSError:
        pass
    finally:                             # restored even if a signal (Ctrl-C) lands in between
        os.sched_setaffinity(0, mask)


def describe() -> str:
    """One line for ``fastnn info``."""
    p = _current() or pin()
    if not p.cpus:
        return f"not pinned: {p.reason}"
    workers = ", ".join(f"{t} -> CPU {c}" for t, c in enumerate(p.cpus) if t)
    return f"workers pinned ({workers}); the calling thread kept off their CPUs, never bound"
