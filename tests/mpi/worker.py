"""Run under ``mpiexec -n K``: a data-parallel job whose behaviour the argument selects.

    python tests/mpi/worker.py CASE OUT [options as key=value]

Writes rank 0's final flat parameters to OUT (.npy). Used by tests/test_distributed.py.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

import fastnn as fnn

CASE, OUT = sys.argv[1], sys.argv[2]
OPT = dict(a.split("=", 1) for a in sys.argv[3:])


def build(hidden=32, dtype=np.float64):
    fnn.manual_seed(int(OPT.get("init_seed", 0)))
    dropout = [fnn.Dropout(float(OPT["dropout"]))] if "dropout" in OPT else []
    if "bn" in OPT:         # bn=1: BatchNorm after the first layer; bn=untracked: without running statistics
        dropout.insert(0, fnn.BatchNorm(hidden, track_running_stats=OPT["bn"] == "1", dtype=dtype))
    model = fnn.Sequential(fnn.Dense(64, hidden, activation="relu", dtype=dtype), *dropout,
                           fnn.Dense(hidden, hidden, activation="tanh", dtype=dtype),
                           fnn.Dense(hidden, 10, dtype=dtype))
    for i, (_, gen) in enumerate(model.rngs() if OPT.get("rekey") != "0" else []):  # a seed of the test's own
        seed = [7 + int(OPT.get("init_seed", 0)), fnn.distributed.rank(), i]
        gen.bit_generator.state = np.random.default_rng(seed).bit_generator.state
    return model


class CountingComm:
    """The communicator, counting the collectives called through it (which path really ran)."""

    def __init__(self, comm):
        self._comm, self.calls = comm, {}

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if not (callable(attr) and name[:1].isupper()):
            return attr

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)
        return call


def train(model, opt, x, y, steps, comm, on_step=None, start=0):
    """``steps`` steps counted from the first batch of epoch 0; the first ``start`` are skipped
    (a run resumed from a checkpoint of step ``start``)."""
    step = 0
    for epoch in range(100):
        for xb, yb in fnn.data.batches(x, y, batch_size=int(OPT.get("batch", 32)), seed=1, epoch=epoch, shard=comm):
            if step < start:
                step += 1
                continue
            loss, d = fnn.losses.softmax_cross_entropy(model(xb), yb)
            model.backward(d)
            if OPT.get("log_loss") == "1":      # a metric on COMM_WORLD while buckets are in flight
                fnn.distributed.allreduce_mean(loss)
            opt.step()
            opt.zero_grad()
            step += 1
            if on_step:
                on_step(step)
            if step == steps:
                return


def main() -> None:
    if CASE == "comm_arg":  # a communicator given to DataParallel, without init(): the runtime follows it
        from mpi4py import MPI

        model = build()
        fnn.distributed.DataParallel(model, fnn.optim.SGD(model), comm=MPI.COMM_WORLD)
        print(f"rank {fnn.distributed.rank()} of {fnn.distributed.size()}", flush=True)
        return
    if CASE == "before_init":  # rank() and size() before init(), init() again with another communicator
        from mpi4py import MPI

        for what, call in (("rank", fnn.distributed.rank), ("size", fnn.distributed.size),
                           ("init", lambda: (fnn.distributed.init(), fnn.distributed.init(MPI.COMM_SELF)))):
            try:
                call()
                raise AssertionError(f"{what} was taken")
            except (RuntimeError, ValueError) as e:
                print(f"refused: {e}", flush=True)
        print(f"rank {fnn.distributed.rank()} of {fnn.distributed.size()}", flush=True)
        return
    if CASE == "collected":  # wrappers no longer referenced go, with their model and communication thread
        import gc
        import threading
        import weakref

        fnn.distributed.init()
        models = []
        for _ in range(5):
            model = build()
            opt = fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=0.1), transport="mpi", overlap="thread")
            models.append(weakref.ref(model))
            del model, opt
        gc.collect()
        for _ in range(100):     # each thread ends once it has taken its wrapper's stop from the queue
            if not any(t.name == "fastnn-allreduce" for t in threading.enumerate()):
                break
            time.sleep(0.05)
        print(f"rank {fnn.distributed.rank()} models {sum(m() is not None for m in models)} threads "
              f"{sum(t.name == 'fastnn-allreduce' for t in threading.enumerate())}", flush=True)
        return
    if CASE == "fit_misuse":  # a shard of its own per rank (refused), an unwrapped optimizer (warned)
        import warnings

        fnn.distributed.init()
        rank = fnn.distributed.rank()
        x, y = fnn.data.load_digits(np.float64)
        model = build()
        try:
            fnn.train.fit(model, fnn.distributed.DataParallel(model, fnn.optim.SGD(model)), x[rank::2], y[rank::2],
                          epochs=1, progress=False)
        except ValueError as e:
            print(f"rank {rank} refused: {e}", flush=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = build()
            fnn.train.fit(model, fnn.optim.SGD(model), x[:64], y[:64], epochs=1, progress=False)
        print(f"rank {rank} warned: {[str(w.message) for w in caught]}", flush=True)
        for name, targets in (("without targets", None), ("object targets", np.array([{"i": i} for i in range(64)]))):
            model = build()             # a loss of its own: no y, or one whose bytes are pointers, not values
            hist = fnn.train.fit(model, fnn.distributed.DataParallel(model, fnn.optim.SGD(model)), x[:64], targets,
                                 epochs=1, progress=False, loss=lambda p, t: (float(np.mean(p * p)), 2 * p / p.size))
            print(f"rank {rank} {name}: {hist['steps']} steps", flush=True)
        return
    if CASE == "bn_buffers":  # BatchNorm's running statistics: rank 0's at wrap time, then each rank's own
        fnn.distributed.init()
        rank = fnn.distributed.rank()
        OPT["bn"] = "untracked" if OPT.get("untracked_rank") == str(rank) else "1"
        model = build()
        stats = dict(model.named_buffers())
        for b in stats.values():
            b[...] = rank + 1
        opt = fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=0.1, momentum=0.9))
        print(f"rank {rank} wrapped mean {stats['1.running_mean'][0]} count {stats['1.num_batches_tracked']}",
              flush=True)
        x, y = fnn.data.load_digits(np.float64)
        train(model, opt, x, y, 5, fnn.distributed.comm())
        print(f"rank {rank} count {stats['1.num_batches_tracked']}", flush=True)
        return
    if CASE == "local_error_in_sharded_step":   # rank 1 alone raises inside step(), before its collectives
        comm = fnn.distributed.init()
        model = build()
        opt = fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=0.1), timeout=60)
        x, y = fnn.data.load_digits(np.float64)
        for i, (xb, yb) in enumerate(fnn.data.batches(x, y, batch_size=32, shard=comm)):
            if i == 2 and fnn.distributed.rank() == 1:
                opt.param_groups[0]["lr"] = -1.0
            model.backward(fnn.losses.softmax_cross_entropy(model(xb), yb)[1])
            opt.step()
            opt.zero_grad()
        return
    if CASE == "uneven_reference":  # one process: step s on the samples of the ranks that "uneven" has still training
        x, y = fnn.data.load_digits(np.float64)
        model, steps, ranks, batch = build(), int(OPT["steps"]), int(OPT["ranks"]), int(OPT["batch"])
        opt = fnn.optim.Adam(model, lr=1e-2)
        sched = fnn.schedules.Exponential(opt, gamma=0.9) if OPT.get("schedule") == "1" else None
        shares = [fnn.data.batches(x, y, batch_size=batch, seed=1, shard=(r, ranks)) for r in range(ranks)]
        for step in range(1, steps + 1):
            taken = [next(shares[r]) for r in range(ranks) if step <= steps - 3 * r]
            xb, yb = np.concatenate([b[0] for b in taken]), np.concatenate([b[1] for b in taken])
            model.backward(fnn.losses.softmax_cross_entropy(model(xb), yb)[1])
            opt.step()
            opt.zero_grad()
            if sched:
                sched.step()
        np.save(OUT, model.flat.data)
        return
    if CASE == "fail_before_init":  # rank 1 stops before init(): rank 0's MPI start-up must not wait for ever
        if fnn.distributed.runtime.launched_rank() == 1:
            raise RuntimeError("deliberate failure on rank 1 before init")
    comm = fnn.distributed.init()
    rank = fnn.distributed.rank()
    x, y = fnn.data.load_digits(np.float64)
    model = build(hidden=int(OPT.get("hidden", 32)) + (1 if CASE == "mismatch" and rank == 1 else 0))
    kind = OPT.get("opt", "adam")
    if kind == "adam":      # rank_lr=1: another lr on the other ranks, which wrapping replaces with rank 0's
        inner = fnn.optim.Adam(model, lr=1e-2 if rank == 0 or OPT.get("rank_lr") != "1" else 0.5)
    elif kind == "sgd":
        inner = fnn.optim.SGD(model, lr=0.1, momentum=0.9)
    else:  # sgd_clip: global-norm clipping, a group without weight decay, non-finite steps skipped
        biases = [n for n, _ in model.named_parameters() if n.endswith("bias")]
        inner = fnn.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=1e-3, max_grad_norm=0.5, nonfinite="skip",
                              param_groups=[{"params": biases, "weight_decay": 0.0}])
    if CASE == "optimizer_mismatch" and rank == 1:  # options that change the collectives, on one rank
        options = {"amsgrad": {"amsgrad": True}, "clip": {"max_grad_norm": 1.0}, "nonfinite": {"nonfinite": "skip"},
                   "groups": {"param_groups": [{"params": ["0.bias"]}]}}
        inner = fnn.optim.Adam(model, lr=1e-2, **options[OPT["mismatch"]])
    kw = dict(overlap=OPT.get("overlap", "thread"), bucket_cap_mb=float(OPT.get("cap_mb", 0.004)),
              first_bucket_mb=float(OPT.get("first_mb", 0.002)), compression=OPT.get("compression") or None,
              deterministic=OPT.get("deterministic") == "1", timeout=float(OPT.get("timeout", 60)),
              accumulate_steps=int(OPT.get("accumulate", 1)), timeline=OPT.get("timeline"),
              transport=OPT.get("transport", "auto"), shard_optimizer={"1": True, "0": False}.get(OPT.get("shard")))
    start = fnn.checkpoint.load(OPT["resume_from"], model, inner)["step"] if "resume_from" in OPT else 0
    if CASE == "settings_mismatch" and rank == 1:
        if OPT.get("mismatch") == "first_mb":
            kw["first_bucket_mb"] = 0.0029  # with cap_mb=1: 2 buckets on each rank, cut at another offset
        else:
            kw["compression"] = "fp16"
    opt = fnn.distributed.DataParallel(model, inner, **kw)
    opt._wire = CountingComm(opt._wire)   # the wrapper's own communicator
    steps = int(OPT.get("steps", 20))

    def faults(step):
        if CASE == "raise" and rank == 1 and step == 3:
            raise RuntimeError("deliberate failure on rank 1 at step 3")
        if CASE == "nan" and rank == int(OPT.get("nan_rank", 1)) and step == 3:
            model.flat.grad[model.flat.grad.size // 2] = np.nan  # the next step sees it (after zero_grad)
        if CASE == "exit" and rank == 1 and step == 3:
            sys.exit(3)
        if CASE == "stall" and rank == 1 and step == 3:
            time.sleep(600)
        if CASE == "kill":
            if rank == 0:
                fnn.checkpoint.save(OUT + ".ckpt.npz", model, opt, step=step)
            if rank == 1 and step == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    if CASE == "uneven":
        sched = fnn.schedules.Exponential(opt, gamma=0.9) if OPT.get("schedule") == "1" else None
        with opt.join(sched):
            train(model, opt, x, y, steps - 3 * rank, comm, on_step=sched and (lambda step: sched.step()))
    elif CASE == "twice":  # a second backward before step() is refused before it writes anything
        for _ in range(2):
            model.backward(fnn.losses.softmax_cross_entropy(model(x[:32]), y[:32])[1])
    elif CASE == "rewrap":  # a second wrapper of the model (a new optimizer for a second phase) retires the first
        train(model, opt, x, y, 3, comm)
        again = {"mpi": {"transport": "mpi"}, "unsharded": {"shard_optimizer": False}}.get(OPT.get("again"), {})
        if again:  # the first wrapper's optimizer, sharded by it, in an unsharded wrapper: refused on every rank
            try:
                fnn.distributed.DataParallel(model, inner, **{**kw, **again})
                raise AssertionError("a sharded optimizer was wrapped again unsharded")
            except ValueError as e:
                print(f"rank {rank}: {e}", flush=True)
        old, opt = opt, fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=0.05), **{**kw, **again})
        opt._wire = CountingComm(opt._wire)   # the wrapper's own communicator
        try:
            old.step()
            raise AssertionError("the retired wrapper stepped")
        except RuntimeError as e:
            assert "replaced by a newer DataParallel" in str(e), e
        train(model, opt, x, y, 6, comm)
    elif CASE == "stale":  # a finished step's summed gradient is neither added to nor reduced again
        xb, yb = x[:16], y[:16]
        model.backward(fnn.losses.softmax_cross_entropy(model(xb), yb)[1])
        opt.step()
        for what, call in (("backward", lambda: model.backward(fnn.losses.softmax_cross_entropy(model(xb), yb)[1])),
                           ("step", opt.step)):
            try:
                call()
                raise AssertionError(f"{what} after step() without zero_grad() was taken")
            except RuntimeError as e:
                assert f"{what}() " in str(e) and "without zero_grad()" in str(e), e
                print(f"rank {rank}: {e}", flush=True)
        model.zero_grad()  # the model's zero_grad serves as well as the optimizer's
        train(model, opt, x, y, 3, comm)
    elif CASE == "metrics_mismatch":  # a different number of values on each rank: refused on every rank
        try:
            fnn.distributed.allreduce_mean([1.0] * (rank + 1), timeout=30)
            raise AssertionError("allreduce_mean took counts that differ between ranks")
        except ValueError as e:
            print(f"rank {rank}: {e}", flush=True)
    elif CASE == "metrics_subcomm":  # a metric over ranks 0-1 only, the runtime on all ranks
        sub = comm.Split(int(rank < 2))
        if rank < 2:
            print(f"rank {rank}: mean {fnn.distributed.allreduce_mean([rank], comm=sub)[0]}", flush=True)
        sub.Free()
    elif CASE == "fit_subcomm":  # ranks 0-1 train over their own communicator, rank 2 alone
        sub = comm.Split(int(rank < 2))
        mine = build()
        sub_opt = fnn.optim.SGD(mine, lr=0.1)
        if rank < 2:
            sub_opt = fnn.distributed.DataParallel(mine, sub_opt, comm=sub, timeout=30)
        hist = fnn.train.fit(mine, sub_opt, x, y, epochs=1, batch_size=32, progress=False)
        print(f"rank {rank}: loss {hist['loss'][0]:.6f}", flush=True)
    elif CASE == "nan_accumulate":  # a step that raised on a NaN gradient is over: zero_grad clears it
        for i, (xb, yb) in enumerate(fnn.data.batches(x, y, 16, seed=1, shard=comm)):
            if i == 12:
                break
            model.backward(fnn.losses.softmax_cross_entropy(model(xb), yb)[1])
            if i == 3 and rank == 0:
                model.flat.grad[5] = np.nan
            try:
                opt.step()
            except FloatingPointError:
                assert i == 3
            opt.zero_grad()
    elif CASE == "grad_range":  # every micro-batch gradient 4e4: fp16 sums of two such overflow, the mean does not
        for _ in range(int(OPT.get("accumulate", 1))):
            model.flat.grad[...] += float(OPT.get("grad", 4e4))
            opt.step()
    elif CASE == "join_accumulate":  # 5 micro-batches an epoch, each epoch in its own join block
        for epoch in range(int(OPT.get("epochs", 3))):
            with opt.join():
                for i, (xb, yb) in enumerate(fnn.data.batches(x, y, int(OPT.get("batch", 24)), seed=1, epoch=epoch,
                                                              shard=comm)):
                    if i == 5:
                        break
                    model.backward(fnn.losses.softmax_cross_entropy(model(xb), yb)[1])
                    opt.step()
                    opt.zero_grad()
    elif CASE == "masks":  # the ranks' dropout masks for one input, seeded alike by manual_seed
        model(np.ones((64, 64)))
        masks = comm.allgather(model.layers[1]._mask)
        if rank == 0:
            np.save(OUT, np.array([np.array_equal(masks[0], m) for m in masks[1:]]))
        return
    elif CASE == "fit":
        def on_step(step, loss):
            if rank == 1 and step == int(OPT.get("raise_at", -1)):
                raise RuntimeError(f"deliberate failure on rank 1 at step {step}")
            if rank == 1 and step == int(OPT.get("stall_at", -1)):
                time.sleep(600)

        class Grow:  # a batch-size schedule with only what fastnn.data.BatchSizeSchedule asks for
            seen = 0
            batch_size = property(lambda self: 8 if self.seen < 40 else 14)

            def advance(self, n):
                self.seen += n

        calls = [0]

        def loss(out, yb):  # rank 1's loss is inf at call inf_loss_at, its gradient finite (overflowed logits)
            value, d = fnn.losses.softmax_cross_entropy(out, yb)
            calls[0] += 1
            return (float("inf") if rank == 1 and calls[0] == int(OPT.get("inf_loss_at", -1)) else value), d

        n = int(OPT.get("samples", 300))
        checkpoint = None if OPT.get("checkpoint_rank0") == "1" and rank else OPT.get("checkpoint")
        batch = Grow() if OPT.get("grow") == "1" else int(OPT.get("batch", 32))
        hist = fnn.train.fit(model, opt, x[:n], y[:n], epochs=int(OPT.get("epochs", 2)),
                             batch_size=batch, seed=1, progress=False, checkpoint=checkpoint,
                             checkpoint_every=int(OPT["every"]) if "every" in OPT else None,
                             resume=OPT.get("resume") == "1", on_step=on_step, loss=loss)
        print(f"rank {rank} skipped {hist['skipped']} of {hist['steps']}, samples {hist['samples']}", flush=True)
        if rank == 0:
            np.save(OUT + ".loss.npy", np.array(hist["loss"]))
            with open(OUT + ".steps", "w") as f:
                f.write(str(hist["steps"]))
    else:
        train(model, opt, x, y, steps, comm, faults, start)
    if CASE in ("uneven", "nan"):
        np.save(f"{OUT}.rank{rank}.npy", model.flat.data)
    if CASE == "nan":
        print(f"rank {rank} skipped {opt.skipped_steps}", flush=True)
    if rank == 0:
        np.save(OUT, model.flat.data)
        with open(OUT + ".transport", "w") as f:
            f.write(opt.transport + ("+shard" if opt.shard_optimizer else ""))
        with open(OUT + ".calls.json", "w") as f:
            json.dump(opt._wire.calls, f)
        if "timeline" in OPT:
            opt.write_timeline(OPT["timeline"])
            with open(OUT + ".overlap", "w") as f:
                f.write(repr(opt.overlap_fraction()))


if __name__ == "__main__":
    main()
