"""The ``fastnn`` command: ``fastnn train`` (the main job) and ``fastnn info``."""
from __future__ import annotations

import argparse
import math
import os
import string
import sys
import time

from .distributed.runtime import abort, launched_rank

MODELS = ("mlp", "cnn", "resnet")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "inverse-time", "cosine", "step", "exponential", "warmup-cosine")
#: the options of fastnn train that set an optimizer's hyperparameters, by their param_groups key
_OPTIONS = {"initial_lr": "--lr", "weight_decay": "--weight-decay", "momentum": "--momentum"}


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``fastnn train: error: ...``), exit code 2, printed by rank 0
    only under mpiexec (every rank exits alike); --help shows usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if launched_rank() == 0 else None)


def _threads(text: str) -> int:
    import numba

    n = _POSITIVE(text)
    if n > numba.config.NUMBA_NUM_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most NUMBA_NUM_THREADS = {numba.config.NUMBA_NUM_THREADS}, "
                                         f"got {n}")
    return n


def _number(kind: type, ok, expected: str):
    """An argparse type: ``kind(text)`` where ``ok`` holds, else a one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_POSITIVE = _number(int, lambda v: v >= 1, "an int >= 1")
_COUNT = _number(int, lambda v: v >= 0, "an int >= 0")
_NONNEG = _number(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def seconds_since_launch() -> float:
    """Wall time since this process started (from /proc), or since import where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to an option's help unless the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastnn", description="fastnn: compiled-kernel neural-network training")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a network on the digits set (or MNIST IDX files)",
                       formatter_class=_Defaults)
    t.add_argument("--data", default="digits", help="'digits' (bundled with scikit-learn) or a folder of MNIST IDX files")
    t.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp: dense ReLU layers; cnn: conv 3x3, max pool, locally connected 3x3, dense; resnet: "
                        "conv 3x3 and BatchNorm, two residual blocks, global average pool, dense")
    t.add_argument("--hidden", type=_POSITIVE, nargs="+", default=None,
                   help="hidden layer widths of the mlp (default: 128 128)")
    t.add_argument("--dropout", type=_number(float, lambda v: 0 <= v < 1, "a number in [0, 1)"), default=0.0,
                   help="dropout rate after each hidden layer (cnn, resnet: before its dense layer)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="as torch.optim's")
    t.add_argument("--lr", type=_NONNEG, default=2e-3, help="learning rate (the lr schedule's base)")
    t.add_argument("--momentum", type=_NONNEG, default=None, help="SGD momentum (default: 0.9)")
    t.add_argument("--weight-decay", type=_NONNEG, default=None,
                   help="L2 decay (Adam, SGD) or decoupled decay (AdamW) of the weights (default: 0.01 for "
                        "adamw, as torch's AdamW, else 0)")
    t.add_argument("--clip", type=_number(float, lambda v: 0 < v < float("inf"), "a finite number > 0"), default=None,
                   help="clip the global gradient norm to this value")
    t.add_argument("--nonfinite", choices=("raise", "skip"), default="raise",
                   help="a step whose gradient holds NaN or Inf: stop with an error, or skip it and count it")
    t.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="lr schedule (default: inverse-time, or constant with --grow-batch)")
    t.add_argument("--batch-size", type=_POSITIVE, default=32,
                   help="samples per step (under mpiexec: the global batch, shared by the ranks)")
    t.add_argument("--grow-batch", type=_POSITIVE, default=None, metavar="MAX",
                   help="double the batch every epoch's worth of samples, up to MAX (instead of decaying lr)")
    t.add_argument("--epochs", type=_COUNT, default=30, help="passes over the training set")
    t.add_argument("--seed", type=_COUNT, default=0, help="seeds the initial weights, dropout and the data order")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="of the parameters and the data")
    t.add_argument("--threads", type=_threads, default=None, help="Numba threads (default: all cores)")
    t.add_argument("--checkpoint", default="checkpoints/{data}-{model}.npz",
                   help="where to save; {data} and {model} are filled in (other options share the file)")
    t.add_argument("--checkpoint-every", type=_POSITIVE, default=None, metavar="STEPS",
                   help="save every STEPS steps too (default: at each epoch's end only)")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    t.add_argument("--no-progress", action="store_true", help="no progress bar and no model summary")
    sub.add_parser("info", help="print what this machine offers fastnn")
    tu = sub.add_parser("tune", help="sweep GEMM block sizes on this machine and store the best",
                        formatter_class=_Defaults)
    tu.add_argument("--n", type=int, default=1024, help="square product size timed per point")
    tu.add_argument("--repeats", type=int, default=3, help="timed runs per point (their median counts)")
    tu.add_argument("--dry-run", action="store_true", help="print the winners, write nothing")
    co = sub.add_parser("compile", help="compile the kernels into Numba's cache ahead of time (e.g. before mpiexec)",
                        formatter_class=_Defaults)
    co.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32", "float64"])
    co.add_argument("--jobs", type=_POSITIVE, default=None, help="worker processes (default: one per core)")
    be = sub.add_parser("bench", help="run a benchmark from bench/ (e.g. fastnn bench matmul --quick)")
    be.add_argument("what", choices=("matmul",))
    be.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:     # `fastnn info | head -1`: the reader left; no traceback (Python's recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        _check_train_args(parser, args)
    if args.command == "tune":
        from .kernels.matmul.blocks import table_path
        from .tune import tune

        try:
            table, _ = tune(args.n, args.repeats, write=not args.dry_run)
        except (ValueError, OSError) as e:
            print(f"fastnn tune: {e}", file=sys.stderr)
            return 2
        for name, b in table.items():
            print(f"{name}: MR {b.mr} NR {b.nr} MC {b.mc} KC {b.kc} NC {b.nc}")
        print("dry run: nothing written" if args.dry_run else f"wrote {table_path()}")
        return 0
    if args.command == "compile":
        from .precompile import precompile

        began = time.perf_counter()
        try:
            for dtype, part, seconds in precompile(tuple(args.dtype), args.jobs):
                print(f"{dtype:8s} {part:8s} {seconds:6.1f} s", flush=True)
        except RuntimeError as e:
            print(f"fastnn compile: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("fastnn compile: interrupted; the kernels compiled so far stay cached", file=sys.stderr)
            return 130
        print(f"kernels cached in {time.perf_counter() - began:.1f} s")
        return 0
    if args.command == "bench":
        import runpy
        from pathlib import Path

        script = Path(__file__).resolve().parents[1] / "bench" / f"bench_{args.what}.py"
        if not script.exists():
            print(f"fastnn bench: {script} not found (the benchmarks live in the source checkout)", file=sys.stderr)
            return 2
        sys.argv = [str(script), *args.rest]
        runpy.run_path(str(script), run_name="__main__")
        return 0
    if args.command == "info":
        from .sysinfo import report

        rows = report()
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k.ljust(width)}  {v}")
        return 0
    return _train(args)


