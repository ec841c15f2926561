"""One rank of the data-parallel benchmark; ``bench/bench_distributed.py`` starts it as

    mpiexec -n K python bench/distributed/worker.py MODE --out RESULT.json [options]

and reads RESULT.json, which rank 0 writes (every rank's numbers gathered to it).

Modes (each interleaves its variants inside one job, so machine noise hits them alike):

allreduce   bus bandwidth of fastnn's bucketed reduction of a large flat gradient buffer
            (``DataParallel._launch_through(len(buckets)); _wait_all()``: exactly what
            ``step()`` runs before the unsharded optimizer when backward launched nothing:
            the active-rank count, every bucket's reduction, in shared memory or by
            in-place MPI Allreduce)
            against raw ``comm.Allreduce(MPI.IN_PLACE, buf)`` on one flat buffer of the
            same size. Each repeat: Barrier, time one reduction per variant (rotated order),
            per-repeat time = the slowest rank's.
strategies  step time of the MLP 784-1024-1024-10 (per-rank batch 64): the sharded step and
            several bucket/overlap/transport strategies, plus a compute-only reference (no
            allreduce), with the
            overlap measured from each wrapper's timeline.
e2e         samples/s of fastnn DataParallel and of torch DistributedDataParallel (gloo),
            both frameworks in the same processes, in alternating blocks of steps; with
            several ranks also "<framework>-local": the same per-rank work with no allreduce
            (what this machine gives concurrent ranks: the ceiling for weak scaling) and a
            "solo" run: the plain single-process loop (no wrapper) on rank 0 while the
            other ranks sleep, X(1) measured in the same job, interleaved with X(n); with
            one rank, the plain single-process loop of each.
Every mode also reports each rank's threads (``threads`` in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

def parse(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("allreduce", "strategies", "e2e"))
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=8, help="allreduce: Dense(width, width) layers")
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--reps", type=int, default=10, help="allreduce: timed repeats per variant")
    p.add_argument("--rounds", type=int, default=5, help="strategies/e2e: blocks per variant")
    p.add_argument("--steps", type=int, default=20, help="strategies/e2e: timed steps per block")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=64, help="per-rank batch")
    p.add_argument("--models", default="mlp")
    p.add_argument("--frameworks", default="fastnn,torch")
    p.add_argument("--threads-per-rank", type=int, default=None)
    p.add_argument("--tmp", default=None, help="strategies: folder for the timelines (default: a new temp folder)")
    p.add_argument("--local", type=int, default=1,
                   help="e2e with several ranks: also time each framework without the allreduce (1/0)")
    return p.parse_args(argv)


# -- shared helpers ------------------------------------------------------------------------
def thread_report(comm, torch_mod=None) -> dict:
    """This rank's compute threads as the libraries report them, plus two CPU-time probes:
    CPU used while sleeping (busy-waiting pools would show here) and CPU used while blocked
    in an Allreduce that waits ~0.3 s for a late peer (the MPI library's polling)."""
    import numba
    from threadpoolctl import threadpool_info

    rank = 0 if comm is None else comm.Get_rank()
    info = {"rank": rank, "numba_threads": numba.get_num_threads()}
    try:
        info["numba_layer"] = numba.threading_layer()
    except ValueError:
        info["numba_layer"] = "not started"
    info["pools"] = [{"api": p["internal_api"], "lib": os.path.basename(p["filepath"]), "threads": p["num_threads"]}
                     for p in threadpool_info()]
    if torch_mod is not None:
        info["torch_threads"] = torch_mod.get_num_threads()
        info["torch_interop_threads"] = torch_mod.get_num_interop_threads()
    info["cores_visible"] = len(os.sched_getaffinity(0))
    with open("/proc/self/status") as f:
        info["os_threads"] = int(next(line.split()[1] for line in f if line.startswith("Threads:")))
    c0, w0 = time.process_time(), time.perf_counter()
    time.sleep(0.3)
    info["idle_cpu_frac"] = (time.process_time() - c0) / (time.perf_counter() - w0)
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        buf = np.zeros(16, np.float32)
        fracs = []
        for late in (1, 0):  # rank `late` arrives 0.3 s after the others
            comm.Barrier()
            if rank == late:
                time.sleep(0.3)
            c0, w0 = time.process_time(), time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            if rank != late:
                fracs.append((time.process_time() - c0) / (time.perf_counter() - w0))
        info["mpi_wait_cpu_frac"] = float(np.mean(fracs))
        info["mpi_thread_level"] = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                                    MPI.THREAD_SERIALIZED: "serialized",
                                    MPI.THREAD_MULTIPLE: "multiple"}[MPI.Query_thread()]
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        info["ranks_on_node"] = local.Get_size()
        local.Free()
    return info


