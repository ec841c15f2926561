"""Precompile: fill Numba's on-disk cache with the kernels a training run uses, ahead of time.

Why   Every kernel compiles on first use (``cache=True``): on a cold cache a first training
      step waits 20-100 s, and N MPI ranks started on a cold cache each compile the same
      kernels at once on shared cores. ``fastnn compile`` runs small workloads that reach
      every kernel family (the matmul paths, the fused optimizers, the convolution, pooling,
      locally connected and block-diagonal layers) for each dtype, spread over worker
      processes, so that every later process only loads the compiled code.
How   Tasks are (dtype, part) pairs; a pool of ``jobs`` spawned processes (default: one per
      core) runs them. Compilation is single-threaded, so the tasks compile side by side.
Run   fastnn compile                      # float32 and float64, one worker per core
      fastnn compile --dtype float32 --jobs 1
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context

import numpy as np

from .checks import check_int

DTYPES = ("float32", "float64")
PARTS = ("dense", "spatial")


def _step(model, x: np.ndarray, y: np.ndarray, opt, *, input_grad: bool = True) -> None:
    """One training step of softmax cross-entropy, the first layer's input gradient on or off."""
    import fastnn as fnn

    model.input_grad = input_grad
    _, d = fnn.losses.softmax_cross_entropy(model(x), y)
    model.backward(d)
    opt.step()
    opt.zero_grad()


