"""Tiling benchmark: fastnn.matmul against NumPy's BLAS (OpenBLAS) and the machine's peak.

What    GFLOP/s (2*M*N*K / time) of fastnn.matmul and of NumPy's matmul, timed side by side
        in one process, for fp32 and fp64, at 1 thread and at all cores (Numba threads via
        the ``threads=`` argument, OpenBLAS threads pinned with threadpoolctl to the same count):
          - square products n = 32 ... 4096 (into out= arrays on both sides; for n <= 64 also
            each returning a new array, allocation included: an informational line);
          - layer shapes batch x in x out (y = x @ W; two 10-class output layers among them),
            and 4096x256x256 with bias + ReLU fused
            (fastnn, one call) against NumPy's ``x @ W + b`` then ``np.maximum`` (three passes);
        the peak is GHz x SIMD lanes x FMA units x 2 x cores (fastnn.sysinfo.peak_gflops; the
        clock is measured when the VM hides cpufreq). Then a block-size sweep (fastnn.tune.sweep:
        KC x MC at n = 1024, one thread, fp32) for the heatmap.
How     fastnn and NumPy alternate call by call at 1 thread (at 2, in blocks of 8 calls after a
        0.15 s pause: see _time_pair), each timed, after warm-up (JIT and buffers);
        medians are reported. Threads of a library that just ran may still spin for a while
        after a call (OpenBLAS); alternating exposes both libraries to it alike.
Run     fastnn bench matmul            # full run: several minutes on 2 cores
        fastnn bench matmul --quick    # n <= 1024, fewer repeats, no sweep: about a minute
Output  stdout and, in --out (default bench/results), matmul.md (tables), matmul.json (every
        row with its samples), matmul.png (GFLOP/s against size with the peak lines) and
        matmul_sweep.png (heatmap of the KC x MC sweep); --quick writes matmul_quick.md/.json/
        .png instead, leaving the full run's files alone.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from tqdm import tqdm

import fastnn
from fastnn import sysinfo
from fastnn.files import check_writable
from fastnn.kernels.matmul.blocks import blocks_for

RESULTS = Path(__file__).parent / "results"
#: batch x in x out of typical layers; the last two are 10-class output layers (the direct
#: kernel's narrow tile)
LAYERS = [(32, 64, 128), (256, 784, 256), (4096, 256, 256), (1024, 1024, 1024 // 4), (128, 4096, 1024),
          (64, 128, 10), (32, 784, 10)]


#: with several threads each side runs in blocks of this many calls after a quiet gap: OpenBLAS's
#: idle workers spin for about 2^28 cycles (~0.1 s) after a call and libgomp's for a moment,
#: so calls interleaved one by one measured each pool fighting the other's spinning threads
#: for the 2 cores (fastnn 2-thread 128^3 at 1.7 GFLOP/s), not either library
BLOCK, GAP_S = 8, 0.15


def _time_pair(f, g, budget_s: float, max_reps: int, threads: int):
    f(), g(), f(), g()
    tf, tg = [], []
    t_end = time.perf_counter() + budget_s
    block = 1 if threads == 1 else BLOCK
    while len(tf) < 3 or (time.perf_counter() < t_end and len(tf) < max_reps):
        for fn, out in ((f, tf), (g, tg)):
            if block > 1:
                time.sleep(GAP_S)
                fn()                                       # wakes this side's pool: not timed
            for _ in range(block):
                t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return tf, tg


def thread_counts() -> list[int]:
    """1 and every core, as far as Numba's pool goes (matmul uses at most NUMBA_NUM_THREADS)."""
    return sorted({1, min(sysinfo.cores(), numba.config.NUMBA_NUM_THREADS)})