def gather(comm, obj):
    return [obj] if comm is None else comm.gather(obj, root=0)


def barrier(comm):
    if comm is not None:
        comm.Barrier()


class CpuMeter:
    """Machine-wide CPU use during the timed part of a job, from /proc/stat, minus this job's
    own ranks' CPU time: how many cores other tenants of this machine kept busy meanwhile."""

    def __init__(self, comm):
        self.comm = comm
        barrier(comm)
        self.wall, self.cpu, self.stat = time.perf_counter(), time.process_time(), _proc_stat()

    def stop(self) -> dict | None:
        wall, cpu, stat = time.perf_counter() - self.wall, time.process_time() - self.cpu, _proc_stat()
        own = sum(gather(self.comm, cpu) or [])
        if self.comm is not None and self.comm.Get_rank() != 0:
            return None
        busy, steal = (stat[0] - self.stat[0]), (stat[1] - self.stat[1])
        return {"wall_s": wall, "own_cpu_s": own, "machine_busy_s": busy, "steal_s": steal,
                "foreign_cores": max(0.0, (busy - own) / wall), "steal_cores": steal / wall,
                "own_cores": own / wall}


def _proc_stat() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq) / hz, steal / hz


def write(comm, out: str, payload: dict) -> None:
    if comm is None or comm.Get_rank() == 0:
        with open(out, "w") as f:
            json.dump(payload, f)


