"""Data-parallel benchmark: fastnn.distributed against raw mpi4py and PyTorch DDP (gloo).

What    Four measurements, each an ``mpiexec -n K python bench/distributed/worker.py MODE``
        job started here in a subprocess with a timeout (results come back as JSON from
        rank 0). Inside every job the variants run interleaved, in rotated order, and
        medians are reported: the machine is shared and noisy, so read the ratios measured
        in one run, not absolute times across runs.
        1. Allreduce bus bandwidth, 2 ranks: fastnn's bucketed reduction of a large flat
           gradient buffer (8 x Dense(2048, 2048), 33.6M float32 parameters, 134 MB = 128 MiB; a
           4 x Dense(1024, 1024) model too) against raw mpi4py
           ``comm.Allreduce(MPI.IN_PLACE, buf)`` on one flat buffer of the same size, over both
           transports: "shm" (gradient rows in one shared window, summed in place; the default
           on one machine) and "MPI" (in-place Allreduce per bucket), each with its overlap
           modes (sharding off: this times the reduction alone).
           The timed fastnn call is ``dp._launch_through(len(dp.buckets)); dp._wait_all()``,
           the part of ``DataParallel.step()`` before the optimizer runs when backward has
           launched nothing: active-rank count, each bucket's reduction (default 25 MB
           buckets, 1 MB first); the 1/size averaging is folded into the optimizer's kernel,
           so it is not part of this. Raw Allreduce only sums.
           busbw = 2(n-1)/n x bytes / time (nccl-tests' definition), time = slowest rank.
        2. Step strategies, 2 ranks, MLP 784-1024-1024-10 (1.86M parameters), random
           MNIST-shaped data, global batch 128 (64 per rank), Adam: the default sharded step
           (each rank sums and updates its half of one shared copy of parameters and Adam
           state), bucketed shared-memory allreduce overlapped by a communication thread or
           after backward, the same over MPI Allreduce and nonblocking Iallreduce, one
           allreduce per layer (bucket cap 8 KiB: each layer's weight+bias is one bucket), one
           per tensor (cap 1 B), one after backward (one bucket), and a compute-only reference
           (same per-rank batch, no allreduce). Overlap = the share of reduction time (from
           each wrapper's timeline) that ran before ``step()`` was called.
        3. End to end, the same MLP and a small CNN (conv3x3x16-pool-conv3x3x32-pool-
           dense128-dense10, if fnn.Conv2D exists), per-rank batch 64, Adam lr 1e-3 (torch:
           Adam(fused=True), its fastest CPU step), one thread per rank for both frameworks: samples/s of fastnn DataParallel and of
           torch DistributedDataParallel (gloo; ranks take MPI's rank and size, MASTER_ADDR
           127.0.0.1, a free MASTER_PORT) at 2 ranks. In the same 2-rank job, interleaved
           with those: each framework's plain single-process loop (no wrapper) on rank 0
           while rank 1 sleeps, X(1); and the same per-rank work on both ranks without any
           allreduce, the ceiling this machine gives two concurrent ranks. Both frameworks
           run in the same processes, in alternating, order-rotated blocks of steps
           (--e2e-layout separate: one job per framework). Weak-scaling efficiency
           E = X(2) / (2 X(1)), X = samples/s at fixed per-rank batch.
        4. Threads: what each rank of a 2-rank job uses by default (fastnn.distributed.init
           only): Numba threads and layer, every BLAS/OpenMP pool threadpoolctl sees, CPU
           used while idle (busy-waiting pools would show) and while blocked in an Allreduce
           waiting 0.3 s for a late peer (the MPI library's polling).

Run     python bench/bench_distributed.py            # full, ~2.5 min on 2 cores (more under load)
        python bench/bench_distributed.py --quick    # smoke test, ~1 min
        python bench/bench_distributed.py --timeline /tmp/dp_trace.json   # also save a trace

Columns allreduce: ms = median time of one full reduction (slowest rank); busbw GB/s =
        2(n-1)/n x bytes / ms; x raw = raw median time / this median time. The raw peer is
        one mpi4py Allreduce of the whole buffer, as the issue defines it; at 128 MiB MPICH
        allocates a 64 MiB temporary each call, above glibc's mmap threshold, so each call
        also pays ~16k page faults (about half its time here): against an Allreduce spared
        them (MALLOC_MMAP_THRESHOLD_ above 64 MiB) the "x raw" of 128 MiB is about half.
        strategies: step ms = median over rounds of a block's mean step time (forward,
        loss, backward, step, zero_grad; data slicing included); spread = (p75 - p25) /
        median of single steps; x after-bw = "one allreduce after backward" step ms / this
        step ms (> 1: faster); vs compute = step ms - compute-only step ms; in step() =
        median time inside opt.step() (waiting for reductions + the Adam update);
        allreduce ms = allreduce time per step from the timeline; overlap = hidden share.
        end to end: samples/s = median over all blocks (global batch x steps / block time,
        the slowest rank's block time);
        spread = (p75 - p25) / median of the blocks; E = weak-scaling efficiency; x DDP =
        fastnn samples/s / DDP samples/s at the same ranks and model.

Output  Markdown tables and a target table (informational PASS/FAIL; the exit status is
        non-zero only if a job failed) on stdout; bench/results/distributed.json (machine,
        config, every job's raw numbers, summaries), bench/results/distributed.md (the
        tables) and bench/results/distributed.png (busbw, step time by strategy, samples/s).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "distributed" / "worker.py"
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
AFTER_BACKWARD = "one allreduce after backward"
COMPUTE_ONLY = "compute only (no allreduce)"
DEFAULT_STRATEGY = "sharded step in shared memory (default)"
NONBLOCKING = "bucketed 25 MB/1 MB + nonblocking (MPI Iallreduce)"
MPI_AFTER = "bucketed 25 MB/1 MB, after backward, MPI Allreduce"
PER_LAYER = "one allreduce per layer + thread overlap"
RAW = "raw mpi4py Allreduce (1 buffer)"
FASTNN_DEFAULT_AR = "fastnn bucketed, shm, overlap=none"
SECTIONS = ("allreduce", "strategies", "e2e")
MODELS = ("mlp", "cnn")

CONFIGS = {
    "full": dict(allreduce=[(8, 2048), (4, 1024)], ar_reps=15, st_rounds=6, st_steps=15,
                 e2e_jobs=[2], e2e_rounds=9, e2e_steps=15, timeout=300),
    "quick": dict(allreduce=[(4, 1024)], ar_reps=5, st_rounds=2, st_steps=5,
                  e2e_jobs=[2], e2e_rounds=2, e2e_steps=5, timeout=180),
}


# -- launching -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busy_cores(seconds: float) -> float:
    """Cores kept busy on this machine over ``seconds`` (from /proc/stat) while this script sleeps:
    other tenants' load, since no job of ours is running."""
    def busy():
        try:
            with open("/proc/stat") as fh:
                v = [int(x) for x in fh.readline().split()[1:8]]
        except OSError:
            return 0.0
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")
    b0 = busy()
    time.sleep(seconds)
    return (busy() - b0) / seconds


