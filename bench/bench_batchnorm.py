"""BatchNorm benchmark: fastnn.BatchNorm against torch.nn.BatchNorm1d/2d on the CPU.

What    Training-mode forward + backward (batch statistics, running statistics updated, input
        and parameter gradients), float32, side by side in one process, for each thread count
        t (numba.set_num_threads(t), torch.set_num_threads(t)). Images are NHWC for fastnn and
        channels_last tensors for torch (the same memory layout); (N, C) for BatchNorm1d.
        Every variant runs once per round, rounds rotate the order, medians are reported.
Run     python bench/bench_batchnorm.py [--threads 1 2] [--repeats 21]
Output  a Markdown table on stdout; bench/results/batchnorm.json and .md.
"""
from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "20000")   # as bench_local.py: before torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastnn as fnn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optim import machine_info  # noqa: E402

SHAPES = [(64, 32, 32, 16), (64, 16, 16, 32), (64, 8, 8, 64), (256, 512)]


def steps(shape: tuple[int, ...]) -> dict:
    """fastnn's and torch's forward + backward on the same values."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    bn = fnn.BatchNorm(shape[-1])
    image = len(shape) == 4
    tb = (torch.nn.BatchNorm2d if image else torch.nn.BatchNorm1d)(shape[-1])
    tx = torch.from_numpy(x)
    tdy = torch.from_numpy(dy)
    if image:            # NHWC memory seen as NCHW: channels_last
        tx, tdy = tx.permute(0, 3, 1, 2), tdy.permute(0, 3, 1, 2)
    tx.requires_grad_()

    def ours():
        bn(x)
        bn.backward(dy)

    def theirs():
        tb(tx).backward(tdy)
        tx.grad = None
    return {"fastnn": ours, "torch": theirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    loadavg_start = list(os.getloadavg())
    rows = []
    for t in args.threads:
        numba.set_num_threads(t)
        torch.set_num_threads(t)
        for shape in SHAPES:
            fns = steps(shape)
            times = {k: [] for k in fns}
            for k, fn in fns.items():
                fn()
                fn()
            for r in range(args.repeats):
                for k, fn in (list(fns.items())[::-1] if r % 2 else fns.items()):
                    began = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - began)
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append(dict(shape=list(shape), threads=t, fastnn_ms=med["fastnn"] * 1e3, torch_ms=med["torch"] * 1e3,
                             x_torch=med["torch"] / med["fastnn"], samples={k: v for k, v in times.items()}))
    table = ["| shape (fastnn NHWC / (N, C)) | threads | fastnn ms | torch ms | × torch |", "|---|--:|--:|--:|--:|"]
    table += [f"| {tuple(r['shape'])} | {r['threads']} | {r['fastnn_ms']:.3f} | {r['torch_ms']:.3f} | "
              f"{r['x_torch']:.2f}× |" for r in rows]
    text = "\n".join(table)
    print(text)
    info = machine_info(args.threads, loadavg_start)
    info["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batchnorm.md").write_text(
        f"# BatchNorm forward + backward, float32, medians of {args.repeats} interleaved rounds\n\n"
        f"CPU: {info['cpu_model']} ({info['usable_cpus']} usable cores); torch {info['torch']}; load average "
        f"{info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end.\n\n"
        f"Run: `{' '.join(['python bench/bench_batchnorm.py', *sys.argv[1:]])}`\n\n{text}\n")
    (out / "batchnorm.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