def random_data(n: int, kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (n, 784) if kind == "mlp" else (n, 28, 28, 1)
    return rng.standard_normal(shape, dtype=np.float32), rng.integers(0, 10, n, dtype=np.int64)


def batch_stream(x, y, global_batch, comm, seed=0):
    """Endless epochs of fnn.data.batches: each rank its share of every global batch."""
    import fastnn as fnn

    shard = comm if comm is not None and comm.Get_size() > 1 else None
    epoch = 0
    while True:
        for xb, yb in fnn.data.batches(x, y, batch_size=global_batch, seed=seed, epoch=epoch, shard=shard):
            yield xb, yb
        epoch += 1


def build_fastnn(kind: str):
    import fastnn as fnn

    fnn.manual_seed(0)
    if kind == "mlp":
        model = fnn.Sequential(fnn.Dense(784, 1024, activation="relu"), fnn.Dense(1024, 1024, activation="relu"),
                               fnn.Dense(1024, 10))
    else:
        model = fnn.Sequential(fnn.Conv2D(1, 16, 3, activation="relu"), fnn.MaxPool2D(2),
                               fnn.Conv2D(16, 32, 3, activation="relu"), fnn.MaxPool2D(2), fnn.Flatten(),
                               fnn.Dense(800, 128, activation="relu"), fnn.Dense(128, 10))
    model.input_grad = False        # as fnn.fit does, and as torch skips it (the data has no requires_grad)
    return model


def build_torch(kind: str, torch):
    nn = torch.nn
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn_available() -> bool:
    import fastnn as fnn

    return all(hasattr(fnn, n) for n in ("Conv2D", "MaxPool2D", "Flatten"))


# -- allreduce -------------------------------------------------------------------------------
def run_allreduce(a) -> None:
    import fastnn as fnn
    from mpi4py import MPI

    comm = fnn.distributed.init()
    rank, size = comm.Get_rank(), comm.Get_size()
    setups = {"fastnn bucketed, shm, overlap=thread": dict(overlap="thread"),
              "fastnn bucketed, shm, overlap=none": dict(overlap="none"),
              "fastnn bucketed, MPI, overlap=thread": dict(overlap="thread", transport="mpi"),
              "fastnn bucketed, MPI, overlap=nonblocking": dict(overlap="nonblocking"),
              "fastnn bucketed, MPI, overlap=none": dict(overlap="none", transport="mpi")}
    rng = np.random.default_rng(1)
    dps = {}
    for name, kw in setups.items():  # a model each: the shared-memory transport moves its gradient buffer
        fnn.manual_seed(0)
        model = fnn.Sequential(*[fnn.Dense(a.width, a.width) for _ in range(a.layers)])
        inner = fnn.optim.SGD(model, lr=1e-3)  # never stepped: only the reduction is timed
        dps[name] = fnn.distributed.DataParallel(model, inner, shard_optimizer=False, **kw)
        grad = model.flat.grad
        # the same on every rank, so averages stay put
        grad[:] = np.random.default_rng(1).standard_normal(grad.size, dtype=np.float32)
    dp0 = next(iter(dps.values()))
    elements = sum(b.size for b in dp0.buckets)
    raw = rng.standard_normal(elements, dtype=np.float32)

    def fastnn_reduce(dp):
        def run():
            dp._launch_through(len(dp.buckets))
            dp._wait_all()
        return run

    variants = {"raw mpi4py Allreduce (1 buffer)": lambda: comm.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM),
                **{name: fastnn_reduce(dp) for name, dp in dps.items()}}
    # untimed: each fastnn reduction of rank-dependent gradients gives their sum (the averaging
    # is the optimizer's), so a wrong reduction never posts a bandwidth
    agreement = {}
    for name, dp in dps.items():
        grad = dp.model.flat.grad
        same = grad.copy()
        grad[:] = same * np.float32(rank + 1)
        variants[name]()
        want = same * np.float32(size * (size + 1) / 2)
        agreement[name] = float(np.abs(grad - want).max() / np.abs(want).max())
        if not agreement[name] < 1e-5:
            raise AssertionError(f"{name}: the reduced gradient is not the ranks' sum "
                                 f"(relative difference {agreement[name]:.1e})")
        grad[:] = same
    names = list(variants)
    for name in names:  # warm-up: first touches, MPI's shared-memory setup, thread start
        for _ in range(a.warmup):
            barrier(comm)
            variants[name]()
    samples = {n: [] for n in names}
    meter = CpuMeter(comm)
    for rep in range(a.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            comm.Barrier()
            t0 = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - t0)
        raw *= np.float32(1.0 / size)  # untimed: keeps the bare Allreduce's sums bounded
    cpu = meter.stop()
    every = gather(comm, samples)
    threads = gather(comm, thread_report(comm))
    if rank == 0:
        slowest = {n: [max(r[n][i] for r in every) for i in range(a.reps)] for n in names}
        write(comm, a.out, {
            "mode": "allreduce", "ranks": size, "layers": a.layers, "width": a.width,
            "params": int(dp0.model.num_params), "elements": int(elements), "bytes": int(elements * 4),
            "buckets": [{"index": b.index, "elements": int(b.size), "names": list(b.names)}
                        for b in dp0.buckets],
            "samples_s": slowest, "cpu": cpu, "threads": threads, "relative_difference_vs_sum": agreement})


# -- strategies ------------------------------------------------------------------------------
ONE_BUCKET = dict(bucket_cap_mb=1e6, first_bucket_mb=1e6)
STRATEGIES = (  # name, DataParallel kwargs (None: compute only, no wrapper)
    ("compute only (no allreduce)", None),
    ("sharded step in shared memory (default)", dict()),
    ("bucketed 25 MB/1 MB + thread overlap", dict(overlap="thread", shard_optimizer=False)),
    ("bucketed 25 MB/1 MB, after backward", dict(overlap="none", shard_optimizer=False)),
    ("bucketed 25 MB/1 MB, after backward, MPI Allreduce", dict(overlap="none", transport="mpi")),
    ("bucketed 25 MB/1 MB + nonblocking (MPI Iallreduce)", dict(overlap="nonblocking")),
    ("one allreduce per layer + thread overlap", dict(overlap="thread", shard_optimizer=False,
                                                      bucket_cap_mb=8192 / 2**20, first_bucket_mb=8192 / 2**20)),
    ("one allreduce per tensor + thread overlap", dict(overlap="thread", shard_optimizer=False,
                                                       bucket_cap_mb=1 / 2**20, first_bucket_mb=1 / 2**20)),
    ("one allreduce after backward", dict(overlap="none", shard_optimizer=False, **ONE_BUCKET)),
)


