"""Optimizer-step benchmark: fastnn's fused Adam / SGD against torch.optim, NumPy and a triad.

What    One optimizer step over n float32 parameters (default 16M = 16*2**20), timed in
        one process, side by side, for each thread count (numba.set_num_threads(t) and
        torch.set_num_threads(t), the same t for both):
          - Adam (28 bytes/param: read p, g, m, v; write p, m, v) and
            SGD with momentum 0.9 (20 bytes/param: read p, g, buf; write p, buf);
          - fastnn fused step with nonfinite="ignore" (no NaN/Inf check: the same work as
            torch, the like-for-like number) and with the default nonfinite="raise" (one
            extra read pass over the gradients);
          - torch.optim fused=True, foreach=True, and the CPU default for-loop
            (foreach=False, fused=False); and torch fused=True after
            torch.nn.utils.get_total_norm(grads, error_if_nonfinite=True): the gradient
            norm and the NaN/Inf error a PyTorch user adds to get what fastnn's default
            nonfinite="raise" does (the like-for-like peer of that row);
          - NumPy, single-threaded at any t, two ways: "NumPy" in place where it can be
            (m *= b1; m += (1-b1)*g; ...: the stronger baseline, used for "x NumPy") and
            "NumPy textbook", the formulas as written (m = b1*m + (1-b1)*g: new arrays);
          - two Numba triads over the same working set in bytes as the optimizer's arrays
            (Adam: p, g, m, v = 16 B/param; SGD: p, g, buf = 12 B/param):
              "triad a += s*b"       in place, 12 B/elem: every written line was read
                                     first, as in an in-place optimizer, so no
                                     write-allocate traffic. This is the roofline used
                                     for "% triad".
              "STREAM triad a=b+s*c" 12 B/elem counted as STREAM does; plain stores also
                                     read a's lines first (write-allocate), so the memory
                                     really moves 16 B/elem and this figure reads lower.
          - the same model split into 1,000 tensors: fastnn holds them in one FlatBuffer
            (one buffer, one call; each tensor padded to 64 bytes), torch gets 1,000
            separate tensors of the same sizes.
        Every variant is timed once per round, rounds are repeated (--repeats) with the
        order rotated each round, so machine noise hits all variants alike; medians
        are reported. Warm-up steps (JIT compile, lazy state, SGD's first-step path) are
        not timed. All input arrays are written before timing (untouched np.zeros pages
        read as the shared zero page and would fake bandwidth).

Run     python bench/bench_optim.py                  # full run, t = 1 and 2: 75 s idle, up to ~4 min under load
        python bench/bench_optim.py --quick          # smoke test, seconds
        python bench/bench_optim.py --threads 2 --n 4194304 --repeats 25

Columns ms (median) and spread ((p75 - p25) / median) of the timed steps;
        GB/s = bytes/param * n / median time (useful bytes: the "raise" check's extra
        4 B/param read is not counted); x torch fused = torch fused time / this time
        (> 1: this is faster); x NumPy = NumPy time / this time; % triad = this GB/s /
        the in-place triad's GB/s at the same thread count.

Output  a Markdown table and a target table (informational PASS/FAIL; the exit status
        does not depend on them) on stdout; bench/results/optim.json (machine, versions,
        threads, every row with its samples) and bench/results/optim.md (the tables).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numba
import numpy as np
from numba import njit, prange

import fastnn as fnn  # noqa: I001 - before torch: its OpenMP runtime then starts with fastnn's GOMP_SPINCOUNT
import torch
from fastnn.files import check_writable
from fastnn.flat import FlatBuffer, aligned_zeros
from fastnn.kernels.chunks import CHUNK, make_chunks
from fastnn.kernels.parallel import PARALLEL_MIN_ELEMENTS

BYTES_PER_PARAM = {"Adam": 28, "SGD": 20}        # useful traffic of one step
FOOTPRINT_PER_PARAM = {"Adam": 16, "SGD": 12}    # bytes of arrays the step touches
LR = {"Adam": 1e-3, "SGD": 1e-2}
BETAS, EPS, MOMENTUM = (0.9, 0.999), 1e-8, 0.9
TRIAD_INPLACE = "triad a += s*b (Numba)"
TRIAD_STREAM = "STREAM triad a=b+s*c (Numba)"
TORCH_CHECKED = "torch fused=True + get_total_norm(error_if_nonfinite=True)"
TARGETS = (  # (optimizer, layout, against, minimum ratio)
    ("Adam", "1 tensor", "torch fused", 1.0), ("Adam", "1 tensor", "NumPy", 5.0),
    ("Adam", "1 tensor", "NumPy textbook", 5.0), ("Adam", "split", "torch fused", 1.5),
    ("SGD", "1 tensor", "torch fused", 1.0), ("SGD", "1 tensor", "NumPy", 5.0),
    ("SGD", "1 tensor", "NumPy textbook", 5.0),
    ("SGD", "split", "torch fused", 1.5),
)


# -- reference kernels ---------------------------------------------------------------
@njit(parallel=True, error_model="numpy", nogil=True)
def triad_inplace(a, b, s, starts, stops):
    """a += s*b over fastnn's chunk partition; slices from index 0 so the loop vectorizes."""
    for c in prange(starts.shape[0]):
        lo, hi = starts[c], stops[c]
        a_, b_ = a[lo:hi], b[lo:hi]
        for i in range(hi - lo):
            a_[i] += s * b_[i]


