"""Local-layer benchmark: locally connected, convolution and block-diagonal dense layers
against PyTorch on the CPU -- time (forward + backward) and peak extra memory.

What    Side by side in one process, for each thread count t (numba.set_num_threads(t) and
        torch.set_num_threads(t), the same t for both), float32, NHWC for fastnn:
          - LocallyConnected2D, batch 64, 32x32x16 input, 3x3 kernel, 16 outputs ("valid",
            900 positions, 2.07 M weights): fastnn (gather + micro-GEMM per position, no
            im2col) against the usual community PyTorch layer: F.unfold -> permute ->
            torch.bmm over positions -> permute back (+ bias), autograd for backward.
            Forward alone is timed too.
          - Conv2D 3x3 "same" on small-CNN shapes: fastnn against
            torch.nn.functional.conv2d (oneDNN) with NCHW tensors and with channels_last
            tensors; the ratio is against the faster of the two.
          - BlockDiagonalDense 1024 -> 1024, batch 256, groups 1, 2, 4, 8: fastnn (one
            fastnn.batched_matmul over the column blocks, in place) against torch.bmm over the blocks (x viewed
            (N, G, i), transposed to (G, N, i), bmm, transposed back), autograd for backward.
        Every variant runs once per round, rounds rotate the order, medians are reported.
        Forward + backward = one forward, then one backward with a fixed output gradient.

Memory  Peak extra memory of one forward + backward, each (case, implementation) in its own
        fresh subprocess at the largest t: inputs, parameters and parameter gradients are
        allocated first (torch's .grad tensors too), two warm-up steps run (JIT, allocator
        state), then the kernel's peak-RSS mark is reset (write "5" to /proc/self/clear_refs)
        and three more steps run; peak extra = VmHWM - VmRSS at the reset. The subprocess sets
        MALLOC_MMAP_THRESHOLD_=131072 so glibc returns every freed large block to the system
        at once: RSS then follows live memory and caches cannot hide allocations. This counts
        everything either library allocates (NumPy arrays, Numba scratch, torch tensors and
        autograd buffers, outputs and input gradients included).

Run     python bench/bench_local.py                  # full run, t = 1 and 2: about 2 minutes
        python bench/bench_local.py --quick          # smoke test: batch 8, 3 rounds (~1.5 min,
                                                     # mostly the memory subprocesses)
        python bench/bench_local.py --quick --no-memory --cases lc   # seconds
        python bench/bench_local.py --threads 2 --repeats 21

Output  a Markdown table and a target table (informational PASS/FAIL; the exit status does
        not depend on them) on stdout; bench/results/local.json (machine, versions, every
        row with its samples), bench/results/local.md and bench/results/local.png.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP (it is imported before fastnn, whose same default would then come
# too late for torch's pool): threads spin
# 20k iterations (microseconds) at the end of a parallel region, then sleep. torch's default
# (long spinning) let its idle threads steal the two cores from the next variant (measured
# here: BlockDiagonalDense with OpenBLAS 10x slower); OMP_WAIT_POLICY=PASSIVE made torch's
# locally connected layer 3x slower at 2 threads on this shared machine; a short spin is as
# fast as torch's default (214 vs 208 ms) without the stealing.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fastnn as fnn  # noqa: E402
from fastnn.files import check_writable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optim import machine_info  # noqa: E402


def set_threads(t: int) -> None:
    """The same t for Numba, torch and NumPy's BLAS (BlockDiagonalDense's block products)."""
    numba.set_num_threads(t)
    torch.set_num_threads(t)
    threadpool_limits(t, user_api="blas")

CONV_SHAPES = [(32, 32, 16, 16), (16, 16, 32, 32), (8, 8, 64, 64)]   # (H, W, C_in, C_out), 3x3 same
BD_GROUPS = [1, 2, 4, 8]


@dataclass
class Variant:
    case: str
    impl: str
    fn: Callable[[], object]
    flop: float
    samples: dict[int, list[float]] = field(default_factory=dict)


# -- cases -------------------------------------------------------------------------------
def lc_torch(x, wt, bt, k: int):
    """torch's locally connected layer: x (N, C, H, W), wt (P, C*k*k, O), bt (O, OH, OW)."""
    n, o, oh, ow = x.shape[0], wt.shape[2], bt.shape[1], bt.shape[2]
    cols = F.unfold(x, k)                                    # (N, K, P)   im2col
    y = torch.bmm(cols.permute(2, 0, 1), wt)                 # (P, N, O)   one GEMM per position
    return y.permute(1, 2, 0).reshape(n, o, oh, ow) + bt