def _check_train_args(parser: argparse.ArgumentParser, args) -> None:
    """Arguments that only make sense together; fills in args.checkpoint's fields."""
    def error(message: str) -> None:
        parser.exit(2, f"fastnn train: error: {message} (see fastnn train --help)\n" if launched_rank() == 0 else None)

    if args.grow_batch is not None and args.grow_batch < args.batch_size:
        error(f"argument --grow-batch: expected a batch size >= --batch-size {args.batch_size}, got {args.grow_batch}")
    if args.hidden is not None and args.model != "mlp":
        error(f"argument --hidden: sets the mlp's widths, got --model {args.model}")
    if args.momentum is not None and args.optimizer != "sgd":
        error(f"argument --momentum: sets SGD's momentum, got --optimizer {args.optimizer}")
    expected = "argument --checkpoint: expected a path whose only fields are {data} and {model}"
    try:
        fields = [(name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(args.checkpoint)
                  if name is not None]
    except ValueError as e:                     # an unmatched brace
        error(f"{expected}, got {args.checkpoint!r} (ValueError: {e})")
    for name, conversion, spec in fields:       # bare fields only: {data.x} would be an attribute lookup
        if name not in ("data", "model") or conversion or spec:
            field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            error(f"{expected} (bare: no attribute, index, conversion or format spec), got {field} in "
                  f"{args.checkpoint!r}")
    # the folder's own name: `--data .` gave the hidden file checkpoints/.-mlp.npz
    args.checkpoint = args.checkpoint.format(data=os.path.basename(os.path.abspath(args.data)) or "data",
                                             model=args.model)
    if not args.checkpoint:
        error("argument --checkpoint: expected a file path, got ''")


def _load(spec: str, dtype):
    from . import data

    if spec == "digits":
        x, y = data.load_digits(dtype)
        return data.train_test_split(x.reshape(len(x), 8, 8, 1), y, test_fraction=0.2, seed=0)
    x_train, y_train = data.load_mnist(spec, "train", dtype, flatten=False)
    x_test, y_test = data.load_mnist(spec, "test", dtype, flatten=False)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"expected training and test images of one size, got {x_train.shape[1:3]} and "
                         f"{x_test.shape[1:3]}")
    return x_train, x_test, y_train, y_test