@njit(parallel=True, error_model="numpy", nogil=True)
def triad_stream(a, b, c, s, starts, stops):
    """a = b + s*c (STREAM triad) over fastnn's chunk partition."""
    for k in prange(starts.shape[0]):
        lo, hi = starts[k], stops[k]
        a_, b_, c_ = a[lo:hi], b[lo:hi], c[lo:hi]
        for i in range(hi - lo):
            a_[i] = b_[i] + s * c_[i]


class NumpyAdam:
    """Adam the ordinary NumPy way (the lecture's formulas, temporaries and all)."""

    def __init__(self, p, g, lr):
        self.p, self.g, self.lr, self.t = p, g, lr, 0
        self.m, self.v = np.zeros_like(p), np.zeros_like(p)

    def step(self):
        b1, b2 = BETAS
        self.t += 1
        m, v, g = self.m, self.v, self.g
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        m_hat = m / (1 - b1 ** self.t)
        v_hat = v / (1 - b2 ** self.t)
        self.p -= self.lr * m_hat / (np.sqrt(v_hat) + EPS)


class NumpyTextbookAdam(NumpyAdam):
    """Adam as the paper's formulas read, one NumPy expression per line (new arrays each step)."""

    def step(self):
        b1, b2 = BETAS
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * self.g
        self.v = b2 * self.v + (1 - b2) * self.g * self.g
        m_hat = self.m / (1 - b1 ** self.t)
        v_hat = self.v / (1 - b2 ** self.t)
        self.p -= self.lr * m_hat / (np.sqrt(v_hat) + EPS)


class NumpySGD:
    """SGD with momentum the ordinary NumPy way (b = mu*b + g; p -= lr*b)."""

    def __init__(self, p, g, lr):
        self.p, self.g, self.lr = p, g, lr
        self.buf = np.zeros_like(p)

    def step(self):
        self.buf *= MOMENTUM
        self.buf += self.g
        self.p -= self.lr * self.buf


class NumpyTextbookSGD(NumpySGD):
    """SGD with momentum as the formulas read: b = mu*b + g (a new array), p -= lr*b."""

    def step(self):
        self.buf = MOMENTUM * self.buf + self.g
        self.p -= self.lr * self.buf


#: the NumPy baselines of each optimizer: (in place, textbook)
NUMPY = {"Adam": (NumpyAdam, NumpyTextbookAdam), "SGD": (NumpySGD, NumpyTextbookSGD)}