def bd_torch(x, wt, bt):
    """torch's block-diagonal dense layer: x (N, F), wt (G, F/G, F/G), bt (F,)."""
    n, gr, bi = x.shape[0], wt.shape[0], wt.shape[1]
    xb = x.view(n, gr, bi).transpose(0, 1)                   # (G, N, i)
    return torch.bmm(xb, wt).transpose(0, 1).reshape(n, gr * wt.shape[2]) + bt


def agreement(batch: int = 4, seed: int = 1) -> dict[str, float]:
    """Untimed: each fastnn layer against its torch peer on the same weights, input and output
    gradient (float32), the largest difference of y, dx and the weight gradient relative to
    the largest entry; raises when they disagree, so a wrong kernel never posts a speed."""
    rng = np.random.default_rng(seed)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)).requires_grad_()  # noqa: E731
    nchw, nhwc = (0, 3, 1, 2), (0, 2, 3, 1)
    out = {}

    def compare(name, layer, x, y_t, x_t, w_t, to_ours):
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = layer.backward(dy)
        y_t.backward(torch.from_numpy(to_ours(dy, inverse=True)))
        pairs = [(y, to_ours(y_t.detach().numpy())), (dx, to_ours(x_t.grad.numpy(), x=True)),
                 (layer.grads["weight"], to_ours(w_t.grad.numpy(), w=True))]
        out[name] = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in pairs)
        if not out[name] < 1e-4:
            raise AssertionError(f"{name}: fastnn and torch disagree (relative difference {out[name]:.2e})")

    h, w, c, o, k = 32, 32, 16, 16, 3
    fnn.manual_seed(seed)
    lc = fnn.LocallyConnected2D(c, o, k, input_shape=(h, w))
    x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
    W = lc.params["weight"]                                  # (OH, OW, k, k, C, O)
    P = W.shape[0] * W.shape[1]
    w_t = t(W.reshape(P, k, k, c, o).transpose(0, 3, 1, 2, 4).reshape(P, c * k * k, o))
    x_t = t(x.transpose(nchw))
    y_t = lc_torch(x_t, w_t, t(lc.params["bias"].reshape(W.shape[0], W.shape[1], o).transpose(2, 0, 1)), k)

    def lc_map(a, inverse=False, x=False, w=False):
        if w:
            return a.reshape(P, c, k, k, o).transpose(0, 2, 3, 1, 4).reshape(W.shape)
        return a.transpose(nchw if inverse else nhwc)
    compare("LocallyConnected2D", lc, x, y_t, x_t, w_t, lc_map)

    conv = fnn.Conv2D(c, o, k, padding="same")
    cb = rng.standard_normal(o).astype(np.float32)
    conv.params["bias"][...] = cb
    w_t, x_t = t(conv.params["weight"].transpose(3, 2, 0, 1)), t(x.transpose(nchw))
    y_t = F.conv2d(x_t, w_t, t(cb), padding=1)
    compare("Conv2D", conv, x, y_t, x_t, w_t,
            lambda a, inverse=False, x=False, w=False: a.transpose(2, 3, 1, 0) if w else a.transpose(nchw if inverse else nhwc))

    bd = fnn.BlockDiagonalDense(1024, 1024, 4)
    xb = rng.standard_normal((4 * batch, 1024)).astype(np.float32)
    w_t, x_t = t(bd.params["weight"]), t(xb)
    compare("BlockDiagonalDense", bd, xb, bd_torch(x_t, w_t, t(bd.params["bias"])), x_t, w_t,
            lambda a, inverse=False, x=False, w=False: a)
    return out


