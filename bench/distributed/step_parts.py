"""Where a data-parallel step's time goes, per rank: forward, loss, backward, step(), zero_grad().

    mpiexec -n 2 python bench/distributed/step_parts.py            # sharded (the default on one machine)
    mpiexec -n 2 python bench/distributed/step_parts.py --no-shard # shared-memory allreduce, full update

MLP 784-1024-1024-10, 64 random samples per rank, Adam, 1 thread per rank; prints each rank's
median milliseconds over --steps steps after --warmup. Run both forms back to back (or with
--alternate, which interleaves blocks of both in one job) and compare medians: the machine is
noisy.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastnn as fnn

PARTS = ("forward", "loss", "backward", "step", "zero_grad")


def build(shard: bool):
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(784, 1024, activation="relu"), fnn.Dense(1024, 1024, activation="relu"),
                           fnn.Dense(1024, 10))
    model.input_grad = False
    return model, fnn.distributed.DataParallel(model, fnn.optim.Adam(model, lr=1e-3), shard_optimizer=shard)


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
    ap.add_argument("--no-shard", action="store_true", help="allreduce in shared memory, full update per rank")
    ap.add_argument("--alternate", action="store_true", help="interleave blocks of sharded and unsharded steps")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    a = ap.parse_args()
    comm = fnn.distributed.init()
    rank = fnn.distributed.rank()
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    variants = {"sharded": True, "unsharded": False} if a.alternate else \
        {"unsharded" if a.no_shard else "sharded": not a.no_shard}
    runs = {name: build(shard) for name, shard in variants.items()}
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
            med = np.median(np.concatenate(parts), axis=0)
            print(f"rank {rank} {name:9s} " + "  ".join(f"{p} {m:.2f}" for p, m in zip(PARTS, med))
                  + f"  (sum {med.sum():.2f} ms)", flush=True)
    if comm is not None:
        comm.Barrier()


if __name__ == "__main__":
    main()
