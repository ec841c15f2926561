"""A training step of small dense networks, fastnn against torch, and two of its parts.

    python bench/bench_train.py                   # 1 thread, 21 rounds (~1 min)
    python bench/bench_train.py --threads 2 --repeats 31

Workloads, float32, the same thread count for every library (numba, torch, NumPy's BLAS):
  step   one whole training step: forward, softmax cross-entropy, backward, Adam, zero_grad.
         "digits MLP": the README's 64-128(relu)-10 on the digits set, batch 64; "MNIST MLP":
         784-256(relu)-10 on random MNIST-shaped data, batch 128. torch: the same
         nn.Sequential (Linear layers, the same initial weights), F.cross_entropy, backward,
         Adam(fused=True), zero_grad(). Both skip the input gradient of the first layer.
         fastnn's Adam keeps its default NaN/Inf check (nonfinite="raise", one more read of
         the gradient), which torch's lacks. Untimed first: three steps of each must leave
         the same weights (check_step).
  loss   the cross-entropy's value and gradient with respect to the logits:
         fastnn.losses.softmax_cross_entropy, torch F.cross_entropy + autograd.grad, and the
         NumPy formulas (max-shift, exp, sum, log, gather: fastnn's code before
         kernels/softmax_xent.py).
  wgrad  a dense layer's weight gradient gW += x.T @ dz at the two MLPs' shapes:
         fastnn.matmul(x, dz, gW, trans_a=True, beta=1), NumPy np.add(gW, x.T @ dz, out=gW),
         torch gW.addmm_(x.T, dz).
Output  per row the median microseconds over interleaved rounds (each round times a block of
        calls) and "x fastnn" = that row's time / fastnn's (> 1: fastnn is faster); a Markdown
        table on stdout, bench/results/train.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import numba
import numpy as np

import fastnn as fnn  # noqa: I001 - before torch, as bench_optim.py
import torch
from bench_optim import machine_info
from fastnn.files import check_writable
from threadpoolctl import threadpool_limits

OUT = Path(__file__).parent / "results"


def _fastnn_mlp(sizes: tuple[int, ...]):
    layers = [fnn.Dense(i, o, activation="relu" if k < len(sizes) - 2 else None)
              for k, (i, o) in enumerate(zip(sizes, sizes[1:]))]
    model = fnn.Sequential(*layers)
    model.input_grad = False
    return model


def _torch_mlp(model) -> torch.nn.Sequential:
    """fastnn's model as torch layers with the same weights (torch stores W as out x in)."""
    mods = []
    for layer in model:
        lin = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(layer.params["weight"].T.copy()))
            lin.bias.copy_(torch.from_numpy(layer.params["bias"].copy()))
        mods += [lin, torch.nn.ReLU()] if layer.activation == "relu" else [lin]
    return torch.nn.Sequential(*mods)


def step_cases(rng: np.random.Generator) -> dict[str, dict[str, Callable[[], object]]]:
    x, y = fnn.data.load_digits()
    work = {"digits MLP 64-128-10, batch 64": ((64, 128, 10), x[:64], y[:64]),
            "MNIST MLP 784-256-10, batch 128": ((784, 256, 10), rng.random((128, 784), np.float32),
                                                 rng.integers(0, 10, 128))}
    cases = {}
    for name, (sizes, xb, yb) in work.items():
        fnn.manual_seed(0)
        model = _fastnn_mlp(sizes)
        opt = fnn.optim.Adam(model, lr=1e-4)
        net = _torch_mlp(model)
        topt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
        tx, ty = torch.from_numpy(xb), torch.from_numpy(yb)

        def ours(model=model, opt=opt, xb=xb, yb=yb):
            _, d = fnn.losses.softmax_cross_entropy(model(xb), yb)
            model.backward(d)
            opt.step()
            opt.zero_grad()

        def theirs(net=net, topt=topt, tx=tx, ty=ty):
            loss = torch.nn.functional.cross_entropy(net(tx), ty)
            loss.backward()
            topt.step()
            topt.zero_grad()

        check_step(model, net, ours, theirs, name)
        cases[f"step: {name}"] = {"fastnn": ours, "torch": theirs}
    return cases


def check_step(model, net: torch.nn.Sequential, ours: Callable[[], object], theirs: Callable[[], object],
               name: str, steps: int = 3, atol: float = 1e-5) -> None:
    """Untimed: ``steps`` training steps of each from the same weights; raises unless fastnn's
    weights and biases then match torch's (W transposed) within ``atol`` (a tenth of one
    Adam step at lr 1e-4), so a step that does other work never posts a ratio."""
    for _ in range(steps):
        ours()
        theirs()
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    diff = max(max(float(np.abs(layer.params["weight"] - lin.weight.detach().numpy().T).max()),
                   float(np.abs(layer.params["bias"] - lin.bias.detach().numpy()).max()))
               for layer, lin in zip(model, lins))
    if not diff <= atol:
        raise AssertionError(f"step: {name}: fastnn and torch disagree after {steps} steps "
                             f"(largest parameter difference {diff:.1e}, expected <= {atol:g})")


def numpy_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The cross-entropy in NumPy formulas, as fastnn computed it before its kernel."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(len(logits))
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, labels], dtype=np.float64))
    grad = exp / total
    grad[rows, labels] -= 1
    grad /= len(logits)
    return loss, grad