def lc_case(batch: int, seed: int = 0) -> dict[str, Callable[[], Callable[[], object]]]:
    """Builders (setup -> step function) of the locally connected case's implementations."""
    n, h, w, c, o, k = batch, 32, 32, 16, 16, 3
    oh, ow = h - k + 1, w - k + 1
    p, kk = oh * ow, k * k * c

    def fastnn_step(forward_only=False):
        fnn.manual_seed(seed)
        layer = fnn.LocallyConnected2D(c, o, k, input_shape=(h, w))
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, h, w, c), dtype=np.float32)
        dy = rng.standard_normal((n, oh, ow, o), dtype=np.float32)

        def step():
            layer.forward(x)
            if not forward_only:
                layer.backward(dy)
            layer._x = layer._y = None    # drop saved activations, as torch frees its graph
        return step

    def torch_step(forward_only=False):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, c, h, w, generator=g, requires_grad=not forward_only)
        wt = (torch.randn(p, kk, o, generator=g) * 0.1).requires_grad_(not forward_only)
        bt = torch.zeros(o, oh, ow, requires_grad=not forward_only)
        dy = torch.randn(n, o, oh, ow, generator=g)
        if not forward_only:    # gradients exist before timing (fastnn's live in its flat buffer)
            x.grad, wt.grad, bt.grad = torch.zeros_like(x), torch.zeros_like(wt), torch.zeros_like(bt)

        def forward():
            return lc_torch(x, wt, bt, k)

        def step():
            if forward_only:
                with torch.no_grad():
                    forward()
            else:
                forward().backward(dy)
        return step

    return {"fastnn": fastnn_step, "torch unfold+bmm": torch_step,
            "fastnn forward": lambda: fastnn_step(True), "torch unfold+bmm forward": lambda: torch_step(True)}


def conv_case(batch: int, shape, seed: int = 0):
    h, w, c, o = shape
    n = batch

    def fastnn_step():
        fnn.manual_seed(seed)
        layer = fnn.Conv2D(c, o, 3, padding="same")
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, h, w, c), dtype=np.float32)
        dy = rng.standard_normal((n, h, w, o), dtype=np.float32)

        def step():
            layer.forward(x)
            layer.backward(dy)
            layer._x = layer._y = None    # drop saved activations, as torch frees its graph
        return step

    def torch_step(channels_last: bool):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=fmt).requires_grad_()
        wt = (torch.randn(o, c, 3, 3, generator=g) * 0.1).contiguous(memory_format=fmt).requires_grad_()
        bt = torch.zeros(o, requires_grad=True)
        dy = torch.randn(n, o, h, w, generator=g).contiguous(memory_format=fmt)
        x.grad, wt.grad, bt.grad = torch.zeros_like(x), torch.zeros_like(wt), torch.zeros_like(bt)

        def step():
            F.conv2d(x, wt, bt, padding=1).backward(dy)
        return step

    return {"fastnn": fastnn_step, "torch conv2d NCHW": lambda: torch_step(False),
            "torch conv2d channels_last": lambda: torch_step(True)}


def bd_case(batch: int, groups: int, features: int = 1024, seed: int = 0):
    n, f, gr = batch, features, groups
    bi = f // gr

    def fastnn_step():
        fnn.manual_seed(seed)
        layer = fnn.BlockDiagonalDense(f, f, gr)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, f), dtype=np.float32)
        dy = rng.standard_normal((n, f), dtype=np.float32)

        def step():
            layer.forward(x)
            layer.backward(dy)
            layer._x = layer._y = None    # drop saved activations, as torch frees its graph
        return step

    def torch_step():
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, f, generator=g, requires_grad=True)
        wt = (torch.randn(gr, bi, bi, generator=g) * 0.03).requires_grad_()
        bt = torch.zeros(f, requires_grad=True)
        dy = torch.randn(n, f, generator=g)
        x.grad, wt.grad, bt.grad = torch.zeros_like(x), torch.zeros_like(wt), torch.zeros_like(bt)

        def step():
            bd_torch(x, wt, bt).backward(dy)
        return step

    return {"fastnn": fastnn_step, "torch bmm": torch_step}