def wait_quiet(limit: float, log) -> float:
    """Measure other tenants' load (0.5 s); with ``limit`` > 0 wait up to that many seconds
    for it to fall below 0.25 cores. Returns the last measurement."""
    t_end = time.monotonic() + limit
    load = busy_cores(0.5)
    while load >= 0.25 and time.monotonic() < t_end:
        load = busy_cores(1.0)
    if limit > 0 and load >= 0.25:
        log(f"machine still busy ({load:.2f} cores used by others) after waiting {limit:g} s; running anyway")
    return load


def launch(n: int, mode: str, args: list[str], timeout: float, tmp: Path, log, quiet: float = 0.0) -> dict:
    """Run one mpiexec job; returns rank 0's JSON, or {"error": ...} after a failure or timeout
    (the whole job's process group is killed). Other tenants' load just before is recorded."""
    load_before = wait_quiet(quiet, log)
    out = tmp / f"{mode}-{n}-{time.monotonic_ns()}.json"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, str(WORKER), mode, "--out", str(out), *args]
    t0 = time.perf_counter()
    log(f"{mode}, {n} rank(s): {' '.join(args)} (others' load before: {load_before:.2f} cores)")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"{mode} with {n} ranks timed out after {timeout:g} s", "cmd": cmd}
    if proc.returncode != 0 or not out.exists():
        return {"error": f"{mode} with {n} ranks exited {proc.returncode}: {err[-3000:]}", "cmd": cmd}
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t0
    result["load_before_cores"] = load_before
    return result