def _train(args) -> int:
    import numpy as np

    import fastnn as fnn

    from .files import check_file_target

    comm = fnn.distributed.init(threads_per_rank=args.threads) if fnn.distributed.launched_under_mpi() else None
    rank = fnn.distributed.rank()
    ranks = fnn.distributed.size()
    if args.batch_size < ranks:      # every rank stops alike, before any work
        if rank == 0:
            print(f"fastnn train: error: argument --batch-size: expected at least one sample per rank ({ranks} "
                  f"ranks), got {args.batch_size}", file=sys.stderr)
        return 2
    if args.threads and comm is None:
        import numba

        numba.set_num_threads(args.threads)
    fnn.manual_seed(args.seed)
    dtype = np.dtype(args.dtype)
    error = None            # this rank's start-up error: data or folders may be missing on one machine only
    try:
        x_train, x_test, y_train, y_test = _load(args.data, dtype)
    except (OSError, ValueError, ImportError) as e:     # ImportError: the digits need fastnn[data]
        error = f"fastnn train: --data {args.data}: {e}"
    if error is None:
        try:
            check_file_target(args.checkpoint, "the checkpoint")
        except OSError as e:
            error = f"fastnn train: --checkpoint: {e}"
    if error is None and len(x_train) < ranks:
        error = (f"fastnn train: --data {args.data}: expected at least one training sample per rank ({ranks} "
                 f"ranks), got {len(x_train)}")
    if _stop_on_any_rank(comm, error):
        return 2
    classes = int(max(y_train.max(), y_test.max())) + 1
    unseen = np.flatnonzero(np.bincount(y_train, minlength=classes) == 0)
    if len(unseen) and rank == 0:         # one stray label makes that many outputs: say so, then train
        print(f"fastnn train: note: --data {args.data}: labels go up to {classes - 1}, so the model has {classes} "
              f"outputs, but {len(unseen)} classes have no training sample ({', '.join(map(str, unseen[:5]))}"
              f"{', ...' if len(unseen) > 5 else ''}): a damaged label file?", file=sys.stderr)
    if args.model == "mlp":
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    try:
        model = _model(fnn, args, x_train.shape[1:], classes, dtype)
    except (ValueError, MemoryError) as e:
        if isinstance(e, MemoryError) and comm is not None:
            raise       # perhaps on this rank alone: the abort hook ends every rank now, not at a timeout
        if rank == 0:
            what = f"--model {args.model} on --data {args.data}" if args.model != "mlp" else \
                f"--hidden {' '.join(map(str, args.hidden or (128, 128)))}"
            print(f"fastnn train: {what}: {e or type(e).__name__}", file=sys.stderr)
        return 2
    decay = [v for n, v in model.named_parameters() if n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": 0.0}]
    wd = args.weight_decay if args.weight_decay is not None else 1e-2 if args.optimizer == "adamw" else 0.0
    common = dict(lr=args.lr, weight_decay=wd, param_groups=groups, max_grad_norm=args.clip, nonfinite=args.nonfinite)
    if args.optimizer == "sgd":
        opt = fnn.optim.SGD(model, momentum=0.9 if args.momentum is None else args.momentum, **common)
    else:
        opt = (fnn.optim.AdamW if args.optimizer == "adamw" else fnn.optim.Adam)(model, **common)
    if comm is not None:  # mpiexec -n N fastnn train: synchronous data parallelism (each rank its dropout stream)
        opt = fnn.distributed.DataParallel(model, opt)
    batch = args.batch_size
    steps_per_epoch = fnn.data.batch_count(len(x_train), args.batch_size, ranks=ranks)    # of the first epoch
    total = steps_per_epoch * args.epochs
    if args.grow_batch:
        batch = fnn.schedules.BatchSize(args.batch_size, factor=2, every_samples=len(x_train), max_batch=args.grow_batch)
        total = batch.steps(len(x_train), args.epochs, ranks=ranks)
    name = args.schedule or ("constant" if args.grow_batch else "inverse-time")
    sched = _schedule(fnn, name, opt, steps_per_epoch, total)
    path = args.checkpoint

    first = {}

    def on_step(step: int, loss: float) -> None:
        if not first:
            first["s"] = seconds_since_launch()

    # the options that shape the trajectory and that fit cannot see in the model, optimizer or schedule
    settings = {"batch_size": args.batch_size, "grow_batch": args.grow_batch, "dropout": args.dropout,
                "clip": args.clip, "nonfinite": args.nonfinite}
    changed = _changed_settings(fnn, path, opt, settings) if args.resume else None
    if changed:                                      # every rank reads the same file and stops alike
        if rank == 0:
            print(f"fastnn train: --resume from {path}: it was trained with other settings ({changed}); "
                  "pass the options it used, or train from scratch without --resume", file=sys.stderr)
        return 2
    if not args.no_progress and rank == 0:
        model.summary(input_shape=x_train.shape[1:])
    try:
        hist = fnn.train.fit(model, opt, x_train, y_train, epochs=args.epochs, batch_size=batch, schedule=sched,
                             seed=args.seed, checkpoint=path, checkpoint_every=args.checkpoint_every,
                             resume=args.resume, progress=not args.no_progress, on_step=on_step,
                             settings=settings)
    except KeyboardInterrupt:                        # Ctrl-C: one line, as every other stop, not a traceback
        if comm is not None:            # under mpiexec every rank ends the job (one rank that returned
            abort(f"fastnn train: interrupted; {_saved(fnn, path)}", 130)   # would leave the others waiting)
        print(f"fastnn train: interrupted; {_saved(fnn, path)}", file=sys.stderr)
        return 130                                   # as a shell reports a command stopped by SIGINT
    except FloatingPointError as e:                  # the reduced gradient: every rank stops alike
        if rank == 0:
            print(f"fastnn train: {e} (here: --nonfinite skip; or lower --lr, or set --clip)", file=sys.stderr)
        return 2
    except fnn.checkpoint.ResumeError as e:          # every rank reads the same file and stops alike
        if rank == 0:
            sized = ("" if name in ("constant", "inverse-time") else
                     f"; a {name} schedule spans the run's --epochs, so a longer run needs a new --checkpoint")
            hint = (" (it was not written by fastnn train)" if "holds no" in str(e) else
                    " (it was trained with another lr schedule: pass the --schedule, --epochs, --batch-size and "
                    f"--grow-batch it used; with --grow-batch the default schedule is constant{sized})"
                    if "schedule state" in str(e) else "")
            print(f"fastnn train: {e}{hint}; train from scratch without --resume or give another --checkpoint",
                  file=sys.stderr)
        return 2
    _, acc = fnn.train.evaluate(model, x_test, y_test)
    if rank != 0:
        return 0
    if comm is not None:
        grows = f", growing to {args.grow_batch}" if args.grow_batch else ""
        print(f"ranks             {fnn.distributed.size()} (data parallel, global batch {args.batch_size}{grows})")
    if "s" in first:
        print(f"first step        {first['s']:.2f} s after launch")
    if args.epochs == 0:
        print("nothing to train  --epochs 0")
    elif hist["steps"] == 0:
        reached = fnn.checkpoint.read_meta(path)["extra"]["epoch"]
        more = (f"pass --epochs above {reached} to go on" if name in ("constant", "inverse-time") else
                f"its {name} schedule spans exactly these epochs: a longer run needs a new --checkpoint")
        print(f"nothing to train  {path} has trained {reached} epochs, --epochs {args.epochs} ({more})")
    else:
        print(f"final train loss  {hist['loss'][-1]:.4f}")
    print(f"test accuracy     {100 * acc:.2f}% ({len(x_test)} samples)")
    if hist["steps"]:
        rate = (f"{hist['samples_per_s']:,.0f}" if math.isfinite(hist["samples_per_s"])
                else "n/a (the first step, which loads the kernels, is not timed)")
        print(f"samples/s         {rate} ({hist['steps']} steps, {hist['skipped']} skipped)")
    if hist["steps"] or (args.resume and os.path.exists(path)):     # saved, or resumed from: not an old file
        print(f"checkpoint        {os.path.abspath(path)}")
    return 0


def _model(fnn, args, sample_shape: tuple[int, ...], classes: int, dtype):
    """The network ``--model`` names, for samples of ``sample_shape``."""
    if args.model in ("cnn", "resnet"):
        from .models import small_cnn, small_resnet

        build = small_cnn if args.model == "cnn" else small_resnet
        return build(sample_shape, classes, dtype=dtype, dropout=args.dropout)
    widths = [sample_shape[0], *(args.hidden or (128, 128))]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers.append(fnn.Dense(a, b, activation="relu", dtype=dtype))
        if args.dropout:
            layers.append(fnn.Dropout(args.dropout))
    return fnn.Sequential(*layers, fnn.Dense(widths[-1], classes, dtype=dtype))


def _stop_on_any_rank(comm, error: str | None) -> bool:
    """Whether some rank has a start-up ``error`` (one line; None: none here), agreed by every
    rank, so that all stop alike; the first one is printed once, with its rank unless every
    rank had it. (A rank that stopped alone left the others waiting in a collective until the
    watchdog's timeout.)"""
    errors = [error] if comm is None else comm.allgather(error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed and (comm is None or comm.Get_rank() == 0):
        r, e = failed[0]
        alike = len(set(errors)) == 1
        print(e if alike else f"{e} (on rank {r}; {len(failed)} of {len(errors)} ranks failed)", file=sys.stderr)
    return bool(failed)


def _saved(fnn, path: str) -> str:
    """What the checkpoint at ``path`` holds for a run to go on from (checkpoints are written
    whole or not at all, so an interrupted save leaves the one before)."""
    try:
        step = fnn.checkpoint.read_meta(path)["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no checkpoint to go on from at {path}"
    return f"{path} holds step {step}: go on from there with --resume"


def _changed_settings(fnn, path: str, opt, settings: dict) -> str | None:
    """The settings of this run that differ from those the checkpoint at ``path`` was trained
    with, in words: the optimizer's (lr as the schedule's base, weight decay, momentum, ...)
    and ``settings`` (options such as --dropout and --clip, as fit saved them; a checkpoint
    without them is not compared). None when they agree, or when there is no readable
    checkpoint there (fit reports that)."""
    try:
        meta = fnn.checkpoint.read_meta(path)
    except (OSError, ValueError):
        return None
    diffs = []
    extra = meta.get("extra") if isinstance(meta, dict) else None
    options = extra.get("settings") if isinstance(extra, dict) else None
    if isinstance(options, dict):
        for key, new in settings.items():
            if key in options and _plain(options[key]) != _plain(new):
                diffs.append(f"--{key.replace('_', '-')} {options[key]!r} -> {new!r}")
    try:
        saved = meta["optimizer"]["param_groups"]
    except (KeyError, TypeError):
        saved = None
    mine = opt.state_dict()["param_groups"]
    if isinstance(saved, list) and len(saved) == len(mine) and all(isinstance(g, dict) for g in saved):
        for was, now in zip(saved, mine):   # the groups fastnn train makes (biases, weights): one change once
            for key, new in now.items():       # lr itself moves with the schedule: its base is initial_lr
                if key not in ("lr", "params") and key in was and _plain(was[key]) != _plain(new):
                    change = f"{_OPTIONS.get(key, key)} {was[key]!r} -> {new!r}"
                    diffs += [change] if change not in diffs else []
    return "; ".join(diffs) or None


def _plain(value):
    """Lists and tuples alike (JSON turns tuples into lists)."""
    return list(value) if isinstance(value, (tuple, list)) else value


def _schedule(fnn, name: str, opt, steps_per_epoch: int, total: int):
    """The named lr schedule, sized for ``total`` steps of the run."""
    s = fnn.schedules
    total = max(1, total)
    if name == "constant":
        return s.Constant(opt)
    if name == "inverse-time":
        return s.InverseTime(opt, decay_steps=5 * steps_per_epoch)
    if name == "cosine":
        return s.Cosine(opt, T_max=total)
    if name == "step":
        return s.Step(opt, step_size=max(1, total // 3), gamma=0.3)
    if name == "exponential":
        return s.Exponential(opt, gamma=0.01 ** (1 / total))
    warm = max(1, steps_per_epoch)
    return s.Sequential(opt, [s.Warmup(opt, warm), s.Cosine(opt, T_max=max(1, total - warm))], milestones=[warm])


if __name__ == "__main__":
    sys.exit(main())