def all_cases(batch: int) -> list[tuple[str, dict, float]]:
    """(case name, builders, FLOP of one forward + backward = 3 x forward)."""
    cases = [(f"LocallyConnected2D N={batch} 32x32x16 k3 ->16", lc_case(batch), 3 * 2 * batch * 900 * 144 * 16)]
    for s in CONV_SHAPES:
        h, w, c, o = s
        cases.append((f"Conv2D N={batch} {h}x{w}x{c} k3 ->{o}", conv_case(batch, s), 3 * 2 * batch * h * w * 9 * c * o))
    bd_batch = 4 * batch
    for g in BD_GROUPS:
        cases.append((f"BlockDiagonalDense N={bd_batch} 1024->1024 groups={g}", bd_case(bd_batch, g),
                      3 * 2 * bd_batch * 1024 * 1024 / g))
    return cases


# -- timing ------------------------------------------------------------------------------
def run_rounds(vs: list[Variant], t: int, repeats: int, warmup: int) -> None:
    set_threads(t)
    for v in vs:
        for _ in range(warmup):
            v.fn()
        v.samples[t] = []
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(vs)
            for v in vs[k:] + vs[:k]:
                t0 = time.perf_counter()
                v.fn()
                v.samples[t].append(time.perf_counter() - t0)
    finally:
        gc.enable()


# -- memory (subprocess) -----------------------------------------------------------------
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure_memory_here(case: str, impl: str, batch: int, threads: int) -> dict:
    """Runs inside the subprocess: peak RSS above the level after set-up and warm-up."""
    set_threads(threads)
    builders = next(b for name, b, _ in all_cases(batch) if name == case)
    step = builders[impl]()
    for _ in range(2):
        step()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")      # reset the peak-RSS mark (Linux >= 4.0)
    base = _status_kb("VmRSS")
    for _ in range(3):
        step()
    return {"peak_extra_bytes": (_status_kb("VmHWM") - base) * 1024, "baseline_bytes": base * 1024}


def measure_memory(case: str, impl: str, batch: int, threads: int) -> dict | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, __file__, "--_memory", case, impl, str(batch), str(threads)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        print(f"memory measurement failed for {case} / {impl}: {e}", file=sys.stderr)
        return None


# -- report ------------------------------------------------------------------------------
def peer_of(case: str, impl: str, med: dict) -> str | None:
    if impl.startswith("torch"):
        return None
    if case.startswith("LocallyConnected"):
        return "torch unfold+bmm forward" if impl.endswith("forward") else "torch unfold+bmm"
    if case.startswith("Conv2D"):
        a, b = "torch conv2d NCHW", "torch conv2d channels_last"
        return a if med[(case, a)] <= med[(case, b)] else b
    return "torch bmm"


def summarize(vs: list[Variant], t: int, memory: dict) -> list[dict]:
    med = {(v.case, v.impl): float(np.median(v.samples[t])) for v in vs}
    rows = []
    for v in vs:
        s = np.asarray(v.samples[t])
        m = float(np.median(s))
        peer = peer_of(v.case, v.impl, med)
        mem = memory.get((v.case, v.impl))
        rows.append(dict(case=v.case, impl=v.impl, threads=t, median_ms=m * 1e3,
                         spread=float((np.percentile(s, 75) - np.percentile(s, 25)) / m),
                         gflops=(v.flop / (3 if v.impl.endswith("forward") else 1)) / m / 1e9,
                         peer=peer, x_peer=None if peer is None else med[(v.case, peer)] / m,
                         peak_extra_mb=None if mem is None else mem["peak_extra_bytes"] / 1e6,
                         samples_ms=[float(x) * 1e3 for x in s]))
    return rows


def _fmt(x, spec, suffix=""):
    return "—" if x is None else f"{x:{spec}}{suffix}"