def run(quick: bool, peaks: dict):
    """Rows of the benchmark; ``peaks[dtype name][str(threads)]`` in GFLOP/s, measured once."""
    sizes = [32, 64, 128, 256, 512, 1024] + ([] if quick else [2048, 4096])
    threads_list = thread_counts()
    budget = 0.5 if quick else 2.0
    rows = []
    rng = np.random.default_rng(0)
    cases = []
    for dt in (np.float32, np.float64):
        for t in threads_list:
            cases += [(dt, t, "square", (n, n, n)) for n in sizes]
            cases += [(dt, t, "layer", s) for s in LAYERS if not (quick and s[0] * s[1] * s[2] > 1 << 29)]
            cases.append((dt, t, "layer+bias+relu", (4096, 256, 256)))
    for dt, t, kind, (m, k, n) in tqdm(cases, desc="bench matmul"):
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        bias = rng.standard_normal(n).astype(dt)
        c1, c2 = np.empty((m, n), dt), np.empty((m, n), dt)
        if kind == "layer+bias+relu":
            f = lambda: fastnn.matmul(a, b, c1, bias=bias, activation="relu", threads=t)  # noqa: E731
            g = lambda: np.maximum(np.add(np.matmul(a, b, out=c2), bias, out=c2), 0, out=c2)  # noqa: E731
            g2 = lambda: np.maximum(a @ b + bias, 0)  # noqa: E731  (as written in user code: new arrays)
        else:
            f = lambda: fastnn.matmul(a, b, c1, threads=t)  # noqa: E731
            g = lambda: np.matmul(a, b, out=c2)  # noqa: E731
            g2 = None
        new = None
        if kind == "square" and m <= 64:      # also each returning a new array (allocation included)
            new = (lambda: fastnn.matmul(a, b, threads=t), lambda: np.matmul(a, b))  # noqa: E731
        flops = 2.0 * m * n * k
        reps = 400 if flops < 1e7 else 100 if flops < 1e9 else 15
        with threadpool_limits(t, "blas"):
            tf, tg = _time_pair(f, g, budget * (3 if flops > 1e10 else 1), reps, t)
            extra = _time_pair(f, g2, budget, reps, t) if g2 else None      # (fastnn, NumPy as written), paired
            fresh = _time_pair(*new, budget, reps, t) if new else None
        np.testing.assert_allclose(c1, c2, rtol=1e-3 if dt == np.float32 else 1e-9, atol=1e-2 if dt == np.float32 else 1e-9)
        peak = peaks[np.dtype(dt).name][str(t)]
        mf, mg = float(np.median(tf)), float(np.median(tg))
        row = {"dtype": np.dtype(dt).name, "threads": t, "kind": kind, "m": m, "k": k, "n": n,
               "fastnn_gflops": flops / mf / 1e9, "numpy_gflops": flops / mg / 1e9, "ratio": mg / mf,
               "pct_peak": 100 * flops / mf / 1e9 / peak, "fastnn_s": tf, "numpy_s": tg}
        if extra:
            tf2, tg2 = (float(np.median(x)) for x in extra)
            row["numpy_as_written_gflops"] = flops / tg2 / 1e9
            row["ratio_as_written"] = tg2 / tf2
        if fresh:
            row["ratio_new_array"] = float(np.median(fresh[1]) / np.median(fresh[0]))
        rows.append(row)
    return rows


TARGETS = [("fp32, 1 thread, n = 512/1024/2048", lambda r: r["dtype"] == "float32" and r["threads"] == 1 and r["kind"] == "square" and r["m"] in (512, 1024, 2048), 0.9),
           ("fp64, 1 thread, n = 512/1024/2048", lambda r: r["dtype"] == "float64" and r["threads"] == 1 and r["kind"] == "square" and r["m"] in (512, 1024, 2048), 0.8),
           ("all threads, n >= 1024", lambda r: r["threads"] > 1 and r["kind"] == "square" and r["m"] >= 1024, 0.85),
           ("n <= 64", lambda r: r["kind"] == "square" and r["m"] <= 64, 1.0),
           ("4096x256x256 + bias + ReLU vs `np.maximum(x @ W + b, 0)` (the issue's expression)",
            lambda r: r["kind"] == "layer+bias+relu", 1.2, "ratio_as_written"),
           ("4096x256x256 + bias + ReLU vs NumPy in place (out= at each step; stricter)",
            lambda r: r["kind"] == "layer+bias+relu", 1.2)]