# -- summaries -------------------------------------------------------------------------------
def stats(xs) -> dict:
    a = np.asarray(xs, float)
    med = float(np.median(a))
    return {"median": med, "p25": float(np.percentile(a, 25)), "p75": float(np.percentile(a, 75)),
            "spread": float((np.percentile(a, 75) - np.percentile(a, 25)) / med) if med else None, "n": len(a)}


def summarize_allreduce(job: dict) -> list[dict]:
    n, nbytes = job["ranks"], job["bytes"]
    raw = float(np.median(job["samples_s"][RAW]))
    rows = []
    for name, samples in job["samples_s"].items():
        s = stats(samples)
        rows.append({"model": f"{job['layers']} x Dense({job['width']}, {job['width']})", "params": job["params"],
                     "mb": nbytes / 2**20, "buckets": 1 if name == RAW else len(job["buckets"]), "variant": name,
                     "ms": s["median"] * 1e3, "spread": s["spread"],
                     "busbw_gbs": 2 * (n - 1) / n * nbytes / s["median"] / 1e9, "x_raw": raw / s["median"],
                     "samples_ms": [x * 1e3 for x in samples]})
    return rows


def summarize_strategies(job: dict) -> list[dict]:
    rows = {r["name"]: r for r in job["rows"]}
    base = float(np.median(rows[AFTER_BACKWARD]["block_step_s"]))
    compute = float(np.median(rows[COMPUTE_ONLY]["block_step_s"]))
    opt_only = float(np.median(rows[COMPUTE_ONLY]["in_step_s"]))
    wait_after = float(np.median(rows[MPI_AFTER]["in_step_s"])) - opt_only
    out = []
    for name, r in rows.items():
        step = float(np.median(r["block_step_s"]))
        in_step = float(np.median(r["in_step_s"]))
        overlap, how = r.get("overlap_measured"), "timeline"
        if name == NONBLOCKING and wait_after > 0:
            # no spans in its timeline: estimate from the wait in step() against the same buckets after backward
            overlap, how = max(0.0, 1 - (in_step - opt_only) / wait_after), "estimate"
        out.append({"strategy": name, "allreduces": len(r.get("buckets", [])), "step_ms": step * 1e3,
                    "spread": stats(r["step_s"])["spread"], "x_after_backward": base / step,
                    "vs_compute_ms": (step - compute) * 1e3, "in_step_ms": in_step * 1e3,
                    "allreduce_ms": r.get("allreduce_ms_per_step"), "overlap": overlap if r.get("buckets") else None,
                    "overlap_source": how if r.get("buckets") else None,
                    "buckets": r.get("buckets"), "block_step_ms": [x * 1e3 for x in r["block_step_s"]]})
    return out


E2E_ORDER = ("fastnn", "torch", "fastnn-local", "torch-local")
E2E_NAMES = {("fastnn", 2): "fastnn DataParallel", ("torch", 2): "torch DDP (gloo)",
             ("fastnn-local", 2): "fastnn, no allreduce (ceiling)", ("torch-local", 2): "torch, no allreduce (ceiling)",
             ("fastnn", 1): "fastnn, 1 process (rank 1 asleep)",
             ("torch", 1): "torch, 1 process, no DDP (rank 1 asleep)"}