def results_table(rows: list[dict]) -> str:
    lines = ["| case | threads | implementation | ms (median) | spread | GFLOP/s | × peer (peer) | peak extra MB |",
             "|---|--:|---|--:|--:|--:|---|--:|"]
    for r in rows:
        peer = "—" if r["peer"] is None else f"{r['x_peer']:.2f}× ({r['peer']})"
        lines.append(f"| {r['case']} | {r['threads']} | {r['impl']} | {r['median_ms']:.2f} | {r['spread']:.0%} "
                     f"| {r['gflops']:.1f} | {peer} | {_fmt(r['peak_extra_mb'], '.1f')} |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> tuple[str, list[dict]]:
    lines = ["| target | threads | measured | result |", "|---|--:|--:|---|"]
    out = []

    def add(what, t, value, ok, shown):
        lines.append(f"| {what} | {t} | {shown} | {'PASS' if ok else 'FAIL'} |")
        out.append(dict(target=what, threads=t, measured=value, passed=bool(ok)))

    for r in rows:
        if r["impl"] != "fastnn":
            continue
        if r["case"].startswith("LocallyConnected"):
            add("LocallyConnected2D fwd+bwd ≥ 10× torch unfold+bmm", r["threads"], r["x_peer"], r["x_peer"] >= 10,
                f"{r['x_peer']:.1f}×")
            peer_mem = next((q["peak_extra_mb"] for q in rows if q["case"] == r["case"] and q["threads"] == r["threads"]
                             and q["impl"] == "torch unfold+bmm"), None)
            if r["peak_extra_mb"] is not None and peer_mem:
                frac = r["peak_extra_mb"] / peer_mem
                add("LocallyConnected2D peak extra memory ≤ ¼ of torch's", r["threads"], frac, frac <= 0.25,
                    f"{frac:.2f} ({r['peak_extra_mb']:.1f} / {peer_mem:.1f} MB)")
        elif r["case"].startswith("Conv2D"):
            add(f"{r['case']}: ≥ 0.5× torch ({r['peer']})", r["threads"], r["x_peer"], r["x_peer"] >= 0.5,
                f"{r['x_peer']:.2f}×")
        else:
            add(f"{r['case']}: faster than torch bmm", r["threads"], r["x_peer"], r["x_peer"] > 1,
                f"{r['x_peer']:.2f}×")
    for t in sorted({r["threads"] for r in rows}):
        bd = {int(r["case"].rsplit("=", 1)[1]): r["median_ms"] for r in rows
              if r["case"].startswith("BlockDiagonal") and r["impl"] == "fastnn" and r["threads"] == t}
        for g in sorted(bd)[1:]:
            speed = bd[1] / bd[g]
            add(f"BlockDiagonalDense groups={g}: time falls with the multiply-adds (≥ {g / 2:g}× groups=1, "
                f"ideal {g}×)", t, speed, speed >= g / 2, f"{speed:.2f}×")
    return "\n".join(lines), out


def _plot_lc(ax, threads: list[int], lc: list[dict]) -> None:
    """Locally connected: time per implementation and thread count, peak memory in the title."""
    width = 0.35
    for i, impl in enumerate(["fastnn", "torch unfold+bmm"]):
        ys = [next(r["median_ms"] for r in lc if r["impl"] == impl and r["threads"] == t) for t in threads]
        bars = ax.bar(np.arange(len(threads)) + (i - 0.5) * width, ys, width, label=impl)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(np.arange(len(threads)), [f"{t} thread{'s' if t > 1 else ''}" for t in threads])
    ax.set_ylabel("ms, forward + backward (median)")
    mem = {r["impl"]: r["peak_extra_mb"] for r in lc if r["peak_extra_mb"] is not None}
    title = lc[0]["case"].replace("N=", "N = ")          # the batch the run used
    if len(mem) == 2:
        title += f"\npeak extra memory: fastnn {mem['fastnn']:.0f} MB, torch {mem['torch unfold+bmm']:.0f} MB"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)


