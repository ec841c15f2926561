"""Where a data-parallel step's time goes, per rank: forward, loss, backward, step(), zero_grad().

    mpiexec -n 2 python bench/distributed/step_parts.py [--model mlp|cnn]

The benchmark's MLP 784-1024-1024-10 or CNN (bench/distributed/worker.py), 64 random samples
per rank, Adam, 1 thread per rank, four variants interleaved in blocks of 20 steps in one
job: "sharded" (the default on one machine), "shm" (shared-memory allreduce, full update on
every rank), "mpi" (bucketed in-place MPI Allreduce) and "local" (no wrapper, no
communication: what the ranks do when nothing synchronizes them). Prints each rank's median
milliseconds per part and the median of the whole step.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastnn as fnn
from worker import build_fastnn, random_data

PARTS = ("forward", "loss", "backward", "step", "zero_grad")
VARIANTS = {"sharded": {}, "shm": dict(shard_optimizer=False), "mpi": dict(transport="mpi"), "local": None}


def build(kind: str, options: dict | None):
    model = build_fastnn(kind)
    opt = fnn.optim.Adam(model, lr=1e-3)
    return model, opt if options is None else fnn.distributed.DataParallel(model, opt, **options)


def run(model, opt, x, y, steps: int) -> np.ndarray:
    times = np.empty((steps, len(PARTS)))
    for s in range(steps):
        t0 = time.perf_counter()
        out = model(x)
        t1 = time.perf_counter()
        _, d = fnn.losses.softmax_cross_entropy(out, y)
        t2 = time.perf_counter()
        model.backward(d)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        opt.zero_grad()
        times[s] = np.diff([t0, t1, t2, t3, t4, time.perf_counter()])
    return times * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    a = ap.parse_args()
    comm = fnn.distributed.init()
    rank = fnn.distributed.rank()
    x, y = random_data(64, a.model, seed=rank)
    runs = {name: build(a.model, options) for name, options in VARIANTS.items()}
    for model, opt in runs.values():
        run(model, opt, x, y, a.warmup)
    samples = {name: [] for name in runs}
    block = 20
    for _ in range(0, a.steps, block):
        for name, (model, opt) in runs.items():
            samples[name].append(run(model, opt, x, y, block))
    for r in range(fnn.distributed.size()):
        fnn.distributed.barrier()
        if r != rank:
            continue
        for name, parts in samples.items():
            steps = np.concatenate(parts)
            med = np.median(steps, axis=0)
            print(f"rank {rank} {name:7s} " + "  ".join(f"{p} {m:.2f}" for p, m in zip(PARTS, med))
                  + f"  step {np.median(steps.sum(axis=1)):.2f} ms", flush=True)
    if comm is not None:
        comm.Barrier()


if __name__ == "__main__":
    main()