# -- setup -----------------------------------------------------------------------------
@dataclass
class Variant:
    opt: str
    layout: str          # "1 tensor" or "split"
    impl: str
    fn: Callable[[], object]
    bytes_per_param: int
    n_elems: int | None = None   # elements touched, when not the n parameters (triads)
    samples: dict[int, list[float]] = field(default_factory=dict)   # threads -> seconds


def _filled(n: int, rng: np.random.Generator, scale: float = 1.0, offset_elems: int = 0) -> np.ndarray:
    """An aligned float32 array (data at 4*offset_elems bytes mod 64), every page written."""
    a = aligned_zeros(n + offset_elems, np.float32)[offset_elems:]
    a[:] = rng.standard_normal(n, dtype=np.float32) * np.float32(scale)
    return a


def _fastnn(opt: str, params, grads, nonfinite: str):
    if opt == "Adam":
        return fnn.optim.Adam((params, grads), lr=LR[opt], betas=BETAS, eps=EPS, nonfinite=nonfinite)
    return fnn.optim.SGD((params, grads), lr=LR[opt], momentum=MOMENTUM, nonfinite=nonfinite)


def _torch(opt: str, tensors: list[torch.Tensor], **kw):
    if opt == "Adam":
        return torch.optim.Adam(tensors, lr=LR[opt], betas=BETAS, eps=EPS, **kw)
    return torch.optim.SGD(tensors, lr=LR[opt], momentum=MOMENTUM, **kw)


def _checked(opt: torch.optim.Optimizer, tensors: list[torch.Tensor]):
    """The step after torch's own gradient-norm and NaN/Inf check (raises on non-finite)."""
    grads = [t.grad for t in tensors]

    def step():
        torch.nn.utils.get_total_norm(grads, error_if_nonfinite=True)
        opt.step()
    return step


def _torch_params(sizes: list[int], rng: np.random.Generator) -> list[torch.Tensor]:
    """Separate leaf tensors (torch's CPU allocator aligns each to 64 bytes), grads set."""
    out = []
    for k in sizes:
        p = torch.from_numpy(rng.standard_normal(k, dtype=np.float32) * np.float32(0.1)).clone()
        p.grad = torch.from_numpy(rng.standard_normal(k, dtype=np.float32)).clone()
        out.append(p)
    return out


def split_sizes(n: int, tensors: int) -> list[int]:
    base = n // tensors
    sizes = [base] * tensors
    sizes[-1] += n - base * tensors
    return sizes


