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
        calls, a few us, only then). Workers are pinned lazily at the first parallel kernel,
        for the thread count it uses (again if a later one uses more); a rank of
        ``fastnn.distributed`` pins within its share of the machine's CPUs.
Off     with FASTNN_PIN_THREADS=0, when you set OMP_PROC_BIND, OMP_PLACES or GOMP_CPU_AFFINITY
        (your binding, left alone), with one thread, a threading layer other than OpenMP, more
        threads than CPUs, or where the system calls do not exist (not Linux).
Oracle  tests/test_affinity.py (each worker's own mask, the caller's mask unchanged, moved off).
Bench   python bench/bench_matmul.py  (the 2-thread rows)
"""
from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_USER_BINDING = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY")


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
    """What pin() did for ``threads`` threads: ``cpus[t]`` is worker t's CPU (t >= 1; cpus[0]
    = -1, the caller is not bound), ``tids[t]`` its OS thread id; ``caller_cpus`` where
    keep_off() moves the caller; ``reason`` why nothing was pinned (then cpus is empty)."""
    threads: int
    cpus: list[int]
    tids: list[int]
    caller_cpus: frozenset
    reason: str = ""


_state: dict = {"pinning": None, "share": None}
if hasattr(os, "register_at_fork"):      # a forked child has none of the parent's workers
    os.register_at_fork(after_in_child=lambda: _state.update(pinning=None))


def _enabled() -> str:
    """"" when pinning applies, else why not."""
    if os.environ.get("FASTNN_PIN_THREADS", "1") == "0":
        return "FASTNN_PIN_THREADS=0"
    mine = [k for k in _USER_BINDING if k in os.environ]
    if mine:
        return f"{', '.join(mine)} set (your binding, left alone)"
    if _getcpu is None or not hasattr(os, "sched_setaffinity"):
        return "no sched_setaffinity on this system"
    return ""


def configure(share: list[int] | None) -> None:
    """Pin within ``share`` (CPU numbers, the first for the calling thread; None: the calling
    thread's affinity; []: pin nothing) at the next parallel kernel: fastnn.distributed calls
    it with each rank's share of the machine."""
    _state["share"] = None if share is None else list(share)
    _state["pinning"] = None


def pin(threads: int | None = None) -> Pinning:
    """Bind Numba's workers 1..threads-1 (default: numba.get_num_threads()) each to a CPU of
    the share, in order after the caller's; returns (and keeps) what was done."""
    old = numba.get_num_threads()         # also starts Numba's threading layer
    threads = old if threads is None else threads
    share = _state["share"] if _state["share"] is not None else sorted(os.sched_getaffinity(0))
    reason = _enabled()
    final = bool(reason)                 # nothing to retry with more threads
    if not reason:
        if not share:
            reason, final = "this rank's share of the CPUs is empty (more ranks x threads than CPUs)", True
        elif threads < 2:
            reason = "one thread"
        elif threads > len(share):
            reason = f"{threads} threads on {len(share)} CPUs"
        elif numba.threading_layer() != "omp":
            reason, final = f"threading layer {numba.threading_layer()} (workers are not fixed threads)", True
    if reason:
        _state["pinning"] = Pinning(sys.maxsize if final else threads, [], [], frozenset(), reason)
        return _state["pinning"]
    tids = np.zeros(threads, np.int64)
    numba.set_num_threads(threads)
    try:
        for _ in range(8):               # a worker that ran no iteration gets another try
            _worker_tids(tids)
            if (tids[1:] != 0).all():
                break
    finally:
        numba.set_num_threads(old)
    try:
        if not (tids[1:] != 0).all():
            raise OSError("a worker ran no iteration")
        for t in range(1, threads):
            os.sched_setaffinity(int(tids[t]), {share[t]})
    except OSError as e:
        _state["pinning"] = Pinning(sys.maxsize, [], [], frozenset(), f"a worker could not be bound ({e})")
    else:
        _state["pinning"] = Pinning(threads, [-1] + share[1:threads], tids.tolist(),
                                    frozenset(share[:1] + share[threads:]))
    return _state["pinning"]


def keep_off(threads: int) -> None:
    """Before a parallel kernel on ``threads`` threads: pin the workers (once, or again for
    more threads); move the calling thread off their CPUs."""
    p = _state["pinning"]
    if p is None or threads > p.threads:
        p = pin(threads)
    if p.cpus and _getcpu() not in p.caller_cpus:
        mask = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, p.caller_cpus)
        except OSError:                  # none of them allowed to this thread: stay
            return
        os.sched_setaffinity(0, mask)


def describe() -> str:
    """One line for ``fastnn info``."""
    p = _state["pinning"] or pin()
    if not p.cpus:
        return f"not pinned: {p.reason}"
    workers = ", ".join(f"{t} -> CPU {c}" for t, c in enumerate(p.cpus) if t)
    return f"workers pinned ({workers}); the calling thread kept off their CPUs, never bound"