def _plot_conv(ax, threads: list[int], conv: list[dict]) -> None:
    """Conv2D: speed against torch per case and thread count."""
    width = 0.35
    cases = [r["case"] for r in conv if r["threads"] == threads[0]]
    for i, t in enumerate(threads):
        ys = [next(r["x_peer"] for r in conv if r["case"] == c and r["threads"] == t) for c in cases]
        bars = ax.bar(np.arange(len(cases)) + (i - (len(threads) - 1) / 2) * width, ys, width, label=f"{t} thr")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(np.arange(len(cases)), [c.split(" ", 2)[2] for c in cases], fontsize=7)
    ax.set_ylabel("× torch conv2d speed, fwd + bwd")
    ax.set_title("Conv2D 3x3 same", fontsize=9)
    ax.legend(fontsize=8)


def _plot_bd(ax, threads: list[int], bd: list[dict]) -> None:
    """Block-diagonal dense: time against the number of groups, beside 1/groups."""
    for t in threads:
        for impl, style in (("fastnn", "-o"), ("torch bmm", "--s")):
            pts = sorted((int(r["case"].rsplit("=", 1)[1]), r["median_ms"]) for r in bd
                         if r["impl"] == impl and r["threads"] == t)
            ax.plot([g for g, _ in pts], [m for _, m in pts], style, label=f"{impl}, {t} thr")
    g0 = [r for r in bd if r["case"].endswith("groups=1") and r["impl"] == "fastnn" and r["threads"] == threads[0]]
    if g0:
        ax.plot(BD_GROUPS, [g0[0]["median_ms"] / g for g in BD_GROUPS], ":", color="gray",
                label="multiply-adds (1/groups)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("groups (blocks)")
    ax.set_ylabel("ms, forward + backward")
    ax.set_title("BlockDiagonalDense 1024 -> 1024", fontsize=9)
    ax.legend(fontsize=7)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per kind of case the run measured (--cases may leave some out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in rows})
    panels = [(draw, picked) for draw, picked in (
        (_plot_lc, [r for r in rows if r["case"].startswith("Locally") and not r["impl"].endswith("forward")]),
        (_plot_conv, [r for r in rows if r["case"].startswith("Conv2D") and r["impl"] == "fastnn"]),
        (_plot_bd, [r for r in rows if r["case"].startswith("BlockDiagonal")])) if picked]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (draw, picked) in zip(axes[0], panels):
        draw(ax, threads, picked)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