def summarize_e2e(jobs: list[dict]) -> list[dict]:
    """Pool every block of every job per (model, framework, ranks); X = median samples/s.
    E = X(n) / (n X(1)) against the same framework's single process; x DDP = fastnn / torch at
    the same ranks; x no-allreduce = X(n) / X of the same per-rank work without the allreduce."""
    blocks: dict[tuple, list[float]] = {}
    batch: dict[int, int] = {}
    for job in jobs:
        if "error" in job:
            continue
        for r in job["rows"]:
            ranks = r.get("ranks", job["ranks"])
            batch[ranks] = r.get("global_batch", job["global_batch"])
            blocks.setdefault((r["model"], r["framework"], ranks), []).extend(r["samples_per_s"])
    med = {k: float(np.median(v)) for k, v in blocks.items()}
    rows = []
    key = lambda k: (k[0] != "mlp", k[0], -k[2], E2E_ORDER.index(k[1]))  # noqa: E731
    for (model, fw, ranks) in sorted(blocks, key=key):
        x = med[(model, fw, ranks)]
        base = fw.split("-")[0]
        x1 = med.get((model, base, 1))
        peer = med.get((model, "torch" + fw[len(base):], ranks))
        local = med.get((model, f"{fw}-local", ranks))
        rows.append({"model": model, "framework": fw, "ranks": ranks, "name": E2E_NAMES.get((fw, min(ranks, 2)), fw),
                     "global_batch": batch[ranks], "samples_per_s": x,
                     "spread": stats(blocks[(model, fw, ranks)])["spread"],
                     "blocks": len(blocks[(model, fw, ranks)]),
                     "weak_scaling": x / (ranks * x1) if (x1 and ranks > 1) else None,
                     "x_ddp": x / peer if (base == "fastnn" and peer) else None,
                     "x_local": x / local if local else None, "samples": blocks[(model, fw, ranks)]})
    return rows