def loss_cases(rng: np.random.Generator) -> dict[str, dict[str, Callable[[], object]]]:
    cases = {}
    for n, c in ((64, 10), (4096, 10), (256, 1000)):
        logits = (3 * rng.standard_normal((n, c))).astype(np.float32)
        labels = rng.integers(0, c, n)
        t = torch.from_numpy(logits).requires_grad_()
        ty = torch.from_numpy(labels)

        def theirs(t=t, ty=ty):
            loss = torch.nn.functional.cross_entropy(t, ty)
            return loss.item(), torch.autograd.grad(loss, t)[0]

        ours = (lambda logits=logits, labels=labels: fnn.losses.softmax_cross_entropy(logits, labels))
        got, want, ref = ours(), theirs(), numpy_xent(logits, labels)
        assert abs(got[0] - want[0]) < 1e-5 * abs(want[0]) and np.allclose(got[1], want[1].numpy(), atol=1e-7)
        assert abs(got[0] - ref[0]) < 1e-5 * abs(ref[0]) and np.allclose(got[1], ref[1], atol=1e-7)
        cases[f"loss: softmax cross-entropy ({n}, {c})"] = {
            "fastnn": ours, "torch": theirs, "NumPy formulas": lambda logits=logits, labels=labels: numpy_xent(
                logits, labels)}
    return cases


def wgrad_cases(rng: np.random.Generator) -> dict[str, dict[str, Callable[[], object]]]:
    cases = {}
    for batch, fan_in, fan_out in ((64, 64, 128), (64, 128, 10), (128, 784, 256), (128, 256, 10)):
        x = rng.standard_normal((batch, fan_in)).astype(np.float32)
        dz = rng.standard_normal((batch, fan_out)).astype(np.float32)
        gw = {k: np.zeros((fan_in, fan_out), np.float32) for k in ("fastnn", "NumPy", "torch")}
        tx, tdz, tgw = torch.from_numpy(x), torch.from_numpy(dz), torch.from_numpy(gw["torch"])
        fastnn_out = fnn.matmul(x, dz, np.zeros_like(gw["fastnn"]), trans_a=True, beta=1.0)
        np.testing.assert_allclose(fastnn_out, x.T.astype(np.float64) @ dz, rtol=1e-4, atol=1e-3)
        cases[f"wgrad: x.T @ dz, x ({batch}, {fan_in}), dz ({batch}, {fan_out})"] = {
            "fastnn": lambda x=x, dz=dz, g=gw["fastnn"]: fnn.matmul(x, dz, g, trans_a=True, beta=1.0),
            "NumPy": lambda x=x, dz=dz, g=gw["NumPy"]: np.add(g, x.T @ dz, out=g),
            "torch": lambda tx=tx, tdz=tdz, g=tgw: g.addmm_(tx.T, tdz)}
    return cases


def time_case(variants: dict[str, Callable[[], object]], repeats: int, budget_s: float = 0.02) -> dict[str, list]:
    """Microseconds per call of each variant: ``repeats`` rounds, each timing a block of calls
    of every variant in turn (the order rotated each round)."""
    for f in variants.values():
        for _ in range(3):
            f()
    t0 = time.perf_counter()
    for f in variants.values():
        f()
    calls = max(1, int(budget_s / max(time.perf_counter() - t0, 1e-7)))
    names = list(variants)
    samples: dict[str, list] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            f = variants[k]
            t = time.perf_counter()
            for _ in range(calls):
                f()
            samples[k].append((time.perf_counter() - t) / calls * 1e6)
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    max_t = numba.config.NUMBA_NUM_THREADS
    if not 1 <= a.threads <= max_t:
        ap.error(f"--threads: expected 1..{max_t} (NUMBA_NUM_THREADS), got {a.threads}")
    if a.repeats < 1:
        ap.error(f"--repeats: expected >= 1, got {a.repeats}")
    try:                                   # before the run, not after minutes of it
        check_writable(a.out, "the results")
    except OSError as e:
        ap.error(f"--out: {e}")
    load_start = list(os.getloadavg())
    numba.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(a.threads):
        for build in (step_cases, loss_cases, wgrad_cases):
            for case, variants in build(rng).items():
                samples = time_case(variants, a.repeats)
                base = float(np.median(samples["fastnn"]))
                for impl, s in samples.items():
                    med = float(np.median(s))
                    rows.append({"case": case, "implementation": impl, "us_median": med,
                                 "spread": float((np.percentile(s, 75) - np.percentile(s, 25)) / med),
                                 "x_fastnn": med / base, "samples_us": s})
    lines = [f"# Training step and parts, float32, {a.threads} thread(s), median of {a.repeats} interleaved rounds",
             "", "| case | implementation | µs (median) | spread | × fastnn |", "|---|---|--:|--:|--:|"]
    lines += [f"| {r['case']} | {r['implementation']} | {r['us_median']:.1f} | {r['spread']:.0%} | "
              f"{'—' if r['implementation'] == 'fastnn' else format(r['x_fastnn'], '.2f') + '×'} |" for r in rows]
    lines += ["", "× fastnn: that implementation's time / fastnn's in the same run (> 1: fastnn is faster). "
              f"Load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end."]
    table = "\n".join(lines)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "train.md").write_text(table + "\n")
    (a.out / "train.json").write_text(json.dumps({"machine": machine_info([a.threads], load_start), "rows": rows},
                                                 indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
