"""The MPI runtime: start-up, rank and size, abort-on-exception, threads per rank.

``init()`` is idempotent. Without ``mpiexec`` it imports nothing and reports rank 0 of 1,
so a script runs unchanged in one process. Under ``mpiexec`` it installs hooks so that an
uncaught exception on any rank (main or helper thread) prints that rank's message and calls
``MPI_Abort``, ending the whole job promptly instead of leaving the others waiting; and it
gives each rank its share of the machine's cores (Numba and BLAS threads), so ranks on one
machine do not oversubscribe it.
"""
from __future__ import annotations

import contextlib
import faulthandler
import numbers
import os
import sys
import threading
import time
import traceback

import numpy as np

from ..checks import check_int

_state: dict = {"comm": None}
ABORT_GRACE_S = 0.5
#: seconds a collective may take before the job is aborted (DataParallel's ``timeout``)
DEFAULT_TIMEOUT_S = 300.0
#: the limit while ranks still start up (import, load or compile kernels at their own pace);
#: FASTNN_STARTUP_TIMEOUT (seconds) overrides it for a job whose ranks work longer before init()
STARTUP_S = 120.0
STARTUP_VAR = "FASTNN_STARTUP_TIMEOUT"
WATCH_PERIOD_S = 0.25
_inflight: dict[int, tuple[str, float, float]] = {}   # thread -> (what, since, limit)
_watch_lock = threading.Lock()

_LAUNCHER_VARS = ("PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD")