def _dense(dt: np.dtype) -> None:
    """Dense layers at a small and a large batch (direct, packed serial and packed parallel
    products), dropout, both losses, every optimizer and option, matmul's operand forms."""
    import fastnn as fnn

    rng = np.random.default_rng(0)
    model = fnn.Sequential(fnn.Dense(64, 256, activation="relu", dtype=dt), fnn.Dropout(0.1),
                           fnn.Dense(256, 256, activation="tanh", dtype=dt), fnn.Dense(256, 10, dtype=dt))
    opts = [fnn.optim.SGD(model, lr=0.1), fnn.optim.SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
            fnn.optim.Adam(model, amsgrad=True, max_grad_norm=1.0), fnn.optim.AdamW(model, nonfinite="skip")]
    for batch in (8, 512):
        x, y = rng.random((batch, 64)).astype(dt), rng.integers(0, 10, batch)
        for i, opt in enumerate(opts):
            _step(model, x, y, opt, input_grad=i % 2 == 0)
    _, d = fnn.losses.mean_squared_error(model(x), rng.random((batch, 10)).astype(dt))
    model.backward(d)
    for n in (1000, 1 << 17):                                    # below and above the threaded updates' threshold
        flat = (np.zeros(n, dt), np.ones(n, dt))
        for opt in (fnn.optim.SGD(flat, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
                    fnn.optim.Adam(flat, amsgrad=True, max_grad_norm=1.0), fnn.optim.AdamW(flat, nonfinite="skip")):
            opt.step()
    a, b = rng.random((300, 200)).astype(dt), rng.random((200, 100)).astype(dt)
    fnn.matmul(a[:100, :100].copy(), b[:100].copy())     # serial, direct: compiles the typed serial entry
    fnn.matmul(a.T, a, trans_a=False)
    fnn.matmul(a, b.T, trans_b=True, alpha=2.0)
    fnn.matmul(a, b, np.ones((300, 100), dt), beta=1.0, bias=np.ones(100, dt), activation="sigmoid")
    fnn.batched_matmul(rng.random((4, 30, 20)).astype(dt), rng.random((4, 20, 10)).astype(dt))


def _spatial(dt: np.dtype) -> None:
    """The demo's CNN and every convolution path (in place, tiled, packed), pooling, batch
    normalization, the locally connected and block-diagonal layers, with and without the input
    gradient."""
    import fastnn as fnn

    rng = np.random.default_rng(0)
    models = [
        (fnn.models.small_cnn((8, 8, 1), 10, dtype=dt), (8, 8, 1)),
        (fnn.Sequential(fnn.Conv2D(3, 16, 3, padding="same", activation="relu", dtype=dt), fnn.MaxPool2D(2),
                        fnn.Conv2D(16, 16, 3, stride=2, dtype=dt), fnn.AvgPool2D(2), fnn.Flatten(),
                        fnn.Dense(64, 10, dtype=dt)), (20, 20, 3)),
        (fnn.Sequential(fnn.Conv2D(4, 6, 3, groups=2, dtype=dt), fnn.BatchNorm(6, dtype=dt), fnn.GlobalAvgPool2D(),
                        fnn.Dense(6, 10, dtype=dt)), (6, 6, 4)),
        (fnn.Sequential(fnn.LocallyConnected1D(3, 8, 3, input_length=10, activation="relu", dtype=dt), fnn.Flatten(),
                        fnn.BlockDiagonalDense(64, 20, groups=4, dtype=dt), fnn.Dense(20, 10, dtype=dt)), (10, 3)),
    ]
    for model, shape in models:
        opt = fnn.optim.Adam(model)
        for batch in (4, 64):
            x, y = rng.random((batch, *shape)).astype(dt), rng.integers(0, 10, batch)
            _step(model, x, y, opt, input_grad=batch == 4)
    from fastnn.kernels.parallel import PARALLEL_MIN_ELEMENTS

    bn = fnn.BatchNorm(16, dtype=dt)              # enough values for the threaded kernels
    x = rng.random((PARALLEL_MIN_ELEMENTS // 16, 16)).astype(dt)
    bn.backward(bn(x))


def _run(task: tuple[str, str]) -> tuple[str, str, float]:
    dtype, part = task
    began = time.perf_counter()
    {"dense": _dense, "spatial": _spatial}[part](np.dtype(dtype))
    return dtype, part, time.perf_counter() - began


def precompile(dtypes: str | tuple[str, ...] = DTYPES, jobs: int | None = None) -> Iterator[tuple[str, str, float]]:
    """Compile (or load) the kernels for ``dtypes`` (names among DTYPES; one name alone is one
    dtype) in ``jobs`` worker processes (an int >= 1; None: one per core; at most one per task);
    yields (dtype, part, seconds) per task as they finish. A task that fails
    (or whose worker dies) raises RuntimeError naming it."""
    from .sysinfo import cores

    if not isinstance(dtypes, (str, tuple, list)):
        raise TypeError(f"precompile: expected a dtype name or a tuple of them among {DTYPES}, got "
                        f"{type(dtypes).__name__} {dtypes!r:.50}")
    dtypes = tuple(dict.fromkeys((dtypes,) if isinstance(dtypes, str) else dtypes))     # each once
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise ValueError(f"precompile: expected dtypes among {DTYPES}, got {list(dtypes)}")
    tasks = [(d, p) for d in dtypes for p in PARTS]
    jobs = min(len(tasks), cores() if jobs is None else check_int(jobs, "precompile: jobs", 1))
    return _results(tasks, jobs)


def _next_task(waiting: list[tuple[str, str]], running: list[tuple[str, str]]) -> tuple[str, str]:
    """The waiting task to start next: a dense one, or a spatial one whose dtype's dense task is
    over; else the first waiting one (rather than an idle worker)."""
    pending = waiting + running
    return next((t for t in waiting if t[1] == "dense" or (t[0], "dense") not in pending), waiting[0])


def _results(tasks: list[tuple[str, str]], jobs: int) -> Iterator[tuple[str, str, float]]:
    """Run the tasks, at most ``jobs`` at a time (in _next_task's order), yielding each result as
    it finishes. Both parts compile the matmul kernels: a spatial part started after its dtype's
    dense one only loads them (2 cores, both dtypes: each dtype's parts side by side took 160 s).
    """
    waiting, running = list(tasks), {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool, _ending_workers(pool):
        while waiting or running:
            while waiting and len(running) < jobs:
                task = _next_task(waiting, list(running.values()))
                waiting.remove(task)
                running[pool.submit(_run, task)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                dtype, part = running.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool as e:
                    raise RuntimeError(f"the worker compiling {dtype} {part} died ({e}; out of memory or "
                                       "killed?)") from e
                except Exception as e:
                    raise RuntimeError(f"compiling {dtype} {part} failed: {type(e).__name__}: {e}") from e


@contextmanager
def _ending_workers(pool: ProcessPoolExecutor) -> Iterator[None]:
    """On Ctrl-C (or any stop) end the workers at once: the pool's own exit waits for the
    running compiles (over a minute). Numba writes each cache file whole (a temporary file,
    then a rename), so a killed compile leaves what was cached before it."""
    try:
        yield
    except BaseException:
        workers = list((getattr(pool, "_processes", None) or {}).values())     # no public API before 3.14
        pool.shutdown(wait=False, cancel_futures=True)                          # (which forgets them)
        for process in workers:
            process.terminate()
        for process in workers:     # one that took no SIGTERM (seen once, in a worker still starting) is killed
            process.join(5)
            if process.exitcode is None:
                process.kill()
        raise