def run_strategies(a) -> None:
    import tempfile

    import fastnn as fnn

    comm = fnn.distributed.init(threads_per_rank=a.threads_per_rank)
    rank, size = comm.Get_rank(), comm.Get_size()
    threads = thread_report(comm)  # before anything else: fastnn's defaults as a user gets them
    gb = a.batch * size
    x, y = random_data(gb * 20, "mlp")
    tmp = a.tmp or tempfile.mkdtemp(prefix="fastnn-bench-")
    runs = []
    for name, kw in STRATEGIES:
        model = build_fastnn("mlp")
        inner = fnn.optim.Adam(model, lr=1e-3)
        dp = None if kw is None else fnn.distributed.DataParallel(
            model, inner, timeline=os.path.join(tmp, f"{len(runs)}.{rank}.json"), **kw)
        runs.append({"name": name, "kw": kw, "model": model, "opt": dp or inner, "dp": dp,
                     "data": batch_stream(x, y, gb, comm), "block_s": [], "step_s": [], "in_step_s": [],
                     "step_call_us": {}, "timed_steps": set()})

    def one_step(r, timed):
        model, opt, dp = r["model"], r["opt"], r["dp"]
        xb, yb = next(r["data"])
        t0 = time.perf_counter()
        loss, d = fnn.losses.softmax_cross_entropy(model(xb), yb)
        model.backward(d)
        t1 = time.perf_counter()
        if dp is not None:
            k = dp._sync_steps() + 1
            r["step_call_us"][k] = dp._us()
            if timed:
                r["timed_steps"].add(k)
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        if timed:
            r["step_s"].append(t2 - t0)
            r["in_step_s"].append(t2 - t1)

    for r in runs:
        for _ in range(a.warmup):
            one_step(r, False)
    meter = CpuMeter(comm)
    for rnd in range(a.rounds):
        order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]
        for r in order:
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                one_step(r, True)
            r["block_s"].append((time.perf_counter() - t0) / a.steps)
    cpu = meter.stop()
    out = []
    for r in runs:
        dp = r["dp"]
        row = {"name": r["name"], "kw": r["kw"], "block_step_s": r["block_s"], "step_s": r["step_s"],
               "in_step_s": r["in_step_s"]}
        if dp is not None:
            row["buckets"] = [] if dp.shard_optimizer else [
                {"index": b.index, "elements": int(b.size), "names": list(b.names)} for b in dp.buckets]
            row["overlap_fraction_library"] = dp.overlap_fraction()
            row.update(measured_overlap(dp._events, r["step_call_us"], r["timed_steps"]))
            if rank == 0 and r["name"].endswith("(default)"):
                row["timeline"] = dp.write_timeline()
        out.append(row)
    every = gather(comm, out)
    threads_all = gather(comm, threads)
    if rank == 0:
        write(comm, a.out, {"mode": "strategies", "ranks": size, "per_rank_batch": a.batch, "global_batch": gb,
                            "steps": a.steps, "rounds": a.rounds, "rows": every[0],
                            "rows_rank1": every[1] if size > 1 else None, "cpu": cpu, "threads": threads_all})


def measured_overlap(events, step_call_us, timed_steps) -> dict:
    """From the timeline's allreduce spans: the fraction of allreduce time that ran before
    ``step()`` was called (hidden behind backward), and the allreduce time per step."""
    hidden = total = 0.0
    for e in events:
        if e.get("ph") != "X" or e["args"]["step"] not in timed_steps:
            continue
        call = step_call_us[e["args"]["step"]]
        total += e["dur"]
        hidden += max(0.0, min(e["ts"] + e["dur"], call) - e["ts"])
    n = max(1, len(timed_steps))
    return {"overlap_measured": hidden / total if total else None,
            "allreduce_ms_per_step": total / 1e3 / n if total else None,
            "hidden_ms_per_step": hidden / 1e3 / n if total else None}