NOTES = """Notes
- Same thread count for both libraries: numba.set_num_threads(t), torch.set_num_threads(t)
  and threadpoolctl's limit on NumPy's BLAS. OpenMP threads spin briefly (GOMP_SPINCOUNT=20000)
  then sleep: torch's speed, without idle spinning threads stealing the next variant's cores.
- fastnn's local kernels run their chunks on a small Python thread pool calling nogil Numba
  bodies (kernels/local/threads.py); BlockDiagonalDense runs on fastnn.batched_matmul.
- The torch locally connected layer is the usual community one (F.unfold, permute, torch.bmm
  over positions, permute back, + bias; autograd for backward): it materialises the im2col
  matrix (N*P*K floats, 33 MB at batch 64) and its gradient. fastnn reads each position's patches in
  place on fastnn.matmul's register tile (the weight gradient from a zero-padded copy of x)
  and never builds it.
- GFLOP/s counts 2 FLOP per multiply-add, forward + backward = 3 x forward (input and weight
  gradients); Conv2D's count includes the zero taps of the padded border.
- Peak extra memory: see the module docstring (fresh subprocess, peak-RSS mark reset after
  warm-up, glibc returning freed blocks at once). Outputs and input gradients count for both.
- Medians are over interleaved, order-rotated rounds on a shared, noisy machine. Compare
  ratios within one run, not absolute times across runs."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_memory":
        case, impl, batch, threads = argv[1], argv[2], int(argv[3]), int(argv[4])
        print(json.dumps(measure_memory_here(case, impl, batch, threads)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--batch", type=int, default=64, help="batch of the LC and conv cases (default 64)")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (default 2)")
    ap.add_argument("--cases", nargs="+", choices=("lc", "conv", "bd"), default=["lc", "conv", "bd"],
                    help="which layers (default: all)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--quick", action="store_true", help="smoke test: batch 8, 3 rounds, 1 warm-up step")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="directory for local.json, local.md and local.png (default bench/results)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.warmup = 8, 3, 1
    max_t = numba.config.NUMBA_NUM_THREADS
    if any(not 1 <= t <= max_t for t in args.threads):
        ap.error(f"--threads: each must be in 1..{max_t} (NUMBA_NUM_THREADS), got {args.threads}")
    args.threads = sorted(set(args.threads))      # a repeated count would overwrite its own samples
    if args.batch < 1 or args.repeats < 1 or args.warmup < 1:
        ap.error(f"--batch, --repeats and --warmup must be >= 1 (a step without warm-up times the JIT "
                 f"compilation), got {args.batch}, {args.repeats}, {args.warmup}")
    try:                                   # before the run, not after minutes of it
        check_writable(args.out, "the results")
    except OSError as e:
        ap.error(f"--out: {e}")

    loadavg_start = list(os.getloadavg())
    start = time.perf_counter()
    agrees = agreement()
    print("fastnn agrees with torch (largest relative difference of y, dx, dW): "
          + ", ".join(f"{k} {v:.1e}" for k, v in agrees.items()), file=sys.stderr, flush=True)
    prefix = {"lc": "Locally", "conv": "Conv2D", "bd": "BlockDiagonal"}
    cases = [c for c in all_cases(args.batch) if any(c[0].startswith(prefix[k]) for k in args.cases)]
    memory: dict = {}
    if not args.no_memory:
        for name, builders, _ in cases:
            for impl in builders:
                if impl.endswith("forward"):
                    continue
                print(f"[{time.perf_counter() - start:6.1f}s] memory: {name} / {impl}", file=sys.stderr, flush=True)
                m = measure_memory(name, impl, args.batch, max(args.threads))
                if m is not None:
                    memory[(name, impl)] = m
    rows: list[dict] = []
    for name, builders, flop in cases:
        vs = [Variant(name, impl, build(), flop) for impl, build in builders.items()]
        for t in args.threads:
            print(f"[{time.perf_counter() - start:6.1f}s] {name}: {t} thread(s)", file=sys.stderr, flush=True)
            run_rounds(vs, t, args.repeats, args.warmup)
            rows += summarize(vs, t, memory if t == max(args.threads) else {})   # measured at that count
        del vs
        gc.collect()
    elapsed = time.perf_counter() - start

    info = machine_info(args.threads, loadavg_start)
    info["loadavg_end"] = list(os.getloadavg())
    info["wall_s"] = elapsed
    info["relative_difference_vs_torch"] = agrees
    table = results_table(rows)
    target_md, target_rows = targets(rows)
    head = (f"# Local layers, float32, forward + backward, median of {args.repeats} interleaved rounds\n\n"
            f"CPU: {info['cpu_model']} ({info['usable_cpus']} usable cores, {'/'.join(info['simd'])}); "
            f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__} "
            f"({info['torch_parallel_backend']}); load average {info['loadavg_start'][0]:.2f} at start, "
            f"{info['loadavg_end'][0]:.2f} at end. Peak extra memory measured at {max(args.threads)} thread(s).\n")
    md = f"{head}\n{table}\n\n## Targets (informational)\n\n{target_md}\n\n{NOTES}\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "local.md").write_text(md)
    (args.out / "local.json").write_text(json.dumps(dict(
        machine=info, config=dict(batch=args.batch, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                                  quick=args.quick, memory={f"{k[0]} | {k[1]}": v for k, v in memory.items()}),
        rows=rows, targets=target_rows), indent=1))
    try:
        plot(rows, args.out / "local.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    print(f"wrote {args.out / 'local.json'}, local.md and local.png ({elapsed:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