def build_variants(opt: str, n: int, tensors: int, seed: int = 0) -> list[Variant]:
    rng = np.random.default_rng(seed)
    bpp = BYTES_PER_PARAM[opt]
    vs: list[Variant] = []
    add = lambda layout, impl, fn, b=bpp, e=None: vs.append(Variant(opt, layout, impl, fn, b, e))  # noqa: E731

    # one tensor of n parameters
    p, g = _filled(n, rng, 0.1), _filled(n, rng)
    for nf in ("ignore", "raise"):
        add("1 tensor", f'fastnn fused (nonfinite="{nf}")', _fastnn(opt, p, g, nf).step)
    p16, g16 = _filled(n, rng, 0.1, offset_elems=4), _filled(n, rng, offset_elems=4)
    add("1 tensor", 'fastnn fused ("ignore"), p/g 16 B off 64 B', _fastnn(opt, p16, g16, "ignore").step)
    tp = _torch_params([n], rng)
    add("1 tensor", "torch fused=True", _torch(opt, tp, fused=True).step)
    add("1 tensor", TORCH_CHECKED, _checked(_torch(opt, tp, fused=True), tp))
    add("1 tensor", "torch foreach=True", _torch(opt, tp, foreach=True, fused=False).step)
    add("1 tensor", "torch for-loop (CPU default)", _torch(opt, tp, foreach=False, fused=False).step)
    np_p, np_g = _filled(n, rng, 0.1), _filled(n, rng)
    in_place, textbook = NUMPY[opt]
    add("1 tensor", "NumPy (1 thread)", in_place(np_p, np_g, LR[opt]).step)
    add("1 tensor", "NumPy textbook (1 thread)", textbook(np_p.copy(), np_g, LR[opt]).step)

    # triads over the optimizer's working set in bytes
    footprint = FOOTPRINT_PER_PARAM[opt] * n
    n_in = footprint // 8        # two float32 arrays
    a, b = _filled(n_in, rng, 0.1), _filled(n_in, rng, 1e-3)
    st, sp, _ = make_chunks([(0, n_in, 0)])
    s = np.float32(1e-3)
    add("1 tensor", TRIAD_INPLACE, lambda: triad_inplace(a, b, s, st, sp), 12, n_in)
    n_st = footprint // 12       # three float32 arrays
    a3, b3, c3 = _filled(n_st, rng, 0.1), _filled(n_st, rng, 0.1), _filled(n_st, rng, 0.1)
    st3, sp3, _ = make_chunks([(0, n_st, 0)])
    add("1 tensor", TRIAD_STREAM, lambda: triad_stream(a3, b3, c3, s, st3, sp3), 12, n_st)

    # the same parameters split into `tensors` tensors
    sizes = split_sizes(n, tensors)
    fb = FlatBuffer({f"t{i}": (k,) for i, k in enumerate(sizes)}, np.float32)
    fb.data[:] = rng.standard_normal(fb.data.size, dtype=np.float32) * np.float32(0.1)
    for i, k in enumerate(sizes):   # real gradients in the tensors, zero padding between them
        fb.grad_view(f"t{i}")[:] = rng.standard_normal(k, dtype=np.float32)
    for nf in ("ignore", "raise"):
        add("split", f'fastnn fused (nonfinite="{nf}")', _fastnn(opt, fb.data, fb.grad, nf).step)
    tps = _torch_params(sizes, rng)
    add("split", "torch fused=True", _torch(opt, tps, fused=True).step)
    add("split", TORCH_CHECKED, _checked(_torch(opt, tps, fused=True), tps))
    add("split", "torch foreach=True", _torch(opt, tps, foreach=True, fused=False).step)
    add("split", "torch for-loop (CPU default)", _torch(opt, tps, foreach=False, fused=False).step)
    return vs