def markdown(rows, meta) -> str:
    out = [f"# fastnn.matmul vs NumPy ({meta['blas']})", "",
           f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['simd']}-bit SIMD; peak {meta['peak']}; "
           f"kernels {meta['kernels']}", "",
           "| dtype | threads | shape (M x K x N) | kind | fastnn GFLOP/s | NumPy GFLOP/s | x NumPy | % peak |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['dtype']} | {r['threads']} | {r['m']}x{r['k']}x{r['n']} | {r['kind']} | "
                   f"{r['fastnn_gflops']:.1f} | {r['numpy_gflops']:.1f} | {r['ratio']:.2f} | {r['pct_peak']:.0f} |")
    out += ["", "| target (x NumPy, median over the rows) | goal | min | median | status |", "|---|---|---|---|---|"]
    for name, sel, goal, *key in TARGETS:
        rs = [r[key[0] if key else "ratio"] for r in rows if sel(r)]
        if rs:
            out.append(f"| {name} | {goal} | {min(rs):.2f} | {np.median(rs):.2f} | "
                       f"{'PASS' if np.median(rs) >= goal else 'FAIL'} |")
    fresh = [r["ratio_new_array"] for r in rows if "ratio_new_array" in r]
    if fresh:
        out.append(f"| n <= 64, each call returning a new array (`fastnn.matmul(a, b)` vs `np.matmul(a, b)`; "
                   f"informational) | 1.0 | {min(fresh):.2f} | {np.median(fresh):.2f} | info |")
    fused = [r for r in rows if "ratio_as_written" in r]
    for r in fused:
        out.append(f"\n4096x256x256 + bias + ReLU, {r['dtype']}, {r['threads']} thread(s): {r['ratio']:.2f}x NumPy in place "
                   f"(matmul out=, add out=, maximum out=), {r['ratio_as_written']:.2f}x `np.maximum(x @ W + b, 0)`.")
    return "\n".join(out) + "\n"


def plots(rows, sweep, meta, out: Path, stem: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install fastnn[bench]): no plots")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for ax, dt in zip(axes, ("float32", "float64")):
        for t in sorted({r["threads"] for r in rows}):
            sq = [r for r in rows if r["dtype"] == dt and r["threads"] == t and r["kind"] == "square"]
            n = [r["m"] for r in sq]
            ax.plot(n, [r["fastnn_gflops"] for r in sq], "o-", label=f"fastnn, {t} thr")
            ax.plot(n, [r["numpy_gflops"] for r in sq], "s--", label=f"NumPy/OpenBLAS, {t} thr")
            ax.axhline(meta["peaks"][dt][str(t)], color="gray", lw=0.8, ls=":")
            ax.text(n[0], meta["peaks"][dt][str(t)] * 0.97, f"peak {t} thr", va="top", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (square n x n x n)")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(dt)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    if sweep:
        kcs = sorted({r["kc"] for r in sweep})
        mcs = sorted({r["mc"] for r in sweep})
        grid = np.full((len(kcs), len(mcs)), np.nan)
        for r in sweep:
            grid[kcs.index(r["kc"]), mcs.index(r["mc"])] = r["gflops"]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        im = ax.imshow(grid, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(mcs)), mcs)
        ax.set_yticks(range(len(kcs)), kcs)
        ax.set_xlabel("MC")
        ax.set_ylabel("KC")
        for i in range(len(kcs)):
            for j in range(len(mcs)):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, label="GFLOP/s")
        ax.set_title(f"{sweep[0]['dtype']} n={sweep[0]['n']}, MR x NR = {sweep[0]['mr']}x{sweep[0]['nr']}, 1 thread")
        fig.tight_layout()
        fig.savefig(out / f"{stem}_sweep.png", dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"folder for the results (default {RESULTS})")
    args = p.parse_args()
    try:                                   # before the run, not after minutes of it
        check_writable(args.out, "the results")
    except OSError as e:
        p.error(f"--out: {e}")
    stem = "matmul_quick" if args.quick else "matmul"
    blas = next((f"{i['internal_api']} {i['version']} ({i['architecture']})" for i in threadpool_info()
                 if i["user_api"] == "blas"), "unknown BLAS")
    peaks = {np.dtype(dt).name: {str(t): sysinfo.peak_gflops(dt, t)[0] for t in thread_counts()}
             for dt in (np.float32, np.float64)}
    meta = {"cpu": sysinfo.cpu_model(), "cores": sysinfo.cores(), "simd": sysinfo.simd_width_bits(), "blas": blas,
            "peak": sysinfo.peak_gflops(np.float32, 1)[1] + " (fp32, per core)", "peaks": peaks,
            "kernels": "; ".join(f"{np.dtype(c).name} {b.mr}x{b.nr} MC {b.mc} KC {b.kc} NC {b.nc} ({b.source})"
                                 for c in "fd" for b in [blocks_for(c)]),
            "numba": numba.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "command": "fastnn bench matmul" + (" --quick" if args.quick else "")}
    rows = run(args.quick, peaks)
    sweep = []
    if not (args.quick or args.no_sweep):
        from fastnn.tune import sweep as do_sweep

        with tqdm(total=30, desc="block sweep") as bar:
            sweep = do_sweep(np.float32, 1024, 3, progress=bar)
    md = markdown(rows, meta)
    print(md)
    (args.out / f"{stem}.md").write_text(md)
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "sweep": sweep}, indent=1))
    plots(rows, sweep, meta, args.out, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
