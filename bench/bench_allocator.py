"""Training-step time with fastnn's malloc settings (fastnn/memory.py) against glibc's defaults.

    python bench/bench_allocator.py [--model cnn|mlp] [--pairs 3] [--steps 100]

Each measurement is a fresh process (the settings are process-wide and applied at import):
``FASTNN_KEEP_FREED_MEMORY=1`` (the default) and ``=0`` alternate, ``--pairs`` times, the order
within a pair swapped from pair to pair. A process
builds the data-parallel benchmark's model (bench/distributed/worker.py), one thread, batch
64, Adam, warms up 20 steps, then times ``--steps`` steps. Prints per run the median and
90th-percentile step and the share of the process's CPU time spent in the kernel (page
faults), then the median over pairs of default / kept step time; writes the same to
bench/results/allocator.{md,json} (``--out`` for another folder).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CHILD = """
import json, os, sys, time
sys.path.insert(0, {worker_dir!r})
import numpy as np
import fastnn as fnn
from fastnn.distributed.runtime import _set_threads
from worker import build_fastnn, random_data
_set_threads(1)
model = build_fastnn({model!r}); opt = fnn.optim.Adam(model, lr=1e-3)
x, y = random_data(64, {model!r})
def step():
    _, d = fnn.losses.softmax_cross_entropy(model(x), y); model.backward(d); opt.step(); opt.zero_grad()
for _ in range(20):
    step()
t0, ts = os.times(), []
for _ in range({steps}):
    s = time.perf_counter(); step(); ts.append(time.perf_counter() - s)
t1 = os.times()
cpu = (t1.user - t0.user) + (t1.system - t0.system)
print(json.dumps({{"median_ms": float(np.median(ts) * 1e3), "p90_ms": float(np.percentile(ts, 90) * 1e3),
                  "system_share": (t1.system - t0.system) / cpu, "status": fnn.memory.allocator_status()}}))
"""


def measure(model: str, steps: int, keep: bool) -> dict:
    code = CHILD.format(worker_dir=str(Path(__file__).parent / "distributed"), model=model, steps=steps)
    env = {**os.environ, "FASTNN_KEEP_FREED_MEMORY": "1" if keep else "0"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"bench_allocator: the measuring process (FASTNN_KEEP_FREED_MEMORY="
                         f"{env['FASTNN_KEEP_FREED_MEMORY']}) exited {run.returncode}:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = ap.parse_args()
    if a.pairs < 1 or a.steps < 1:
        ap.error(f"--pairs and --steps must be >= 1, got {a.pairs} and {a.steps}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fastnn.files import check_writable

    try:
        check_writable(a.out, "the results")
    except OSError as e:
        ap.error(f"--out: {e}")
    ratios, lines, pairs = [], [], []
    for pair in range(a.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        runs = {keep: measure(a.model, a.steps, keep) for keep in order}
        for keep in order:
            r = runs[keep]
            lines.append(f"pair {pair + 1} {'kept   ' if keep else 'default'}: median {r['median_ms']:6.2f} ms, "
                         f"p90 {r['p90_ms']:6.2f} ms, {r['system_share']:4.0%} of CPU time in the kernel  "
                         f"({r['status']})")
            print(lines[-1], flush=True)
        ratios.append(runs[False]["median_ms"] / runs[True]["median_ms"])
        pairs.append({"kept": runs[True], "default": runs[False]})
    lines.append(f"{a.model}: glibc defaults / kept, median step time over {a.pairs} pairs: {np.median(ratios):.2f}x "
                 f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(lines[-1])
    (a.out / "allocator.md").write_text(f"# `python bench/bench_allocator.py --model {a.model} --pairs {a.pairs} "
                                        f"--steps {a.steps}`\n\n```\n" + "\n".join(lines) + "\n```\n")
    (a.out / "allocator.json").write_text(json.dumps({"model": a.model, "steps": a.steps, "pairs": pairs,
                                                      "ratios": ratios, "median_ratio": float(np.median(ratios))},
                                                     indent=1))


if __name__ == "__main__":
    main()