def check_agreement(opt: str, n: int = 2 * CHUNK + 7, steps: int = 5) -> float:
    """Largest |fastnn - torch fused| over the parameters after ``steps`` steps from the same
    start, untimed, at the current thread count: n >= PARALLEL_MIN_ELEMENTS, so with several
    threads this is the parallel kernel the timed rounds run. The two NumPy baselines are held
    to torch fused too. Raises when any disagree, so a wrong kernel or baseline never posts a
    speed or a ratio."""
    assert n >= PARALLEL_MIN_ELEMENTS
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)
    grads = [rng.standard_normal(n, dtype=np.float32) for _ in range(steps)]
    p, g = p0.copy(), np.zeros(n, np.float32)
    ours = _fastnn(opt, p, g, "raise")
    baselines = [cls(p0.copy(), g, LR[opt]) for cls in NUMPY[opt]]
    t = torch.from_numpy(p0.copy())
    t.grad = torch.zeros(n)
    theirs = _torch(opt, [t], fused=True)
    for gs in grads:
        g[:] = gs
        ours.step()
        for b in baselines:
            b.step()
        t.grad.copy_(torch.from_numpy(gs))
        theirs.step()
    for name, got in [("fastnn", p)] + [(type(b).__name__, b.p) for b in baselines]:
        np.testing.assert_allclose(got, t.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{opt}: {name} and torch fused disagree")
    return float(np.abs(p - t.numpy()).max())


# -- timing ----------------------------------------------------------------------------
def set_threads(t: int) -> None:
    numba.set_num_threads(t)
    torch.set_num_threads(t)


def run_rounds(vs: list[Variant], t: int, repeats: int, warmup: int) -> None:
    set_threads(t)
    for v in vs:
        for _ in range(warmup):
            v.fn()
        v.samples[t] = []
    clock = time.perf_counter
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(vs)
            for v in vs[k:] + vs[:k]:
                t0 = clock()
                v.fn()
                v.samples[t].append(clock() - t0)
    finally:
        gc.enable()


def summarize(vs: list[Variant], n: int, t: int) -> list[dict]:
    med = {(v.layout, v.impl): float(np.median(v.samples[t])) for v in vs}
    torch_fused = {lay: med[(lay, "torch fused=True")] for lay in ("1 tensor", "split")}
    numpy_t = med[("1 tensor", "NumPy (1 thread)")]
    textbook_t = med[("1 tensor", "NumPy textbook (1 thread)")]
    triad_v = next(v for v in vs if v.impl == TRIAD_INPLACE)
    triad_gbs = 12 * triad_v.n_elems / med[("1 tensor", TRIAD_INPLACE)] / 1e9
    rows = []
    for v in vs:
        s = np.asarray(v.samples[t])
        m = float(np.median(s))
        elems = v.n_elems or n
        gbs = v.bytes_per_param * elems / m / 1e9
        is_triad = v.impl in (TRIAD_INPLACE, TRIAD_STREAM)
        rows.append(dict(
            optimizer=v.opt, layout=v.layout, impl=v.impl, threads=t, n=n, elements=elems,
            bytes_per_elem=v.bytes_per_param, median_ms=m * 1e3,
            p25_ms=float(np.percentile(s, 25)) * 1e3, p75_ms=float(np.percentile(s, 75)) * 1e3,
            spread=float((np.percentile(s, 75) - np.percentile(s, 25)) / m), gbs=gbs,
            x_torch_fused=None if is_triad else torch_fused[v.layout] / m,
            x_numpy=None if (is_triad or v.layout != "1 tensor") else numpy_t / m,
            x_numpy_textbook=None if (is_triad or v.layout != "1 tensor") else textbook_t / m,
            frac_triad=gbs / triad_gbs, samples_ms=[float(x) * 1e3 for x in s]))
    return rows


# -- reporting -------------------------------------------------------------------------
def _fmt(x, spec, suffix=""):
    return "—" if x is None else f"{x:{spec}}{suffix}"


def results_table(rows: list[dict], tensors: int) -> str:
    lines = ["| optimizer | layout | threads | implementation | ms (median) | spread | GB/s "
             "| × torch fused | × NumPy | % triad |",
             "|---|---|--:|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        layout = f"{tensors} tensors" if r["layout"] == "split" else "1 tensor"
        lines.append(f"| {r['optimizer']} | {layout} | {r['threads']} | {r['impl']} | {r['median_ms']:.2f} "
                     f"| {r['spread']:.0%} | {r['gbs']:.1f} | {_fmt(r['x_torch_fused'], '.2f', '×')} "
                     f"| {_fmt(r['x_numpy'], '.2f', '×')} | {r['frac_triad']:.0%} |")
    return "\n".join(lines)


def targets(rows: list[dict], tensors: int) -> tuple[str, list[dict]]:
    lines = ["| target | threads | fastnn nonfinite | measured | result |", "|---|--:|---|--:|---|"]
    out = []
    for opt, layout, against, minimum in TARGETS:
        for r in rows:
            if r["optimizer"] != opt or r["layout"] != layout or not r["impl"].startswith("fastnn fused (non"):
                continue
            x = {"torch fused": r["x_torch_fused"], "NumPy": r["x_numpy"],
                 "NumPy textbook": r["x_numpy_textbook"]}[against]
            nf = "ignore (like-for-like)" if '"ignore"' in r["impl"] else "raise (default)"
            where = f"{opt} {n_label(r['n'])}" + (f", {tensors} tensors" if layout == "split" else "")
            ok = x >= minimum
            lines.append(f"| {where}: ≥ {minimum:g}× {against} | {r['threads']} | {nf} | {x:.2f}× "
                         f"| {'PASS' if ok else 'FAIL'} |")
            out.append(dict(optimizer=opt, layout=layout, against=against, minimum=minimum, threads=r["threads"],
                            nonfinite=nf.split()[0], measured=x, passed=bool(ok)))
    checked = {(r["optimizer"], r["layout"], r["threads"]): r["median_ms"] for r in rows if r["impl"] == TORCH_CHECKED}
    for r in rows:
        key = (r["optimizer"], r["layout"], r["threads"])
        if r["impl"] == 'fastnn fused (nonfinite="raise")' and key in checked:
            where = f"{r['optimizer']} {n_label(r['n'])}" + (f", {tensors} tensors" if r["layout"] == "split" else "")
            lines.append(f"| {where}: × torch fused with get_total_norm(error_if_nonfinite=True) (no threshold set) "
                         f"| {r['threads']} | raise (default) | {checked[key] / r['median_ms']:.2f}× | info |")
    return "\n".join(lines), out


def n_label(n: int) -> str:
    return f"{n / 2**20:g}M" if n % 2**16 == 0 else f"{n:,}"


def machine_info(threads: list[int], loadavg_start: list[float]) -> dict:
    cpu: dict[str, str] = {}
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = (x.strip() for x in line.partition(":"))
            if key in ("model name", "cpu family", "model", "stepping", "cache size") and key not in cpu:
                cpu[key] = val
            elif key == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return dict(
        cpu_model=cpu.get("model name", "unknown"), cpu_family=cpu.get("cpu family"), cpu_model_id=cpu.get("model"),
        cpu_stepping=cpu.get("stepping"), cpu_cache=cpu.get("cache size"),
        simd=sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f")),
        logical_cpus=os.cpu_count(), usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        loadavg_start=loadavg_start, platform=platform.platform(), python=platform.python_version(),
        numpy=np.__version__, numba=numba.__version__, torch=torch.__version__, fastnn=fnn.__version__,
        numba_threading_layer=_numba_layer(), numba_max_threads=numba.config.NUMBA_NUM_THREADS,
        torch_parallel_backend=next((ln.split(":", 1)[1].strip() for ln in torch.__config__.parallel_info().splitlines()
                                     if ln.startswith("ATen parallel backend")), None),
        threads=threads)


def _numba_layer() -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:   # no parallel region has run yet
        return None


NOTES = """Notes
- Same thread count for both libraries: numba.set_num_threads(t) and torch.set_num_threads(t).
- fastnn buffers come from fastnn.flat.aligned_zeros (64-byte aligned). NumPy aligns only to
  16 bytes, so 32-byte AVX loads straddle a cache line every other load; fastnn's docs say
  this costs about 30% in the fused kernels. The "p/g 16 B off 64 B" row measures that case
  on this machine (p and g offset, optimizer state aligned). torch's CPU allocator aligns
  tensors to 64 bytes.
- nonfinite="ignore" does the same work as torch (no NaN/Inf check), so it is the
  like-for-like number against torch fused. The default nonfinite="raise" adds one read pass
  over the gradients (4 B/param, not counted in GB/s) and must finish it before writing
  anything, so that a NaN leaves parameters and state as they were; its like-for-like peer is
  torch fused after torch.nn.utils.get_total_norm(grads, error_if_nonfinite=True).
- "% triad" is against the in-place triad a += s*b (12 B/elem, no write-allocate, like the
  in-place optimizer updates) over the same working set in bytes, at the same t, in the same
  run. At 1 thread, one core's bandwidth is bounded by its outstanding misses rather than by
  DRAM, and a kernel with more streams (Adam: 7) can exceed the 3-stream triad (> 100%).
- NumPy runs single-threaded at every t; "× NumPy" compares against it at the same t.
- Medians are over interleaved, order-rotated rounds on a shared, noisy machine. Compare
  ratios within one run, not absolute times across runs."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--n", type=int, default=16 * 2**20, help="parameters (default 16*2**20)")
    ap.add_argument("--tensors", type=int, default=1000, help="tensors in the split layout (default 1000)")
    ap.add_argument("--repeats", type=int, default=15, help="timed steps per variant (default 15)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (default 2)")
    ap.add_argument("--optimizers", nargs="+", choices=sorted(BYTES_PER_PARAM), default=["Adam", "SGD"])
    ap.add_argument("--quick", action="store_true", help="smoke test: n=2**20, 3 repeats, 1 warm-up step")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="directory for optim.json and optim.md (default bench/results)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.warmup = 2**20, 3, 1
    max_t = numba.config.NUMBA_NUM_THREADS
    if any(not 1 <= t <= max_t for t in args.threads):
        ap.error(f"--threads: each must be in 1..{max_t} (NUMBA_NUM_THREADS), got {args.threads}")
    args.threads = sorted(set(args.threads))      # a repeated count would overwrite its own samples
    if args.repeats < 1 or args.warmup < 1 or not 1 <= args.tensors <= args.n:
        ap.error("--repeats and --warmup must be >= 1 and --tensors in 1..n")
    try:                                   # before the run, not after minutes of it
        check_writable(args.out, "the results")
    except OSError as e:
        ap.error(f"--out: {e}")

    loadavg_start = list(os.getloadavg())
    start = time.perf_counter()
    rows: list[dict] = []
    agreement = {}
    for opt in args.optimizers:
        set_threads(max(args.threads))
        agreement[opt] = check_agreement(opt)
        print(f"[{time.perf_counter() - start:6.1f}s] {opt}: fastnn and NumPy agree with torch fused (fastnn's "
              f"max |diff| {agreement[opt]:.1e} after 5 steps); allocating n={args.n:,}", file=sys.stderr, flush=True)
        vs = build_variants(opt, args.n, args.tensors)
        for t in args.threads:
            print(f"[{time.perf_counter() - start:6.1f}s] {opt}: {t} thread(s), {len(vs)} variants x "
                  f"{args.repeats} rounds", file=sys.stderr, flush=True)
            run_rounds(vs, t, args.repeats, args.warmup)
            rows += summarize(vs, args.n, t)
        del vs
        gc.collect()
    elapsed = time.perf_counter() - start

    info = machine_info(args.threads, loadavg_start)
    info["loadavg_end"] = list(os.getloadavg())
    info["wall_s"] = elapsed
    info["max_abs_diff_vs_torch_fused_after_5_steps"] = agreement
    table = results_table(rows, args.tensors)
    target_md, target_rows = targets(rows, args.tensors)
    head = (f"# Optimizer step, n = {args.n:,} float32 parameters ({n_label(args.n)}), "
            f"median of {args.repeats} interleaved steps\n\n"
            f"CPU: {info['cpu_model']} (family {info['cpu_family']} model {info['cpu_model_id']}, "
            f"{info['usable_cpus']} usable cores, {'/'.join(info['simd'])}); "
            f"numpy {np.__version__}, numba {numba.__version__} ({info['numba_threading_layer']} layer), "
            f"torch {torch.__version__} ({info['torch_parallel_backend']}); "
            f"load average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end.\n")
    md = f"{head}\n{table}\n\n## Targets (informational)\n\n{target_md}\n\n{NOTES}\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optim.md").write_text(md)
    (args.out / "optim.json").write_text(json.dumps(dict(
        machine=info, config=dict(n=args.n, tensors=args.tensors, repeats=args.repeats, warmup=args.warmup,
                                  threads=args.threads, quick=args.quick, lr=LR, betas=BETAS, eps=EPS,
                                  momentum=MOMENTUM, bytes_per_param=BYTES_PER_PARAM,
                                  footprint_bytes_per_param=FOOTPRINT_PER_PARAM),
        rows=rows, targets=target_rows), indent=1))
    print(f"wrote {args.out / 'optim.json'} and {args.out / 'optim.md'} ({elapsed:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
