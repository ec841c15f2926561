"""DataParallel: synchronous data parallelism by bucketed, overlapped gradient allreduce, or
on one machine by a sharded step in shared memory.

Wrapping broadcasts rank 0's parameters and optimizer state, after checking that every
rank holds the same model (names, shapes, dtype, order) and optimizer. During backward the
model reports which gradients are final; each bucket whose gradients are all final is
handed, strictly in bucket order (the same on every rank), to the reducer, which overlaps
the allreduce with the rest of backward. ``step()`` waits for the last bucket, averages,
and runs the wrapped optimizer's fused step. When every rank is on one machine the
gradients, parameters and optimizer state live in one shared window instead
(shared_buffers.py): ``step()`` sums each rank's share of the gradient in place and each
rank updates only its share of the one shared copy of the model.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import queue
import threading
import time
import weakref

import numpy as np

from ..checks import check_bool, check_int
from ..flat import aligned_zeros
from ..module import Module
from . import runtime
from .buckets import plan_buckets
from .compression import COMPRESSIONS, decode, encode, mpi_sum_op
from .shared_buffers import SHM_HEADROOM, SharedBuffers, shared_memory_room, window_bytes, window_rows

OVERLAP_MODES = ("auto", "thread", "nonblocking", "none")
TRANSPORTS = ("auto", "shm", "mpi")
FP16_MAX = float(np.finfo(np.float16).max)


class DataParallel:
    """Average gradients over the ranks of ``comm`` and step ``optimizer`` (which must optimize
    ``model``) identically on every rank.

    bucket_cap_mb / first_bucket_mb: bucket sizes (DDP defaults 25 and 1 MB).
    overlap: "thread" (a communication thread runs blocking Allreduce, which releases the
      GIL, while backward continues), "nonblocking" (Iallreduce, completed in ``step``: MPICH
      progresses it only inside MPI calls, so little overlaps), "none" (all buckets reduced in
      ``step``, after backward) or "auto" (default): "thread" when this rank has at least two
      cores, else "none" — with one core per rank the communication thread only competes
      with backward for it (measured in bench/bench_distributed.py).
    accumulate_steps: reduce and step once every k calls to ``step()``; gradients accumulate
      in between and are averaged over k, so k micro-batches of B/k equal one batch of B.
    compression: None, "fp16" or "bf16" on the wire.
    deterministic: add the ranks' buckets in rank order: bitwise-identical results on every
      rank and from run to run (free with transport "shm", which always sums in rank order;
      over MPI it gathers every bucket, costing ``size`` times its memory).
    transport: "shm" (every rank's gradient buffer is a row of one MPI-3 shared window and
      buckets are summed in place, zero-copy: see shared_buffers.py), "mpi" (in-place
      ``Allreduce``) or "auto" (default): "shm" when every rank is on this machine, the
      shared-memory file system has room and neither compression nor "nonblocking" is
      asked for, else "mpi". With "shm", ``model.flat.grad`` moves into the window at wrap
      time (and with the sharded step ``model.flat.data`` too): take gradient and parameter
      views after wrapping. After wrapping, ``.transport`` says which is
      used (with one rank nothing is reduced and it stays as given).
    shard_optimizer: with transport "shm", keep one copy of the parameters and optimizer
      state per machine in the shared window and let each rank sum and update only its 1/K
      share of them (ZeRO stage 1-2; see shared_buffers.py): 1/K of the optimizer's work and
      memory per rank, the same results. There is nothing left to overlap then: the
      reduction is part of ``step()`` and the buckets are not used. None (default): on
      whenever the transport is "shm". After ``step()`` a sharded rank's ``model.flat.grad``
      holds the summed gradient in its share and zeros elsewhere (unsharded: the sum
      everywhere), so write gradients only by backward, or zero them with ``model.zero_grad()``;
      a backward or another ``step()`` on that sum before zeroing it is refused (RuntimeError).
    timeout: seconds a collective may take before the job is aborted with the rank, bucket
      and step named (at least 120 s at wrap time and in the first step, while ranks still
      load or compile kernels at different speeds); None: no limit.
    timeline: path of a Chrome trace (chrome://tracing, Perfetto) written by ``write_timeline``
      with, per step and bucket, when it was ready, started and finished.
    Attribute access not defined here (param_groups, step_count, state_dict, max_grad_norm,
    ...) goes to the wrapped optimizer, reads and writes, so schedules and checkpoints take a
    DataParallel like an optimizer. As in Horovod, each ``backward`` outside ``no_sync`` needs
    its ``step()`` before the next one. Wrapping a model again retires the previous wrapper
    (its ``step()`` raises); after a sharded one the parameters move back to each rank's own
    memory when the new one does not shard, and its optimizer is refused there (make a new one).
    """

    def __init__(self, model: Module, optimizer, *, comm=None, bucket_cap_mb: float = 25.0,
                 first_bucket_mb: float = 1.0, overlap: str = "auto", accumulate_steps: int = 1,
                 compression: str | None = None, deterministic: bool = False,
                 timeout: float = runtime.DEFAULT_TIMEOUT_S, timeline: str | None = None, transport: str = "auto",
                 shard_optimizer: bool | None = None) -> None:
        if comm is not None and not (hasattr(comm, "Get_rank") and hasattr(comm, "Get_size")):
            raise TypeError(f"comm: expected an MPI communicator (e.g. MPI.COMM_WORLD) or None, got "
                            f"{type(comm).__name__} {comm!r}")
        # the runtime first (under mpiexec): a check below that fails on one rank only then aborts the
        # job with its message, where the other ranks waited in MPI's start-up for ever
        if comm is None:
            self.comm = runtime.comm() or runtime.init()
        else:               # rank(), size(), the abort hooks and threads then follow this communicator
            self.comm = comm if runtime.is_initialized() else runtime.init(comm)
        if overlap not in OVERLAP_MODES:
            raise ValueError(f"overlap: expected one of {OVERLAP_MODES}, got {overlap!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport: expected one of {TRANSPORTS}, got {transport!r}")
        if transport == "shm" and (compression or overlap == "nonblocking"):
            raise ValueError(f"transport='shm' sums in place in shared memory: it takes neither compression "
                             f"nor overlap='nonblocking' (got compression={compression!r}, overlap={overlap!r})")
        if shard_optimizer and (transport == "mpi" or compression or overlap == "nonblocking"):
            raise ValueError("shard_optimizer=True needs the shared-memory transport, which takes neither "
                             f"transport='mpi', compression nor overlap='nonblocking' (got transport={transport!r}, "
                             f"compression={compression!r}, overlap={overlap!r}); pass shard_optimizer=None or False")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression: expected one of {COMPRESSIONS}, got {compression!r}")
        accumulate_steps = check_int(accumulate_steps, "accumulate_steps", 1)
        for name, value in (("bucket_cap_mb", bucket_cap_mb), ("first_bucket_mb", first_bucket_mb)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name}: expected a finite number of megabytes > 0, got {type(value).__name__} "
                                f"{value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a finite number of megabytes > 0, got {value}")
        for name, value, allowed in (("deterministic", deterministic, (bool, np.bool_)),
                                     ("shard_optimizer", shard_optimizer, (bool, np.bool_, type(None)))):
            if not isinstance(value, allowed):
                raise TypeError(f"{name}: expected {'True, False or None' if type(None) in allowed else 'a bool'}, "
                                f"got {type(value).__name__} {value!r}")
        if deterministic and compression:
            raise ValueError(f"deterministic=True adds full-precision buckets in rank order; compression rounds "
                             f"every partial sum to 16 bits: expected one of them, got compression={compression!r}")
        timeout = runtime.check_timeout(timeout, "DataParallel timeout")
        if timeline is not None and (not isinstance(timeline, (str, os.PathLike)) or timeline == ""):
            raise TypeError(f"timeline: expected a file path or None, got {type(timeline).__name__} {timeline!r}")
        if not isinstance(model, Module):
            raise TypeError(f"DataParallel: expected a fastnn model (a Module) to wrap, got {type(model).__name__} "
                            f"{model!r:.50}")
        if isinstance(optimizer, DataParallel):
            raise TypeError("DataParallel: expected a fastnn optimizer, got a DataParallel (the optimizer is wrapped "
                            "already): wrap the optimizer itself, once")
        from ..optim.base import Optimizer

        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"DataParallel: expected a fastnn optimizer (fnn.optim.X(model, ...)), got "
                            f"{type(optimizer).__name__} {optimizer!r:.50}")
        if optimizer.grads is not model.flat.grad:
            raise ValueError("DataParallel: the optimizer must be built on this model (fnn.optim.X(model, ...))")
        self.model, self.optimizer = model, optimizer
        self.size = 1 if self.comm is None else self.comm.Get_size()
        self.rank = 0 if self.comm is None else self.comm.Get_rank()
        self._wire = self.comm      # duplicated below, once the checks can be guarded
        if overlap == "auto":
            import numba

            overlap = "thread" if numba.get_num_threads() >= 2 else "none"
        self.overlap, self.accumulate_steps = overlap, int(accumulate_steps)
        self.compression, self.deterministic, self.timeout = compression, bool(deterministic), timeout
        self.timeline_path = timeline
        self.transport = transport
        self.shard_optimizer = shard_optimizer
        self._shared: SharedBuffers | None = None
        self._rest_zero = False  # the gradient row is zero outside this rank's share
        flat = model.flat
        slots = [(n, s.start, s.stop_padded) for n, s in flat.slots.items()]
        mb = 1024 * 1024
        self.buckets = plan_buckets(slots, flat.dtype.itemsize, math.ceil(bucket_cap_mb * mb),
                                    math.ceil(first_bucket_mb * mb))
        self._micro = 0
        self._sync_off = False
        self._launched = 0
        self._backward_ran = False                # a backward (outside no_sync) since the last step()
        self._stale = False                       # the buffer holds a finished step's sum: zero_grad() first
        self._count = np.zeros(4, np.float64)     # see _set_count
        self._rows, self._taken = 0, 0            # samples and micro-batches since the last step
        self._m, self._pre, self._scale, self._unequal = 0.0, 1.0, 1.0, False
        self._combined = 0                        # the sharded step's reductions so far (_combine)
        self._events: list[dict] = []
        if self.size > 1:          # the checks and the transport choice before anything changes
            # every collective of this wrapper runs on a duplicate of comm, so the communication
            # thread's allreduces never meet one that the user or another wrapper issues on comm
            # between backward and step (MPI forbids concurrent collectives on one communicator)
            self._wire = self._guarded("communicator duplicate", self.comm.Dup)
            self._check_same_model()
            self.transport = self._pick_transport(transport)
            if shard_optimizer and self.transport != "shm":
                raise ValueError("shard_optimizer=True needs the shared-memory transport, but it resolved "
                                 f"to {self.transport!r} (ranks on several machines); pass shard_optimizer=None "
                                 "or False")
            self.shard_optimizer = self.transport == "shm" and shard_optimizer is not False
            if getattr(optimizer, "_combine", None) is not None and not self.shard_optimizer:
                raise ValueError("DataParallel: this optimizer was sharded by an earlier DataParallel (it updates "
                                 "only this rank's share, its state one copy in shared memory): an unsharded step "
                                 f"(transport {self.transport!r}, shard_optimizer={shard_optimizer!r}) needs a new "
                                 "optimizer; load the old one's state_dict() into it to continue")
            self._broadcast_state()
            for _, gen in model.rngs():      # dropout: each rank its own stream, from the generator's state
                key = np.random.SeedSequence(gen.bit_generator.random_raw(2).tolist(), spawn_key=(self.rank,))
                gen.bit_generator.state = type(gen.bit_generator)(key).state
            self._mpi = _mpi()
            if self.transport == "shm":
                self._shared = self._guarded("shared window",
                                             lambda: SharedBuffers(self._wire, model, optimizer, self.shard_optimizer))
            if self.shard_optimizer:
                self._own_share = self._shared.share(0, model.flat.grad.size)
                optimizer.shard(*self._own_share, self._combine)
            self._op = mpi_sum_op(compression) if compression else None
            self._staging = {b.index: np.empty(b.size, np.uint16) for b in self.buckets} if compression else {}
            self._worker = _Worker(self) if overlap == "thread" and not self.shard_optimizer else None
            self._requests: list = []
        previous = _WRAPPERS.get(model, _gone)()     # a model has one live wrapper: the newest
        if previous is not None and previous._sharing and not self._sharing:
            self._own_parameters()
        if previous is not None:
            model.remove_grad_ready_hook(previous._on_grads_ready)
            previous._retired = True
        _WRAPPERS[model] = weakref.ref(self)     # (the wrapper holds the model: a strong value kept both)
        model.register_grad_ready_hook(self._on_grads_ready)
        self._retired = False
        self._ready = True

    @property
    def _grad(self) -> np.ndarray:
        """The model's flat gradient, read per bucket and step: the buffer the wrapper was made on
        (``model.flat`` also looks for sub-modules added since, a walk of the whole model)."""
        return self.model._flat.grad

    @property
    def _sharing(self) -> bool:
        """Whether the parameters are one copy in shared memory for every rank of the machine."""
        return self._shared is not None and self.shard_optimizer

    def _own_parameters(self) -> None:
        """Move the parameters out of a previous wrapper's shared window into this rank's own
        memory: an unsharded step updates every element on every rank, so in that one copy
        each rank's update would be applied once per rank."""
        flat = self.model.flat
        self.model.rehome(data=aligned_zeros(flat.data.size, flat.dtype))
        self.optimizer.params = flat.data

    # -- the optimizer interface ---------------------------------------------------------
    def __getattr__(self, name):
        if "optimizer" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name, value) -> None:
        """After wrapping, an attribute of the wrapped optimizer (``max_grad_norm``, ...) is set
        there, as reading it reads it there."""
        inner = self.__dict__.get("optimizer")
        if ("_ready" in self.__dict__ and name not in self.__dict__ and not hasattr(type(self), name)
                and hasattr(inner, name)):
            setattr(inner, name, value)
        else:
            object.__setattr__(self, name, value)

    @property
    def accumulating(self) -> bool:
        """True between the micro-batches of one accumulated step: the last ``step()`` only
        counted a micro-batch (LR schedules do not advance then)."""
        return self._micro % self.accumulate_steps != 0

    def step(self) -> bool:
        """Count a micro-batch; on every ``accumulate_steps``-th, average gradients over ranks
        (and micro-batches) and step the optimizer. Returns whether parameters changed."""
        if self._sync_off:
            raise RuntimeError("step() inside no_sync(): leave the no_sync block before stepping")
        if self._retired:
            raise RuntimeError("DataParallel: this wrapper was replaced by a newer DataParallel of the same model; "
                               "step the newer one")
        self._check_fresh("step() again without zero_grad() since the last step")
        self._backward_ran = False
        self._rows += self.model.batch_rows or 1
        self._taken += 1
        if (self._micro + 1) % self.accumulate_steps:
            self._micro += 1
            return False
        self._stale = True
        if self.size == 1:
            self._micro += 1
            self._rows, self._taken = 0, 0
            return self.optimizer.step(grad_scale=1.0 / self.accumulate_steps)
        if self.timeline_path:
            self._events.append({"name": "step() called", "ph": "i", "ts": self._us(), "pid": self.rank,
                                 "tid": "main", "s": "t", "args": {"step": self._sync_steps() + 1}})
        try:
            return self._synchronized_step(active=1.0)
        except FloatingPointError as e:
            if self.compression != "fp16":
                raise
            raise FloatingPointError(f"{e} (with compression='fp16' a gradient over {FP16_MAX:g}, float16's largest, "
                                     "once divided by the ranks and micro-batches, is Inf on the wire, however "
                                     "finite on each rank; compression='bf16' has float32's range)") from None
        finally:       # also after an error (a non-finite gradient), so that zero_grad() clears the sum
            self._micro += 1

    def _check_fresh(self, what: str) -> None:
        """Refuse to add to or reduce a finished step's summed gradient (zeroed by this
        zero_grad(), or by model.zero_grad(): then the buffer reads all zero)."""
        if self._stale:
            if self._grad.any():
                raise RuntimeError(f"DataParallel: {what}: the gradient buffer holds the ranks' summed gradient (a "
                                   "sharded rank: its share of it), not this rank's, so adding to it or reducing it "
                                   "again would not give what one process gives. Call zero_grad() after each step(); "
                                   "to accumulate micro-batches use accumulate_steps=k or no_sync()")
            self._stale = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients, except between the micro-batches of one accumulated step. After
        a sharded step only this rank's share is left to zero (the reduction zeroed the rest of
        the row as it read it), unless a backward has run since. ``set_to_none``: torch's
        signature, as the optimizer's ``zero_grad`` takes it."""
        check_bool(set_to_none, "zero_grad: set_to_none")
        if self._micro % self.accumulate_steps:
            return
        self._stale = False
        if self._rest_zero:
            lo, hi = self._own_share
            self.optimizer.grads[lo:hi] = 0
        else:
            self.optimizer.zero_grad()

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally without any communication; the
        next ``step()`` outside reduces the accumulated sum."""
        self._sync_off = True
        try:
            yield
        finally:
            self._sync_off = False

    @contextlib.contextmanager
    def join(self, schedule=None):
        """Let ranks with fewer batches finish first: a rank leaving the block keeps taking part
        in the others' reductions (contributing nothing, but stepping with their average, so
        every rank ends with the same parameters) until every rank has left, so uneven data
        never hangs the job; averages count only the ranks still training. Micro-batches of an
        unfinished accumulated step are not lost: leaving the block steps on them (with the
        other ranks' step, or alone in one process), as a loader's end does in Accelerate.
        A rank leaving by an exception does not shadow: the exception goes on (and, uncaught,
        ends the job). ``schedule`` (an LR schedule of this optimizer) is stepped after each
        step taken on leaving, as the training loop steps it, so the ranks' learning rates
        stay the same."""
        yield
        if self.size > 1:
            self._shadow_until_all_done(schedule)
        elif self._taken:
            if self.optimizer.step(grad_scale=1.0 / self._taken) and schedule is not None:
                schedule.step()
            self.optimizer.zero_grad()
            self._stale = False
            self._micro = (self._micro // self.accumulate_steps + 1) * self.accumulate_steps
            self._rows, self._taken = 0, 0

    # -- reduction -----------------------------------------------------------------------
    def _sync_steps(self) -> int:
        """Completed synchronized steps."""
        return self._micro // self.accumulate_steps

    def _on_grads_ready(self, offset: int) -> None:
        if offset >= self._grad.size:     # a backward begins, before it writes anything
            self._check_fresh("backward() after step() without zero_grad()")
            if self._backward_ran:
                raise RuntimeError(
                    "DataParallel: backward() ran again before step(); the previous one's gradients are already "
                    "handed to the reduction. Call step() after each backward (accumulate_steps=k steps once "
                    "every k), or run the extra backward passes first, inside no_sync()")
            self._backward_ran = not self._sync_off
        if self.size == 1:
            return
        if self.shard_optimizer:
            self._rest_zero = False
            return
        if self._sync_off or (self._micro + 1) % self.accumulate_steps:
            return
        k = self._launched
        while k < len(self.buckets) and self.buckets[k].start >= offset:
            k += 1
        self._launch_through(k)

    def _launch_through(self, k: int, active: float = 1.0, current: bool = True) -> None:
        """Hand buckets [launched, k) to the reducer, in order, after the count (``current``:
        the micro-batch whose backward runs now is not yet counted by ``step()``)."""
        if self._launched == 0 and k > 0:
            self._set_count(active, current)
            self._submit(-1)
        while self._launched < k:
            if self.timeline_path:
                self._events.append({"name": f"bucket {self._launched} ready", "ph": "i", "ts": self._us(),
                                     "pid": self.rank, "tid": "main", "s": "t"})
            self._submit(self._launched)
            self._launched += 1

    def _set_count(self, active: float, current: bool) -> None:
        """This rank's entries of the step's count: [active, m, m^2, rows], where rows are the
        samples of its micro-batches since the last step and m = rows per micro-batch; zeros
        when it takes part without data (join)."""
        rows = self._rows + ((self.model.batch_rows or 1) if current else 0)
        taken = self._taken + (1 if current else 0)
        m = rows / taken if active and taken else 0.0
        self._count[:] = (active, m, m * m, rows if active else 0.0)
        self._m = m

    def _weigh(self) -> None:
        """From the reduced count: ``_pre``, the factor this rank applies to its gradient before
        the sum, and ``_scale``, the optimizer's grad_scale after it, so that the step uses
        sum_r m_r G_r / sum_r rows_r (G_r: rank r's sum of micro-batch mean gradients), the
        mean over every sample of the global batch, as one process would take it. Equal
        micro-batches (the usual case) give _pre = 1 and _scale = 1 / (ranks * steps). Ranks
        whose shares differ (a global batch that does not split evenly) are weighted by their
        sizes; with 16-bit compression the whole factor (1 / ranks and 1 / steps included) is
        applied before the sum, so that the 16-bit partial sums stay in range (as DDP's fp16
        hook divides by the ranks)."""
        active, sm, sm2, rows = self._count
        if active == 0:               # join's last round: nothing is stepped
            self._unequal, self._pre, self._scale = False, 1.0, 0.0
            return
        self._unequal = abs(active * sm2 - sm * sm) > 1e-12 * sm * sm
        pre = self._m * active / sm if self._unequal else 1.0
        scale = sm / (active * rows)
        if self.compression:          # the whole factor before the 16-bit sum: partial sums stay mean-sized
            pre, scale = pre * scale, 1.0
        self._pre, self._scale = pre, scale

    def _submit(self, index: int) -> None:
        if index < 0 and self.overlap == "nonblocking":
            self._reduce(-1)           # blocking: each bucket's factor depends on it
        elif self.overlap == "thread":
            self._worker.submit(index)
        elif self.overlap == "nonblocking" and not (self.compression or self.deterministic):
            buf = self._bucket(index)
            if self._pre != 1.0:
                buf *= self._pre
            self._requests.append((index, self._wire.Iallreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)))
        else:
            self._requests.append((index, None))

    def _wait_all(self) -> None:
        if self.overlap == "thread":
            self._worker.wait()
        else:
            for index, request in self._requests:
                if request is None:
                    self._reduce(index)
                else:
                    t0 = self._us()
                    self._guarded(f"allreduce of bucket {index}", request.Wait)
                    if index >= 0 and self.timeline_path:
                        self._events.append({"name": f"allreduce bucket {index} (wait)", "ph": "X", "ts": t0,
                                             "dur": self._us() - t0, "pid": self.rank, "tid": "main",
                                             "args": {"step": self._sync_steps() + 1}})
            self._requests.clear()
        self._launched = 0

    def _bucket(self, index: int) -> np.ndarray:
        b = self.buckets[index]
        return self._grad[b.start:b.stop]

    def _reduce(self, index: int) -> None:
        """Blocking reduction of the count (index -1) or of one bucket (weighed first)."""
        mpi = self._mpi
        if index < 0:
            self._guarded("allreduce of the active-rank and sample count",
                          lambda: self._wire.Allreduce(mpi.IN_PLACE, self._count, op=mpi.SUM))
            self._weigh()
            return
        t0 = self._us()
        buf = self._bucket(index)
        if self._pre != 1.0 and not self.compression:
            buf *= self._pre
        if self._shared is not None:
            self._check_home()
            b = self.buckets[index]
            fence = f"allreduce of bucket {index}"
            self._guarded(fence, self._shared.fence)
            self._shared.sum_share(b.start, b.stop, into_all=True)
            self._guarded(fence, self._shared.fence)
        elif self.deterministic:
            gathered = np.empty((self.size, buf.size), buf.dtype)
            self._guarded(f"allreduce of bucket {index}", lambda: self._wire.Allgather(buf, gathered))
            np.sum(gathered, axis=0, out=buf)
        elif self.compression:
            staging = self._staging[index]
            encode(self.compression, buf, staging, self._pre)
            self._guarded(f"allreduce of bucket {index}", lambda: self._wire.Allreduce(
                self._mpi.IN_PLACE, [staging, self._mpi.UINT16_T], op=self._op))
            decode(self.compression, staging, buf)
        else:
            self._guarded(f"allreduce of bucket {index}", lambda: self._wire.Allreduce(mpi.IN_PLACE, buf, op=mpi.SUM))
        if self.timeline_path:
            thread = "comm" if self.overlap == "thread" else "main"
            self._events.append({"name": f"allreduce bucket {index}", "ph": "X", "ts": t0, "dur": self._us() - t0,
                                 "pid": self.rank, "tid": thread,
                                 "args": {"step": self._sync_steps() + 1, "elements": int(buf.size)}})

    def _synchronized_step(self, active: float) -> bool | None:
        """Count the active ranks, reduce the gradients, step (sharded: each rank its share);
        None, with nothing changed, when no rank is active (the end of ``join``)."""
        if not self.shard_optimizer:
            self._launch_through(len(self.buckets), active, current=False)
            self._wait_all()
            self._rows, self._taken = 0, 0
            if self._count[0] == 0:
                return None
            return self.optimizer.step(grad_scale=self._scale)
        self._check_home()
        self._set_count(active, current=False)
        self._shared.win.Sync()  # the count's allreduce is also the fence: every gradient is final
        self._reduce(-1)
        self._shared.win.Sync()
        self._rows, self._taken = 0, 0
        if self._count[0] == 0:
            return None
        if self._unequal:                                # shares differ: weigh every row before the sum
            if self._m:
                self._grad[...] *= self._pre
            self._guarded("fence after weighing the gradients", self._shared.fence)
        t0 = self._us()
        self._shared.sum_share(0, self._grad.size, into_all=False)
        self._rest_zero = True
        self._combined, done = 0, False
        try:
            stepped = self.optimizer.step(grad_scale=self._scale)
            done = True
            return stepped
        finally:
            # not after this rank's own error before the step's collectives (a bad lr): the abort hook
            # ends the job with it now, where a fence waited for the ranks inside them until the timeout
            if done or self._combined:
                self._guarded("fence after the sharded update", self._shared.fence)
            if self.timeline_path:
                self._events.append({"name": "sum + update own share", "ph": "X", "ts": t0, "dur": self._us() - t0,
                                     "pid": self.rank, "tid": "main", "args": {"step": self._sync_steps() + 1}})

    def _combine(self, value: float, op: str) -> float:
        """A float reduced over the ranks (the sharded optimizer's norm and checks)."""
        self._combined += 1
        mpi = self._mpi
        buf = np.array([value], np.float64)
        self._guarded(f"allreduce ({op}) of the gradient norm or non-finite count",
                      lambda: self._wire.Allreduce(mpi.IN_PLACE, buf, op={"sum": mpi.SUM, "min": mpi.MIN,
                                                                          "max": mpi.MAX}[op]))
        return float(buf[0])

    def _check_home(self) -> None:
        if self._grad is not self._shared.grad:
            raise RuntimeError("DataParallel: the model's gradient buffer moved after wrapping (wrapped twice, or "
                               "rehome() called since): this wrapper's shared window no longer holds it")

    def _shadow_until_all_done(self, schedule) -> None:
        """Join: run the same rounds as the training ranks (count, reduction, step, in the same
        mode) with zero gradients, so this rank's parameters stay identical to theirs (and a
        sharded rank keeps updating its share); stop after a round that counts no active rank."""
        pending = self._micro % self.accumulate_steps != 0    # micro-batches of an unfinished step
        while True:
            if not pending:
                self._grad[...] = 0
                self._stale = False
            stepped = self._synchronized_step(active=1.0 if pending else 0.0)
            if stepped is None:
                return
            if stepped and schedule is not None:
                schedule.step()
            self._micro = (self._micro // self.accumulate_steps + 1) * self.accumulate_steps
            pending = False

    # -- faults --------------------------------------------------------------------------
    def _guarded(self, what: str, call, limit: float | None = None):
        """Run a collective under the watchdog and return its result: abort after ``limit`` s;
        by default ``timeout``, or at least ``runtime.startup_limit()`` during the first step
        (ranks load or compile kernels at their own pace before it)."""
        if limit is None and self.timeout is not None:
            limit = self.timeout if self._sync_steps() > 0 else max(self.timeout, runtime.startup_limit())
        return runtime.guarded(f"{what} at step {self._sync_steps() + 1}", call, limit)

    def _check_same_model(self) -> None:
        flat = self.model.flat
        opt = self.optimizer
        # the optimizer's hyperparameters come from rank 0 (_broadcast_state); what sets the
        # collectives (state buffers broadcast, clipping's norm and the non-finite check) must agree
        mine = {"dtype": str(flat.dtype),
                "optimizer": {"type": type(opt).__name__,
                              "state buffers": sorted(opt.state),
                              **{o: opt.param_groups[0][o] for o in opt.global_options},
                              "max_grad_norm": opt.max_grad_norm, "nonfinite": opt.nonfinite,
                              "parameter groups": [g["params"] for g in opt.param_groups]},
                # what must agree for the collectives to match ("thread" and "none" both block)
                "settings": {"nonblocking": self.overlap == "nonblocking",
                             "transport": self.transport, "shard_optimizer": self.shard_optimizer,
                             "accumulate_steps": self.accumulate_steps, "compression": self.compression,
                             "deterministic": self.deterministic},
                "params": [(n, list(s.shape)) for n, s in flat.slots.items()],
                "buffers": [(n, list(b.shape), str(b.dtype)) for n, b in self.model.named_buffers()],
                "buckets": [(b.start, b.stop) for b in self.buckets]}
        every = self._guarded("model check (allgather)", lambda: self._wire.allgather(mine))
        bad = [r for r, sig in enumerate(every) if sig != every[0]]
        if bad:
            raise ValueError(f"DataParallel: ranks {bad} differ from rank 0: "
                             f"{_first_difference(every[0], every[bad[0]], bad[0])}")

    def _broadcast_state(self) -> None:
        self._guarded("parameter broadcast", lambda: self._wire.Bcast(self.model.flat.data, root=0))
        for name, buf in self.model.named_buffers():     # BatchNorm's running statistics
            self._guarded(f"buffer {name!r} broadcast", lambda b=buf: self._wire.Bcast(b, root=0))
        state = self.optimizer.state_dict()
        meta = self._guarded("optimizer state broadcast",
                             lambda: self._wire.bcast({k: v for k, v in state.items() if k != "state"}, root=0))
        for name, buf in state["state"].items():
            self._guarded(f"optimizer state {name!r} broadcast", lambda b=buf: self._wire.Bcast(b, root=0))
        if self.rank != 0:
            self.optimizer.load_state_dict({**meta, "state": state["state"]})

    def _pick_transport(self, wanted: str) -> str:
        """Resolve "auto" to "shm" or "mpi" (collective: every rank decides the same)."""
        if wanted == "mpi" or self.compression or self.overlap == "nonblocking":
            return "mpi"
        flat = self.model.flat
        shard = self.shard_optimizer is not False
        nbytes = window_bytes(flat.grad.size, flat.dtype, window_rows(self.size, self.optimizer, shard))
        verdict = np.array([runtime.local_size(self._wire) == self.size, shared_memory_room(nbytes)], np.int32)
        self._guarded("transport choice (allreduce)",
                      lambda: self._wire.Allreduce(_mpi().IN_PLACE, verdict, op=_mpi().MIN))
        if verdict.all():
            return "shm"
        if wanted == "shm":
            why = ("not every rank is on one machine" if not verdict[0] else
                   f"the shared-memory file system has less than {SHM_HEADROOM * nbytes / 2**20:.0f} MiB free "
                   "on some rank")
            raise ValueError(f"transport='shm': {why}; use transport='mpi' or 'auto'")
        return "mpi"

    # -- timeline ------------------------------------------------------------------------
    def _us(self) -> float:
        return (time.perf_counter() - _EPOCH) * 1e6

    def overlap_fraction(self) -> float:
        """Fraction of allreduce time spent before ``step()`` was called (i.e. hidden behind
        backward), over the steps recorded in the timeline: each span is measured against the
        ``step()`` call of its own step (a reduction inside ``step()`` hides nothing)."""
        called = {e["args"]["step"]: e["ts"] for e in self._events if e["name"] == "step() called"}
        hidden = total = 0.0
        for e in self._events:
            if e["ph"] != "X" or e["name"].endswith("(wait)") or e["args"]["step"] not in called:
                continue
            total += e["dur"]
            hidden += min(max(0.0, called[e["args"]["step"]] - e["ts"]), e["dur"])
        return hidden / total if total else 0.0

    def write_timeline(self, path: str | None = None) -> str:
        """Write the recorded events as Chrome trace JSON; returns the path."""
        path = path or self.timeline_path
        if path is None:
            raise ValueError("write_timeline: no path given and DataParallel(timeline=...) not set")
        with open(path, "w") as f:
            json.dump({"traceEvents": self._events, "displayTimeUnit": "ms"}, f)
        return path


class _Worker:
    """The communication thread: runs reductions in submission order, off the main thread."""

    def __init__(self, dp: DataParallel) -> None:
        self.dp, self.tasks = weakref.ref(dp), queue.SimpleQueue()    # weak: a running thread is never
        self.done = threading.Semaphore(0)                              # collected, nor what it holds
        self.submitted = 0
        self.error: BaseException | None = None
        weakref.finalize(dp, self.tasks.put, None)                      # the wrapper gone: the thread ends
        threading.Thread(target=self._run, name="fastnn-allreduce", daemon=True).start()

    def _run(self) -> None:
        while (index := self.tasks.get()) is not None:
            try:
                self.dp()._reduce(index)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread in wait()
                self.error = e
            self.done.release()

    def submit(self, index: int) -> None:
        self.submitted += 1
        self.tasks.put(index)

    def wait(self) -> None:
        """Block until every submitted reduction has finished; re-raise the first error."""
        for _ in range(self.submitted):
            self.done.acquire()
        self.submitted = 0
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _first_difference(ref: dict, other: dict, r: int) -> str:
    for key, what in (("dtype", "the dtype is"), ("optimizer", "the optimizer has"),
                      ("settings", "the DataParallel settings are")):
        if ref[key] != other[key]:
            if isinstance(ref[key], dict):      # only the entries that differ
                keys = [k for k in {**ref[key], **other[key]} if ref[key].get(k) != other[key].get(k)]
                return (f"{what} {{{', '.join(f'{k!r}: {ref[key].get(k)!r}' for k in keys)}}} on rank 0 but "
                        f"{{{', '.join(f'{k!r}: {other[key].get(k)!r}' for k in keys)}}} on rank {r}")
            return f"{what} {ref[key]} on rank 0 but {other[key]} on rank {r}"
    for i, (a, b) in enumerate(zip(ref["params"], other["params"])):
        if a != b:
            return f"parameter {i} is {a[0]} {tuple(a[1])} on rank 0 but {b[0]} {tuple(b[1])} on rank {r}"
    if len(ref["params"]) != len(other["params"]):
        return f"rank 0 has {len(ref['params'])} parameters, rank {r} has {len(other['params'])}"
    if ref["buffers"] != other["buffers"]:
        return f"the buffers (name, shape, dtype) are {ref['buffers']} on rank 0 but {other['buffers']} on rank {r}"
    return (f"the gradient buckets (start, stop) are {ref['buckets']} on rank 0 but {other['buckets']} on rank {r} "
            "(bucket_cap_mb or first_bucket_mb differ)")


#: model -> a weak reference to its live DataParallel (wrapping a model again retires the previous wrapper)
_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _gone() -> None:
    """What a missing entry of _WRAPPERS dereferences to."""


def _mpi():
    from mpi4py import MPI

    return MPI


_EPOCH = time.perf_counter()