def launched_under_mpi() -> bool:
    """True when an MPI launcher started this process (checked without importing MPI)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def launched_rank() -> int:
    """This process's rank from the MPI launcher's environment (MPICH's Hydra, PMIx, Open MPI),
    before MPI starts; 0 without a launcher."""
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def init(comm=None, *, threads_per_rank: int | None = None, abort_on_exception: bool = True):
    """Start MPI (if launched under ``mpiexec`` or ``comm`` is given) and return the communicator
    (``MPI.COMM_WORLD`` by default), or None in a plain single process.

    ``threads_per_rank``: Numba and BLAS threads for this rank; default: the rank's CPUs
    divided by the ranks on this machine that have the same CPUs (at least 1): the machine's
    cores over its ranks, or all of a rank's own when the launcher bound each rank apart.
    With more than one, its Numba workers are pinned within its share (kernels/affinity.py).
    Later calls return the same communicator (another ``comm`` is a ValueError). Ranks waiting
    in MPI's start-up for one that never calls it (it failed before) end after 120 s
    (``FASTNN_STARTUP_TIMEOUT`` seconds where set: a job whose ranks work longer before ``init()``).
    """
    if threads_per_rank is not None:
        threads_per_rank = check_int(threads_per_rank, "init: threads_per_rank", 1)
    if comm is not None and not (hasattr(comm, "Get_rank") and hasattr(comm, "Get_size")):
        raise TypeError(f"init: expected an MPI communicator or None, got {type(comm).__name__} {comm!r}")
    if _state["comm"] is not None:
        if comm is not None and comm != _state["comm"]:
            raise ValueError(f"init: already initialized with a communicator of {size()} ranks, got another "
                             f"({comm.Get_size()} ranks); init() runs once per process (DataParallel(comm=...) "
                             "takes a sub-communicator)")
        return _state["comm"]
    if comm is None and not launched_under_mpi():
        return None
    MPI = _start_mpi()
    comm = comm if comm is not None else MPI.COMM_WORLD
    from ..kernels import affinity

    me, masks = local_layout(comm)
    mine = masks[me]                 # this rank's CPUs, split among the ranks here that have the same
    default = len(mine) // sum(m == mine for m in masks) if mine else _cores() // len(masks)
    threads = threads_per_rank or max(1, default)
    _set_threads(threads)
    affinity.configure(_share(masks, me, threads))
    _state["comm"] = comm
    if abort_on_exception:
        _install_abort_hooks(comm)
    return comm


def startup_limit() -> float:
    """Seconds ranks wait in MPI's start-up for the others: ``FASTNN_STARTUP_TIMEOUT`` where set,
    else STARTUP_S; a value that is not a number of seconds > 0 is a ValueError naming it."""
    raw = os.environ.get(STARTUP_VAR, "").strip()
    if not raw:
        return STARTUP_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{STARTUP_VAR}: expected a number of seconds > 0, got {raw!r}")
    return value


def _start_mpi():
    """Import mpi4py, which starts MPI. MPI_Init waits for every rank while holding the GIL, so
    no Python watchdog runs: for a rank that stopped before it (an exception before ``init()``)
    it would wait for ever. faulthandler's watchdog, a C thread, ends this process instead
    after ``startup_limit()`` seconds with the stack it waited in (replacing a
    ``dump_traceback_later`` of the
    caller's own while it runs), and the launcher then ends the job."""
    faulthandler.dump_traceback_later(startup_limit(), exit=True)
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("fastnn.distributed needs mpi4py and an MPI: pip install fastnn[mpi]") from e
    finally:
        faulthandler.cancel_dump_traceback_later()
    return MPI


def local_layout(comm) -> tuple[int, list[tuple[int, ...]]]:
    """(this rank's index among the ranks of ``comm`` on its machine, each of those ranks' CPU
    affinity, sorted; () where unknown) (collective)."""
    from mpi4py import MPI

    local = guarded("split by machine (ranks starting up)", lambda: comm.Split_type(MPI.COMM_TYPE_SHARED),
                    startup_limit())
    mask = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    try:
        masks = guarded("exchange CPU sets (ranks starting up)", lambda: local.allgather(mask), startup_limit())
        return local.Get_rank(), masks
    finally:
        local.Free()


def local_size(comm) -> int:
    """How many ranks of ``comm`` share this rank's machine (collective)."""
    return len(local_layout(comm)[1])


def _share(masks: list[tuple[int, ...]], me: int, threads: int) -> list[int]:
    """The CPUs rank ``me`` of a machine pins its threads to (kernels/affinity.py), from every
    local rank's CPU set: ranks with the same set (unbound, or bound together by a launcher,
    container or taskset) split it in order, ``threads`` CPUs each; a set of its own (mpiexec
    -bind-to core) is all its own. None (no pinning) when sets overlap without being equal or
    the threads outnumber the CPUs."""
    mine = masks[me]
    if any(m != mine and set(m) & set(mine) for m in masks):
        return []
    same = [r for r, m in enumerate(masks) if m == mine]
    if len(same) * threads > len(mine):
        return []
    k = same.index(me)
    return list(mine[k * threads:(k + 1) * threads])


def is_initialized() -> bool:
    return _state["comm"] is not None


def comm():
    """The communicator ``init`` set up, or None in a single process."""
    return _state["comm"]


def rank() -> int:
    """This process's rank in ``init()``'s communicator; 0 in a plain process (under ``mpiexec``
    before ``init()``: a RuntimeError)."""
    c = _started("rank")
    return 0 if c is None else c.Get_rank()


def size() -> int:
    """The ranks of ``init()``'s communicator; 1 in a plain process (under ``mpiexec`` before
    ``init()``: a RuntimeError)."""
    c = _started("size")
    return 1 if c is None else c.Get_size()


def _started(what: str):
    """``init()``'s communicator, None in a plain process; a RuntimeError under ``mpiexec``
    before ``init()`` (every rank would report rank 0 of 1)."""
    c = _state["comm"]
    if c is None and launched_under_mpi():
        raise RuntimeError(f"fastnn.distributed.{what}(): launched under mpiexec, but init() has not run yet: "
                           "call fastnn.distributed.init() first (until then every rank would be rank 0 of 1)")
    return c


def barrier(timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
    """Wait for every rank; abort the job if that takes more than ``timeout`` s (None: wait
    as long as it takes)."""
    timeout = check_timeout(timeout, "barrier timeout")
    c = _state["comm"]
    if c is not None:
        guarded("barrier", c.Barrier, timeout)


def allreduce_mean(values, timeout: float | None = DEFAULT_TIMEOUT_S, *, comm=None) -> np.ndarray:
    """Mean over the ranks of ``comm`` (default: the runtime's, ``init()``'s) of a number or a
    1-D sequence of numbers (metrics), as a float64 array; the values themselves in one
    process. Every rank must pass as many values (checked: a ValueError on every rank).
    Aborts the job if a reduction takes more than ``timeout`` s (None: no limit)."""
    timeout = check_timeout(timeout, "allreduce_mean timeout")
    try:
        given = np.asarray(values)
    except ValueError:          # a ragged sequence
        given = np.empty(0, object)
    if given.dtype.kind not in "biuf" or given.ndim > 1:
        raise TypeError(f"allreduce_mean: expected a number or a 1-D sequence of numbers, got "
                        f"{type(values).__name__} {values!r:.100}")
    buf = np.array(given, dtype=np.float64, ndmin=1)
    c = _state["comm"] if comm is None else comm
    if c is not None and c.Get_size() > 1:
        from mpi4py import MPI

        sizes = np.array([buf.size, -buf.size], np.int64)     # the largest and the smallest count
        guarded("allreduce of the metrics' count", lambda: c.Allreduce(MPI.IN_PLACE, sizes, op=MPI.MAX), timeout)
        if sizes[0] != -sizes[1]:
            raise ValueError(f"allreduce_mean: every rank must pass as many values; got {buf.size} here, between "
                             f"{-sizes[1]} and {sizes[0]} over the ranks")
        guarded("allreduce of metrics", lambda: c.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM), timeout)
        buf /= c.Get_size()
    return buf


def check_timeout(timeout: object, what: str) -> float | None:
    """``timeout`` as a float of seconds > 0, or None (no limit)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"{what}: expected a number of seconds > 0 or None, got {type(timeout).__name__} {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"{what}: expected a number of seconds > 0 or None, got {timeout}")
    return float(timeout)


def guarded(what: str, call, timeout: float | None):
    """Run the collective ``call()`` and return its result; if it has not returned within
    ``timeout`` s (another rank stopped or is stuck), end the whole job with a message that
    names this rank and ``what`` (None: no limit). One watchdog thread per process watches
    every thread."""
    timeout = check_timeout(timeout, f"timeout of the {what}")
    if timeout is None:
        return call()
    with _watch_lock:
        if not _state.get("watching"):
            threading.Thread(target=_watch, name="fastnn-watchdog", daemon=True).start()
            _state["watching"] = True
    key = threading.get_ident()
    _inflight[key] = (what, time.monotonic(), timeout)
    try:
        return call()
    finally:
        del _inflight[key]


def _watch() -> None:
    while True:
        time.sleep(WATCH_PERIOD_S)
        now = time.monotonic()
        for what, since, limit in list(_inflight.values()):
            if now - since > limit:
                abort(f"collective timed out: the {what} did not complete within {limit:g} s "
                      "(another rank stopped or is stuck); aborting the job")


def abort(message: str, code: int = 1) -> None:
    """Print ``message`` (prefixed with this rank) to stderr and end the whole job."""
    c = _state["comm"]
    sys.stderr.flush()
    where = f"{c.Get_rank()}/{c.Get_size()}" if c is not None else "0/1"
    os.write(2, f"[fastnn rank {where}] {message}\n".encode())
    if c is not None:
        _unlink_mpich_segments()
        # the launcher forwards output asynchronously and drops what is in flight when the
        # job is torn down: give it a moment to pass the message on first
        time.sleep(ABORT_GRACE_S)
        c.Abort(code)
    os._exit(code)


def _unlink_mpich_segments() -> None:
    """MPICH removes its shared-memory segments (/dev/shm/mpich_shm_*, 2 MB each) at
    MPI_Finalize only, so every aborted job left one until reboot. Those this process maps are
    unlinked now; the memory goes when the abort has ended every rank that maps them."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(maxsplit=5)[5].strip() for line in f if "/dev/shm/mpich_shm_" in line}
    except (OSError, IndexError):
        return
    for path in paths:
        with contextlib.suppress(OSError):      # another rank's abort may have unlinked it first
            os.unlink(path)


def _install_abort_hooks(comm) -> None:
    def excepthook(kind, value, tb):
        text = "".join(traceback.format_exception(kind, value, tb))
        abort(f"uncaught exception, aborting the job:\n{text}")

    def thread_hook(args):
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        abort(f"uncaught exception in thread {args.thread.name if args.thread else '?'}, aborting the job:\n{text}")

    sys.excepthook = excepthook
    threading.excepthook = thread_hook


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _set_threads(n: int) -> None:
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n)