# -- end to end ------------------------------------------------------------------------------
def run_e2e(a) -> None:
    import torch  # before fastnn's init, so init's thread limits see torch's libraries too

    import fastnn as fnn

    comm = fnn.distributed.init(threads_per_rank=a.threads_per_rank)
    size = 1 if comm is None else comm.Get_size()
    rank = 0 if comm is None else comm.Get_rank()
    frameworks = a.frameworks.split(",")
    torch.set_num_threads(1)
    dist = None
    if "torch" in frameworks and size > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=size)
    threads = thread_report(comm, torch if "torch" in frameworks else None)
    gb = a.batch * size
    unknown = set(a.models.split(",")) - {"mlp", "cnn"}
    if unknown:                         # any other name built the CNN, labelled with that name
        raise SystemExit(f"worker: --models: expected mlp and/or cnn, got {sorted(unknown)}")
    models = [m for m in a.models.split(",") if m == "mlp" or cnn_available()]
    runs = []
    for kind in models:
        x, y = random_data(gb * 20, kind)
        variants = list(frameworks)
        if size > 1 and a.local:
            variants += [f"{fw}-local" for fw in frameworks] + [f"{fw}-solo" for fw in frameworks]
        for fw in variants:
            solo = fw.endswith("-solo")     # rank 0 alone, the others asleep: the single-process X(1)
            wrap = size > 1 and "-" not in fw   # -local: every rank, same per-rank work, no allreduce
            if fw.startswith("fastnn"):
                model = build_fastnn(kind)
                opt = fnn.optim.Adam(model, lr=1e-3)
                if wrap:
                    opt = fnn.distributed.DataParallel(model, opt)

                def step(xb, yb, model=model, opt=opt):
                    loss, d = fnn.losses.softmax_cross_entropy(model(xb), yb)
                    model.backward(d)
                    opt.step()
                    opt.zero_grad()
            else:
                net = build_torch(kind, torch)
                if wrap:
                    net = torch.nn.parallel.DistributedDataParallel(net)
                topt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)   # torch's fastest CPU step
                F = torch.nn.functional

                def step(xb, yb, net=net, topt=topt, kind=kind):
                    xt = torch.from_numpy(xb)
                    if kind == "cnn":  # NHWC with one channel is NCHW with the axes renamed: no copy
                        xt = xt.view(len(xb), 1, 28, 28)
                    topt.zero_grad()
                    F.cross_entropy(net(xt), torch.from_numpy(yb)).backward()
                    topt.step()
            runs.append({"framework": fw.replace("-solo", ""), "model": kind, "step": step, "solo": solo,
                         "ranks": 1 if solo else size, "global_batch": a.batch if solo else gb,
                         "data": batch_stream(x, y, a.batch, None) if solo else batch_stream(x, y, gb, comm),
                         "samples_per_s": []})

    def run_block(r, steps):
        """``steps`` steps of variant r; returns its samples/s over the slowest rank's time.
        Solo variants run on rank 0 while the other ranks sleep (polling a nonblocking barrier
        every 0.5 ms: no CPU)."""
        barrier(comm)
        t0 = time.perf_counter()
        if not r["solo"] or rank == 0:
            for _ in range(steps):
                r["step"](*next(r["data"]))
        elapsed = time.perf_counter() - t0
        if comm is not None:
            from mpi4py import MPI

            slowest = np.empty(1)
            req = comm.Iallreduce(np.array([elapsed]), slowest, op=MPI.MAX)
            while not req.Test():
                time.sleep(0.0005)
            elapsed = float(slowest[0])
        return r["global_batch"] * steps / elapsed

    for r in runs:
        run_block(r, a.warmup)
    meter = CpuMeter(comm)
    for rnd in range(a.rounds):
        order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]
        for r in order:
            r["samples_per_s"].append(run_block(r, a.steps))
    cpu = meter.stop()
    rows = [{k: r[k] for k in ("framework", "model", "ranks", "global_batch", "samples_per_s")} for r in runs]
    threads_all = gather(comm, threads)
    if dist is not None:
        dist.destroy_process_group()
    if rank == 0:
        write(comm, a.out, {"mode": "e2e", "ranks": size, "per_rank_batch": a.batch, "global_batch": gb,
                            "steps": a.steps, "rounds": a.rounds, "models": models,
                            "cnn_available": cnn_available(), "rows": rows, "cpu": cpu, "threads": threads_all})


def main(argv=None) -> int:
    a = parse(argv)
    {"allreduce": run_allreduce, "strategies": run_strategies, "e2e": run_e2e}[a.mode](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