def check_threads(reports: list[dict]) -> dict:
    expected = max(1, reports[0]["cores_visible"] // reports[0].get("ranks_on_node", 1))
    ok_numba = all(r["numba_threads"] == expected for r in reports)
    ok_pools = all(p["threads"] == expected for r in reports for p in r["pools"])
    idle = max(r["idle_cpu_frac"] for r in reports)
    return {"expected_threads": expected, "numba_ok": ok_numba, "pools_ok": ok_pools, "max_idle_cpu_frac": idle,
            "passed": bool(ok_numba and ok_pools and idle < 0.05)}


# -- reporting -------------------------------------------------------------------------------
def f(x, spec, suffix="") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def allreduce_table(rows) -> str:
    lines = ["| model | params | MiB | buckets | reduction | ms (median) | spread | busbw GB/s | × raw |",
             "|---|--:|--:|--:|---|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['mb']:.0f} | {r['buckets']} | {r['variant']} "
                     f"| {r['ms']:.1f} | {r['spread']:.0%} | {r['busbw_gbs']:.2f} | {r['x_raw']:.2f}× |")
    return "\n".join(lines)


def strategy_table(rows) -> str:
    lines = ["| strategy | allreduces/step | step ms | spread | × after-bw | vs compute ms | in step() ms "
             "| allreduce ms/step | overlap |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        ov = f(r["overlap"], ".0%") + (" (est.)" if r["overlap_source"] == "estimate" else "")
        lines.append(f"| {r['strategy']} | {r['allreduces'] or '—'} | {r['step_ms']:.1f} | {r['spread']:.0%} "
                     f"| {r['x_after_backward']:.2f}× | {r['vs_compute_ms']:+.1f} | {r['in_step_ms']:.1f} "
                     f"| {f(r['allreduce_ms'], '.1f')} | {ov} |")
    return "\n".join(lines)


def e2e_table(rows) -> str:
    lines = ["| model | run | ranks | global batch | samples/s | spread | blocks | E = X(n)/(n·X(1)) "
             "| × no-allreduce | × torch |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['model'].upper()} | {r['name']} | {r['ranks']} | {r['global_batch']} "
                     f"| {r['samples_per_s']:.0f} | {r['spread']:.0%} | {r['blocks']} | {f(r['weak_scaling'], '.3f')} "
                     f"| {f(r['x_local'], '.2f')} | {f(r['x_ddp'], '.2f', '×')} |")
    return "\n".join(lines)


def noise_table(jobs: dict) -> str:
    lines = ["| job | ranks | others' load just before (cores) | timed part s | CPU of this job (cores) "
             "| CPU of other tenants (cores) | steal (cores) |", "|---|--:|--:|--:|--:|--:|--:|"]
    for mode, js in jobs.items():
        for j in js:
            c = j.get("cpu")
            if c:
                lines.append(f"| {mode}" + (f" {j['layers']}x{j['width']}" if mode == "allreduce" else "") +
                             f" | {j['ranks']} | {f(j.get('load_before_cores'), '.2f')} | {c['wall_s']:.1f} "
                             f"| {c['own_cores']:.2f} | {c['foreign_cores']:.2f} "
                             f"| {c['steal_cores']:.2f} |")
    return "\n".join(lines)


def threads_table(reports: list[dict], where: str) -> str:
    lines = ["| job | rank | ranks on node / cores | Numba threads (layer) | threadpoolctl pools | torch threads "
             "| CPU while idle | CPU while blocked in Allreduce |", "|---|--:|--:|---|---|--:|--:|--:|"]
    for r in reports:
        pools = ", ".join(f"{p['api']} {p['lib']}: {p['threads']}" for p in r["pools"])
        lines.append(f"| {where} | {r['rank']} | {r.get('ranks_on_node', 1)} / {r['cores_visible']} "
                     f"| {r['numba_threads']} ({r['numba_layer']}) | {pools} | {r.get('torch_threads', '—')} "
                     f"| {r['idle_cpu_frac']:.1%} | {f(r.get('mpi_wait_cpu_frac'), '.0%')} |")
    return "\n".join(lines)


def targets(ar_rows, st_rows, e2e_rows, threads) -> list[dict]:
    out = []
    big = [r for r in ar_rows if r["variant"] == FASTNN_DEFAULT_AR]
    if big:
        r = max(big, key=lambda r: r["params"])
        out.append({"target": f"busbw of the bucketed path ≥ 0.9× raw Allreduce ({r['model']}, "
                              f"{r['mb']:.0f} MiB, the default shared-memory transport)", "measured": r["x_raw"],
                    "passed": r["x_raw"] >= 0.9})
    if st_rows:
        s = {r["strategy"]: r for r in st_rows}
        d = s[DEFAULT_STRATEGY]
        for other in (PER_LAYER, AFTER_BACKWARD):
            x = s[other]["step_ms"] / d["step_ms"]
            out.append({"target": f"sharded step (default) vs '{other}': step-time ratio, > 1 = default "
                                  "faster (issue 5 sets no threshold)", "measured": x, "passed": None})
    for r in e2e_rows:
        if r["framework"] == "fastnn" and r["ranks"] == 2:
            out.append({"target": f"{r['model'].upper()}: fastnn samples/s ≥ 1.0× DDP-gloo, 2 ranks",
                        "measured": r["x_ddp"], "passed": r["x_ddp"] is not None and r["x_ddp"] >= 1.0})
            out.append({"target": f"{r['model'].upper()}: fastnn weak-scaling efficiency ≥ 0.9",
                        "measured": r["weak_scaling"], "passed": r["weak_scaling"] is not None and
                        r["weak_scaling"] >= 0.9})
    if threads:
        out.append({"target": f"threads: each of 2 ranks uses {threads['expected_threads']} Numba + "
                              f"{threads['expected_threads']} BLAS/OpenMP thread(s) by default, "
                              "idle ranks burn < 5% CPU",
                    "measured": threads["max_idle_cpu_frac"], "passed": threads["passed"]})
    return out


def targets_table(rows) -> str:
    lines = ["| target | measured | result |", "|---|--:|---|"]
    for r in rows:
        m = r["measured"]
        ms = "—" if m is None else (f"{m:.1%} idle CPU" if r["target"].startswith("threads") else f"{m:.3f}")
        result = "info" if r["passed"] is None else ("PASS" if r["passed"] else "FAIL")
        lines.append(f"| {r['target']} | {ms} | {result} |")
    return "\n".join(lines)


def plot(path: Path, ar_rows, st_rows, e2e_rows) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no plot"
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6), gridspec_kw={"width_ratios": [1, 1.3, 1.2]})
    ax = axes[0]
    models = list(dict.fromkeys(r["model"] for r in ar_rows))
    variants = list(dict.fromkeys(r["variant"] for r in ar_rows))
    w = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        vals = [next((r["busbw_gbs"] for r in ar_rows if r["model"] == m and r["variant"] == v), 0) for m in models]
        ax.bar(np.arange(len(models)) + i * w, vals, w, label=v.replace("fastnn bucketed, ", "fastnn "))
    ax.set_xticks(np.arange(len(models)) + w * (len(variants) - 1) / 2,
                  [f"{m}\n{next(r['mb'] for r in ar_rows if r['model'] == m):.0f} MiB" for m in models])
    ax.set_ylabel("bus bandwidth, GB/s (higher is better)")
    ax.set_title("Allreduce, 2 ranks")
    ax.set_ylim(0, 1.4 * max([r["busbw_gbs"] for r in ar_rows] or [1]))
    if ar_rows:
        ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    if st_rows:
        names = [r["strategy"] for r in st_rows]
        ax.barh(range(len(names)), [r["step_ms"] for r in st_rows],
                color=["grey" if n == COMPUTE_ONLY else "tab:blue" for n in names])
        for i, r in enumerate(st_rows):
            if r["overlap"] is not None:
                est = " (est.)" if r["overlap_source"] == "estimate" else ""
                ax.text(r["step_ms"], i, f" overlap {r['overlap']:.0%}{est}", va="center", fontsize=7)
        ax.set_yticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms per step, median (lower is better)")
        ax.set_xlim(0, 1.25 * max(r["step_ms"] for r in st_rows))
        ax.set_title("MLP 784-1024-1024-10, global batch 128, 2 ranks")
    ax = axes[2]
    colors = {"fastnn": "tab:blue", "torch": "tab:orange", "fastnn-local": "lightsteelblue",
              "torch-local": "navajowhite"}
    ticks, labels, pos, seen = [], [], 0.0, set()
    for m in dict.fromkeys(r["model"] for r in e2e_rows):
        for n in (1, 2):
            group = [r for r in e2e_rows if r["model"] == m and r["ranks"] == n]
            if not group:
                continue
            for k, r in enumerate(group):
                label = {"fastnn": "fastnn (DataParallel at 2 ranks)", "torch": "torch (DDP-gloo at 2 ranks)",
                         "fastnn-local": "fastnn, no allreduce", "torch-local": "torch, no allreduce"}[r["framework"]]
                ax.bar(pos + k * 0.2, r["samples_per_s"], 0.2, color=colors[r["framework"]],
                       label=None if label in seen else label)
                seen.add(label)
            ticks.append(pos + 0.1 * (len(group) - 1))
            labels.append(f"{m.upper()}\n{n} rank{'s' * (n > 1)}")
            pos += 0.2 * len(group) + 0.35
    ax.set_xticks(ticks, labels)
    ax.set_ylabel("samples/s (higher is better)")
    ax.set_title("End to end: 64 samples/rank, 1 thread/rank")
    ax.set_ylim(0, 1.35 * max([r["samples_per_s"] for r in e2e_rows] or [1]))
    if e2e_rows:
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("fastnn.distributed on a shared, noisy 2-core machine: medians of interleaved repeats; "
                 "compare within this run", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def machine_info() -> dict:
    import numba
    import torch
    from mpi4py import MPI

    import fastnn as fnn
    from fastnn import sysinfo

    return {"cpu_model": sysinfo.cpu_model(), "cores": sysinfo.cores(), "platform": platform.platform(),
            "python": platform.python_version(), "fastnn": fnn.__version__, "numpy": np.__version__,
            "numba": numba.__version__, "torch": torch.__version__, "mpi4py": sys.modules["mpi4py"].__version__,
            "mpi_library": " ".join(MPI.Get_library_version().splitlines()[0].split()), "mpiexec": str(MPIEXEC)}


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: smaller model, fewer rounds (~1 min)")
    ap.add_argument("--e2e-layout", choices=("shared", "separate"), default="shared",
                    help="shared: fastnn and DDP in the same ranks, alternating blocks (default); "
                         "separate: one job per framework")
    ap.add_argument("--models", default="mlp,cnn", help="end-to-end models (cnn needs fnn.Conv2D)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: allreduce,strategies,e2e")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each job, wait up to S seconds for other tenants' load to drop below 0.25 cores")
    ap.add_argument("--timeline", type=Path, help="copy rank 0's Chrome trace of the default strategy here")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                    help="directory for distributed.{json,md,png} (default bench/results)")
    args = ap.parse_args(argv)
    if not MPIEXEC.exists():
        ap.error(f"no mpiexec beside this Python ({MPIEXEC}): pip install fastnn[mpi]")
    cfg = CONFIGS["quick" if args.quick else "full"]
    skip = set(filter(None, args.skip.split(",")))
    models = args.models.split(",")
    if not skip <= set(SECTIONS):
        ap.error(f"--skip: expected a comma list of {', '.join(SECTIONS)}, got {args.skip!r}")
    if not set(models) <= set(MODELS):
        ap.error(f"--models: expected a comma list of {', '.join(MODELS)}, got {args.models!r}")
    try:   # before the run, not after minutes of it (without importing fastnn: the jobs inherit this environment)
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out: cannot create {args.out} ({e.strerror or e})")
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    load_start = list(os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="fastnn-bench-dist-"))
    jobs: dict[str, list[dict]] = {"allreduce": [], "strategies": [], "e2e": []}
    if "allreduce" not in skip:
        for layers, width in cfg["allreduce"]:
            jobs["allreduce"].append(launch(2, "allreduce", ["--layers", str(layers), "--width", str(width),
                                                             "--reps", str(cfg["ar_reps"])], cfg["timeout"], tmp, log,
                                            args.wait_quiet))
    if "strategies" not in skip:
        jobs["strategies"].append(launch(2, "strategies", ["--rounds", str(cfg["st_rounds"]), "--steps",
                                                           str(cfg["st_steps"]), "--tmp", str(tmp)],
                                         cfg["timeout"], tmp, log,
                                             args.wait_quiet))
    if "e2e" not in skip:
        for k, n in enumerate(cfg["e2e_jobs"]):
            groups = ["fastnn,torch"] if args.e2e_layout == "shared" else \
                (["fastnn", "torch"] if k % 2 == 0 else ["torch", "fastnn"])
            for fws in groups:
                extra = ["--threads-per-rank", "1"] if n == 1 else []
                jobs["e2e"].append(launch(n, "e2e", ["--models", args.models, "--frameworks", fws, "--rounds",
                                                     str(cfg["e2e_rounds"]), "--steps", str(cfg["e2e_steps"]),
                                                     *extra], cfg["timeout"], tmp, log, args.wait_quiet))
    errors = [j["error"] for js in jobs.values() for j in js if "error" in j]
    for e in errors:
        log(f"FAILED: {e}")

    ar_rows = [r for j in jobs["allreduce"] if "error" not in j for r in summarize_allreduce(j)]
    st_job = next((j for j in jobs["strategies"] if "error" not in j), None)
    st_rows = summarize_strategies(st_job) if st_job else []
    e2e_rows = summarize_e2e(jobs["e2e"])
    thread_reports = st_job["threads"] if st_job else next(
        (j["threads"] for j in jobs["allreduce"] if "error" not in j), None)
    threads = check_threads(thread_reports) if thread_reports else None
    e2e_threads = next((j["threads"] for j in jobs["e2e"] if "error" not in j and j["ranks"] == 2), None)
    target_rows = targets(ar_rows, st_rows, e2e_rows, threads)
    for r in (st_job or {}).get("rows", []):
        if r.get("timeline"):
            written = False
            if args.timeline:
                try:
                    args.timeline.write_bytes(Path(r["timeline"]).read_bytes())
                    written = True
                    log(f"wrote the default strategy's timeline to {args.timeline}")
                except OSError as e:   # the results are still written
                    log(f"could not write the timeline to {args.timeline} ({e.strerror or e})")
            r["timeline"] = str(args.timeline) if written else None
    shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - start
    info = machine_info()
    info.update(loadavg_start=load_start, loadavg_end=list(os.getloadavg()), wall_s=elapsed)

    cmd = "python bench/bench_distributed.py" + (" --quick" if args.quick else "") + \
        (" --e2e-layout separate" if args.e2e_layout == "separate" else "")
    cnn_note = ""
    if any("error" not in j and not j.get("cnn_available", True) for j in jobs["e2e"]):
        cnn_note = "\nCNN: skipped, this fastnn has no Conv2D/MaxPool2D.\n"
    md = [f"# Data parallelism: fastnn.distributed, 2 ranks (`{cmd}`)\n",
          f"CPU: {info['cpu_model']}, {info['cores']} cores; {info['mpi_library']}, mpi4py {info['mpi4py']}; "
          f"numpy {info['numpy']}, numba {info['numba']}, torch {info['torch']}; load average "
          f"{load_start[0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end; {elapsed:.0f} s.\n",
          "The machine is shared and noisy (other jobs ran alongside): every number is a median of interleaved, "
          "order-rotated repeats; compare the ratios within this run, not absolute times across runs.\n"]
    if ar_rows:
        md += ["## 1. Allreduce bus bandwidth (busbw = 2(n−1)/n × bytes / time; time = slowest rank)\n",
               "fastnn: `dp._launch_through(len(dp.buckets)); dp._wait_all()` — the reduction `step()` runs before "
               "the optimizer (count, every bucket's in-place Allreduce; the 1/size averaging happens in the "
               "optimizer's kernel). Raw: one `comm.Allreduce(MPI.IN_PLACE, buf)` over the same number of bytes.\n",
               allreduce_table(ar_rows), ""]
    if st_rows:
        md += [f"## 2. Step time by strategy: MLP 784-1024-1024-10, global batch {st_job['global_batch']} "
               f"({st_job['per_rank_batch']} per rank), Adam, 2 ranks, 1 thread each "
               f"({st_job['rounds']} rounds × {st_job['steps']} steps)\n",
               strategy_table(st_rows), "",
               "overlap: share of the allreduce time (timeline spans) that ran before `step()` was called, i.e. "
               "hidden behind backward. The nonblocking mode records no spans in its timeline; its value is "
               "estimated as 1 − (its wait in step()) / (the wait of the same buckets reduced over MPI after "
               "backward). The sharded step has no buckets: each rank sums its half of the gradient from both "
               "ranks' rows and runs Adam on that half of the one shared copy of parameters and state; its "
               "\"allreduce ms/step\" is that fused sum + half update (compare with in step() of the others, "
               "which hold a full Adam update).\n"]
    if e2e_rows:
        e2e_ok = [j for j in jobs["e2e"] if "error" not in j]
        md += [f"## 3. End to end: samples/s, {e2e_ok[0]['per_rank_batch']} samples per rank, Adam, 1 thread per rank "
               f"({len(e2e_ok)} job(s) of {e2e_ok[0]['ranks']} ranks, {e2e_ok[0]['rounds']} blocks × "
               f"{e2e_ok[0]['steps']} steps per variant, interleaved; layout: {args.e2e_layout})\n",
               e2e_table(e2e_rows), cnn_note,
               "E: weak-scaling efficiency against the same framework's single process (1 thread, measured in "
               "the same job on rank 0 while rank 1 sleeps, in blocks interleaved with the 2-rank ones). The "
               "\"no allreduce\" rows run the same per-rank work on 2 concurrent ranks without any "
               "communication: their E is what this machine gives two ranks at that moment (shared caches, "
               "memory bandwidth, other tenants), the ceiling for the wrapped runs; × no-allreduce = "
               "wrapped / unwrapped samples/s, the cost of synchronous gradient averaging itself. Every block is "
               "timed on its slowest rank.\n"]
    if thread_reports:
        md += ["## 4. Threads per rank (2 ranks on this machine)\n", threads_table(thread_reports, "strategies"),
               threads_table(e2e_threads, "e2e (torch loaded)").split("\n", 2)[2] if e2e_threads else "", ""]
    md += ["## Machine load during the timed parts (/proc/stat)\n", noise_table(jobs), "",
           "Other tenants' CPU = the machine's busy CPU time minus this job's own ranks' CPU time, per second "
           "of the timed part. On 2 cores, anything above ~0 there slows the 2-rank runs more than the 1-rank ones.\n"]
    md += ["## Targets (informational)\n", targets_table(target_rows), ""]
    if errors:
        md += ["## Failed jobs\n", *[f"- {e.splitlines()[0]}" for e in errors], ""]
    text = "\n".join(md)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.md").write_text(text)
    note = plot(args.out / "distributed.png", ar_rows, st_rows, e2e_rows)
    if note:
        log(note)
    (args.out / "distributed.json").write_text(json.dumps({
        "machine": info, "config": {**cfg, "quick": args.quick, "e2e_layout": args.e2e_layout,
                                    "models": args.models, "command": cmd},
        "allreduce": ar_rows, "strategies": st_rows, "e2e": e2e_rows, "threads": threads,
        "thread_reports": {"strategies": thread_reports, "e2e": e2e_threads}, "targets": target_rows,
        "jobs": jobs, "errors": errors}, indent=1, default=str))
    log(f"wrote {args.out / 'distributed.json'}, distributed.md" + ("" if note else ", distributed.png"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
