"""The training loop: epochs of seeded minibatches, fused optimizer steps, schedules,
periodic atomic checkpoints and exact resume."""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
import zlib
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import checkpoint as ckpt
from . import random
from .checks import check_bool, check_int
from .data import BatchSizeSchedule, _n_samples, batch_count, batches
from .files import check_file_target
from .losses import mean_squared_error, softmax_cross_entropy
from .layers.batchnorm import BatchNorm
from .module import Module

LossFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


def fit(model: Module, optimizer, x: np.ndarray, y: np.ndarray, *, epochs: int = 10, batch_size=64,
        schedule=None, loss: LossFn = softmax_cross_entropy, seed: int = 0,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None, resume: bool = False,
        progress: bool = True, on_step: Callable[[int, float], None] | None = None,
        settings: dict | None = None, initial_epoch: int = 0,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None, drop_last: bool = False) -> dict:
    """Train ``model`` on (x, y) for ``epochs`` passes; returns a history dict.

    Each epoch draws minibatches without replacement from the permutation seeded by
    (seed, epoch); epochs run from ``initial_epoch`` (Keras's: a run continued by calling
    ``fit`` again passes the epochs done, so that each epoch keeps its own order) up to
    ``epochs`` (a resumed checkpoint's position takes precedence). ``batch_size`` is an int
    or a ``fastnn.schedules.BatchSize``; ``drop_last`` drops each epoch's last batch when it is short
    (torch's ``DataLoader(drop_last=True)``: a BatchNorm model then never trains on a batch of one).
    ``schedule`` (an LR schedule) is stepped after every optimizer step. With ``checkpoint`` set, a
    checkpoint is written atomically every ``checkpoint_every`` steps and at each epoch's end;
    ``resume=True`` continues from it where the file exists (either without ``checkpoint``: a
    ValueError), with the same data position, RNG and optimizer state, giving
    the same trajectory as an uninterrupted run; it refuses (``ResumeError``, before anything
    is loaded) a checkpoint saved over another number of samples, with another seed, batch size,
    batch-size schedule or ``drop_last``, one holding an lr schedule's state when ``schedule`` is
    None, or
    with other ``settings``: a JSON-able dict of the run's choices that fit cannot see but
    that shape the trajectory (``fastnn train`` keeps its dropout, clipping and batch size
    there), saved in each checkpoint; the keys that both have are compared.
    ``on_step(step, loss)`` is called after each step. History: per-epoch ``loss`` (the mean
    over the epoch's samples of the steps taken, as Keras reports it: a short last batch
    weighs by its size), ``steps``, ``skipped``, ``samples`` (over all ranks), and ``seconds`` and
    ``samples_per_s`` measured after the first step (which loads or compiles the kernels;
    NaN for a run of one step); with ``validation_data=(x_val, y_val)`` also ``val_loss``
    and ``val_accuracy`` per epoch, as ``evaluate`` gives them (in eval mode; every rank
    evaluates the whole set). The model trains in training mode (a model in eval mode is put
    into it; layers that a model in training mode holds in eval mode, such as a frozen
    BatchNorm, stay so); ``predict`` runs in eval mode.

    With a ``fastnn.distributed.DataParallel`` optimizer over several ranks, each rank takes its
    share of every global batch of ``batch_size`` (an epoch's last batch with fewer samples than
    ranks is dropped, so such an epoch has one step fewer than in one process): every rank
    passes the same whole ``x`` and ``y`` (not a shard of its own, as Horovod scripts load;
    checked: a ValueError); only rank 0
    shows progress and writes checkpoints (every rank reads it on resume, so its path must be
    visible to all); losses and samples/s are over all ranks. With ``accumulate_steps`` > 1,
    a checkpoint that falls due between the micro-batches of a step is written at its end.
    """
    from .distributed import DataParallel, allreduce_mean, runtime
    from .optim.base import Optimizer
    from .schedules import Schedule

    if not callable(loss):
        raise TypeError(f"fit: loss: expected a function (prediction, target) -> (loss, gradient) such as "
                        f"fastnn.losses.softmax_cross_entropy, got {type(loss).__name__} {loss!r:.50}")
    inner = optimizer.optimizer if isinstance(optimizer, DataParallel) else optimizer
    if not isinstance(inner, Optimizer):
        raise TypeError(f"fit: optimizer: expected a fastnn optimizer (e.g. fastnn.optim.Adam(model)) or a "
                        f"DataParallel wrapping one, got {type(optimizer).__name__} {optimizer!r:.50}")
    if model._flat is None or not np.shares_memory(inner.params, model._flat.data):
        raise ValueError("fit: the optimizer updates another model's parameters (it was made from another "
                         "model, or from this one before it was nested or rehomed): make it from this model")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"fit: on_step: expected a function (step, loss) or None, got {type(on_step).__name__} "
                        f"{on_step!r:.50}")
    if y is None and loss in (softmax_cross_entropy, mean_squared_error):
        raise TypeError(f"fit: expected a y array of targets for {loss.__name__}, got None")
    if schedule is not None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"fit: schedule: expected a fastnn.schedules schedule (e.g. InverseTime(opt, 100)) or "
                            f"None, got {type(schedule).__name__} {schedule!r:.50}")
        if schedule.opt is not optimizer and schedule.opt is not inner:
            raise ValueError("fit: the schedule sets another optimizer's learning rate (it was made from another "
                             "optimizer): make it from this one")
        if schedule._owner is not None:     # its step() refuses: found now, not after the first optimizer step
            raise ValueError(f"fit: schedule: {schedule!r} is part of {schedule._owner!r}; pass that schedule")
    if validation_data is not None:
        if not isinstance(validation_data, tuple) or len(validation_data) != 2:
            got = f"a tuple of {len(validation_data)}" if isinstance(validation_data, tuple) else \
                type(validation_data).__name__
            raise TypeError(f"fit: validation_data: expected a tuple (x_val, y_val), got {got}")
        try:                                    # now, not after the first epoch's training
            _n_samples(*validation_data)
            evaluate(model, validation_data[0][:2], validation_data[1][:2], loss=loss)
        except (TypeError, ValueError) as e:
            raise type(e)(f"fit: validation_data: {e}") from e
    _n_samples(x, y)
    dp = optimizer if isinstance(optimizer, DataParallel) and optimizer.size > 1 else None
    if dp is not None:      # first: the checks below that count x would otherwise differ between ranks
        _check_same_data(dp, x, y)
    try:        # the data's sample shape and dtype (and targets, for fastnn's losses, which keep no state of
        out = predict(model, x[:2])     # their own), before a checkpoint is loaded or a step taken
        if loss in (softmax_cross_entropy, mean_squared_error):
            loss(out, y[:2])
    except (TypeError, ValueError) as e:
        raise type(e)(f"fit: on x[:2] (x of shape {getattr(x, 'shape', '?')}): {e}") from e
    if loss is softmax_cross_entropy and out.ndim == 2:    # every label, not a late batch's alone
        _check_labels(y, out.shape[1], "y")
        if validation_data is not None:
            _check_labels(validation_data[1], out.shape[1], "validation_data y")
    if not isinstance(batch_size, BatchSizeSchedule):
        batch_size = check_int(batch_size, "fit: batch_size", 1)
    drop_last = check_bool(drop_last, "fit: drop_last")
    first = batch_size if isinstance(batch_size, int) else batch_size.batch_size
    if drop_last and first > len(x):
        raise ValueError(f"fit: drop_last=True with batch_size={first} drops every batch of the {len(x)} "
                         f"samples: expected a batch_size <= {len(x)}")
    epochs = check_int(epochs, "fit: epochs", 0)
    initial_epoch = check_int(initial_epoch, "fit: initial_epoch", 0)
    if checkpoint_every is not None:
        checkpoint_every = check_int(checkpoint_every, "fit: checkpoint_every", 1)
    resume = check_bool(resume, "fit: resume")
    if settings is not None:    # as a checkpoint holds them (JSON: tuples become lists), to compare on resume
        if not isinstance(settings, dict):
            raise TypeError(f"fit: settings: expected a JSON-able dict or None, got {type(settings).__name__}")
        try:
            settings = json.loads(json.dumps(settings))
        except (TypeError, ValueError) as e:
            raise TypeError(f"fit: settings: expected a JSON-able dict, got {settings!r} ({e})") from None
    shard, lead = (dp.comm, dp.rank == 0) if dp is not None else (None, True)
    if dp is not None and len(x) < dp.size:     # every batch would be dropped: no step, on every rank alike
        raise ValueError(f"fit: expected at least one sample per rank ({dp.size} ranks), got {len(x)}")
    _check_batchnorm_shares(model, len(x), batch_size, dp.size if dp is not None else 1, drop_last, epochs)
    progress = progress and lead
    if checkpoint is None and lead and (resume or checkpoint_every is not None):    # rank 0's path decides
        given = "resume=True" if resume else f"checkpoint_every={checkpoint_every}"  # (both were ignored in silence)
        raise ValueError(f"fit: {given} needs a checkpoint: expected a checkpoint path, got None")
    start_epoch, start_sample, step = initial_epoch, 0, 0
    resumed_sums = (0.0, 0)     # the loss sum and samples of the epoch a resumed run continues
    saving = checkpoint is not None
    resuming = resume and saving and os.path.exists(checkpoint)
    if not isinstance(optimizer, DataParallel) and runtime.is_initialized() and runtime.size() > 1:
        warnings.warn(f"fit: {runtime.size()} MPI ranks, but the optimizer is not a fastnn.distributed.DataParallel: "
                      "each rank trains a model of its own (and writes the same checkpoint)", RuntimeWarning,
                      stacklevel=2)
    if dp is not None:  # every rank must take the same collective path: rank 0 decides on saving
        every = runtime.guarded("agreement on checkpoint and resume",
                                lambda: dp.comm.allgather((saving, resuming)), dp.timeout)
        saving = every[0][0]
        found = [r for r, (_, res) in enumerate(every) if res]
        if found and len(found) != dp.size:
            raise ckpt.ResumeError(f"cannot resume: the checkpoint is found on ranks {found} only; give every "
                                   "rank the same checkpoint path, on a file system that all of them see")
        resuming = bool(found)
    if saving and lead:     # before any work: a run that cannot save fails now, not after its first epoch
        check_file_target(checkpoint, "the checkpoint")
    if resuming:
        own = _rng_states(model)
        try:
            meta = ckpt.read_meta(checkpoint)
            if isinstance(meta, dict) and "model" in meta:     # another model is the first thing to say
                ckpt._check_model(checkpoint, meta["model"], ckpt._signature(model))
            if schedule is None and isinstance(meta, dict) and meta.get("schedule") is not None:
                raise ValueError(f"{checkpoint}: holds an lr schedule's state, but no schedule was given: pass the "
                                 "schedule the run used (it sets the lr of every step from here)")
            info = ckpt.load(checkpoint, model, optimizer, schedule,
                             check_extra=lambda extra: _check_resume(checkpoint, extra, model, batch_size, seed,
                                                                     len(x), settings, drop_last))
        except ValueError as e:
            raise ckpt.ResumeError(f"cannot resume from {checkpoint}: {e}") from e
        extra = info["extra"]       # checked whole by _check_resume before anything was loaded
        start_epoch, start_sample, step = extra["epoch"], extra["sample"], info["step"]
        if extra.get("batch_size_schedule") is not None:
            batch_size.load_state_dict(extra["batch_size_schedule"])
        if dp is not None:  # each rank's own generators: as saved by this rank, or as they were
            saved = extra.get("rank_rngs")
            _set_rng_states(model, saved[dp.rank] if saved and len(saved) == dp.size else own)
        # each rank's loss sum and samples of the unfinished epoch (a checkpoint without "samples"
        # was written before: its sums are of steps' means, not to be added to samples' losses)
        sums_saved = extra.get("epoch_loss") if "samples" in extra else None
        ranks = dp.size if dp is not None else 1
        if start_sample and sums_saved:
            if len(sums_saved) == ranks:
                resumed_sums = tuple(sums_saved[dp.rank if dp is not None else 0])
            else:   # saved by another rank count: spread evenly over this run's ranks, the totals kept
                resumed_sums = tuple(sum(s[i] for s in sums_saved) / ranks for i in (0, 1))

    def save(epoch: int, sample: int, running: tuple[float, int] = (0.0, 0)) -> None:
        """``running``: this rank's loss sum and samples so far in the unfinished epoch."""
        if not saving:
            return
        rank_rngs, rank_sums = None, [list(running)]
        if dp is not None:  # collective: every rank's generators (dropout masks differ by rank) and sums
            mine = (_rng_states(model), list(running))
            every = runtime.guarded("gather of the random generators for the checkpoint",
                                    lambda: dp.comm.gather(mine, root=0), dp.timeout)
            if lead:
                rank_rngs, rank_sums = [e[0] for e in every], [e[1] for e in every]
        if not lead:
            return
        bss = batch_size.state_dict() if hasattr(batch_size, "state_dict") else None
        ckpt.save(checkpoint, model, optimizer, schedule, step=step,
                  extra={"epoch": epoch, "sample": sample, "seed": seed, "samples": len(x), "batch_size_schedule": bss,
                         "drop_last": drop_last,
                         "batch_size": batch_size if isinstance(batch_size, int) else None,
                         "settings": settings, "rank_rngs": rank_rngs, "epoch_loss": rank_sums})

    drawn = batch_size if isinstance(batch_size, int) else _Counted(batch_size)
    history = {"loss": [], "steps": 0, "skipped": 0, "samples": 0}
    if validation_data is not None:
        history.update(val_loss=[], val_accuracy=[])
    sums: list[tuple[float, float]] = []  # (loss sum, samples) per epoch, this rank's
    if not model.training:
        model.train()
    began, warm_samples = None, 0
    due = False             # a checkpoint is due
    pending = (0.0, 0)      # loss sum and samples of the accumulated step's micro-batches under way
    steps_left = None
    if isinstance(batch_size, int):  # one bar for the whole run; its length is known for a fixed batch
        ranks = dp.size if dp is not None else 1
        steps_left = (batch_count(len(x) - start_sample, batch_size, drop_last, ranks)
                      + (epochs - start_epoch - 1) * batch_count(len(x), batch_size, drop_last, ranks))
    bar = tqdm(total=max(steps_left, 0) if steps_left is not None else None, disable=not progress, unit="step",
               dynamic_ncols=True)
    joined = optimizer.join(schedule) if isinstance(optimizer, DataParallel) else contextlib.nullcontext()
    with bar, _without_input_grad(model), joined:
        for epoch in range(start_epoch, epochs):
            sample = start_sample if epoch == start_epoch else 0
            total, count = resumed_sums if epoch == start_epoch else (0.0, 0)
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            if drop_last and sample == 0 and drawn is not batch_size and batch_size.batch_size > len(x):
                raise ValueError(f"fit: drop_last=True: the batch-size schedule has grown to {batch_size.batch_size} "
                                 f"after {batch_size.samples_seen} samples, beyond the {len(x)} samples, so epoch "
                                 f"{epoch + 1} would drop every batch and take no step: expected its max_batch at "
                                 f"most {len(x)} (the checkpoint, if any, holds the epochs before)")
            for xb, yb in batches(x, y, drawn, seed=seed, epoch=epoch, start_sample=sample, shard=shard,
                                  drop_last=drop_last):
                # samples of the epoch's permutation this step took, on all ranks
                taken = drawn.last if drawn is not batch_size else min(batch_size, len(x) - sample)
                value, dout = loss(model(xb), yb)
                # A NaN/Inf loss with finite gradients (overflowing logits): the gradient is made NaN,
                # so that the optimizer's nonfinite policy (raise, or skip and count) acts on every
                # rank alike, as it does for a non-finite gradient
                poisoned = not math.isfinite(value) and optimizer.nonfinite != "ignore"
                model.backward(np.full_like(dout, np.nan) if poisoned else dout)
                try:
                    stepped = optimizer.step()
                except FloatingPointError as e:
                    if not poisoned:
                        raise
                    raise FloatingPointError(f"fit: the loss is {value} at step {step + 1}, expected a finite loss "
                                             f"(the step's {e})") from None
                # the losses of a step's micro-batches count once it is taken, not when it is skipped,
                # each weighed by its samples (with ranks, this rank's share of the global batch)
                pending = (pending[0] + value * len(xb), pending[1] + len(xb))
                accumulating = getattr(optimizer, "accumulating", False)     # between a step's micro-batches
                if stepped:
                    total, count = total + pending[0], count + pending[1]
                    if schedule is not None:
                        schedule.step()
                if not accumulating:
                    if not stepped and optimizer.last_step_skipped:
                        history["skipped"] += 1
                    pending = (0.0, 0)
                optimizer.zero_grad()
                step, sample = step + 1, sample + taken
                history["steps"] += 1
                history["samples"] += len(xb)
                if began is None:  # throughput excludes the first step (kernel loading or compiling)
                    began, warm_samples = time.perf_counter(), history["samples"]
                if on_step is not None:
                    on_step(step, value)
                if count and math.isfinite(value):
                    bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
                bar.update()
                # a checkpoint due between the micro-batches of an accumulated step waits for its
                # end: their summed gradient is not saved, so the state must not depend on it
                due = due or bool(checkpoint_every and step % checkpoint_every == 0)
                if due and not accumulating:
                    save(epoch, sample, (total, count))
                    due = False
            sums.append((total, count))
            if validation_data is not None:
                for key, v in zip(("val_loss", "val_accuracy"), evaluate(model, *validation_data, loss=loss)):
                    history[key].append(v)
            if epoch + 1 < epochs:
                due = True
                if not getattr(optimizer, "accumulating", False):
                    save(epoch + 1, 0)
                    due = False
    if start_epoch < epochs:  # after join, which may have stepped on an unfinished accumulated step
        save(epochs, 0)
    history["seconds"] = time.perf_counter() - began if began is not None else 0.0
    counted = history["samples"] - warm_samples
    rate = counted / history["seconds"] if counted and history["seconds"] > 0 else math.nan    # one step: not timed
    if dp is not None:  # after join: ranks with fewer steps no longer train, so no step collective is pending
        *flat, rate, samples = allreduce_mean([v for pair in sums for v in pair] + [rate, history["samples"]],
                                              dp.timeout, comm=dp.comm)
        sums, rate = list(zip(flat[::2], flat[1::2])), float(rate) * dp.size
        history["samples"] = round(float(samples) * dp.size)      # every rank's, as one process counts them
    history["loss"] = [total / count if count else float("nan") for total, count in sums]
    history["samples_per_s"] = rate
    return history


class _Counted:
    """A batch-size schedule as the loader sees it, remembering the size of the last batch it
    handed out (the global batch, over all ranks)."""

    def __init__(self, schedule: BatchSizeSchedule) -> None:
        self.schedule, self.last = schedule, 0

    @property
    def batch_size(self) -> int:
        return self.schedule.batch_size

    def advance(self, n_samples: int) -> None:
        self.schedule.advance(n_samples)
        self.last = n_samples


@contextlib.contextmanager
def _without_input_grad(model: Module):
    """Training needs no gradient with respect to the data: let the first layer skip it."""
    wanted, model.input_grad = model.input_grad, False
    try:
        yield
    finally:
        model.input_grad = wanted


def _check_same_data(dp, x: np.ndarray, y: np.ndarray | None) -> None:
    """ValueError on every rank alike unless all ranks pass the same x and y (compared by their
    lengths and a checksum of the first samples' bytes, where bytes are values: not for object
    or structured dtypes): each rank takes its share of every global batch, so a shard of its
    own per rank (as Horovod scripts load) trained on 1/N of it without a word."""
    from .distributed import runtime

    def digest(a: np.ndarray | None, k: int) -> tuple | None:
        if a is None:       # a loss of its own, without targets
            return None
        head = np.ascontiguousarray(a[:k])
        plain = not (head.dtype.hasobject or head.dtype.fields)     # pointers and padding are not values
        return len(a), zlib.crc32(head) if plain else None

    mine = (digest(x, 8), digest(y, 64))
    every = runtime.guarded("agreement on the data", lambda: dp.comm.allgather(mine), dp.timeout)
    if any(e != mine for e in every):
        raise ValueError(f"fit: expected the same x and y on every rank (each takes its share of every batch), got "
                         f"(x, y) as (samples, checksum of the first ones) {every} over the ranks: pass the whole "
                         "data set on each rank, not a shard of its own")


def _check_batchnorm_shares(model: Module, n: int, batch, ranks: int, drop_last: bool, epochs: int = 1) -> None:
    """ValueError before training where a batch would hand a rank one sample and a BatchNorm that
    trains (fit puts a model in eval mode into training mode) sees one value per channel there
    (its input (N, C)), which it cannot normalize:
    it failed at that batch, an epoch in (with ranks, on one rank's share of the last batch).
    ``batch``: an int, or a BatchSize schedule, whose batches over ``epochs`` epochs are all checked."""
    norms = [path for path, m in model.modules()
             if isinstance(m, BatchNorm) and (m.training or not model.training) and m.values_per_sample == 1]
    if not norms:
        return
    if isinstance(batch, int):
        last = n % batch if not drop_last and n % batch >= ranks else 0     # fewer than ranks: dropped
        run = f"{n} samples, batch_size {batch}"
        sizes = {batch: ("a batch", "a larger batch_size"),
                 last: ("the last batch of each epoch", "pass drop_last=True or another batch_size")}
    elif hasattr(batch, "sizes"):                                # a fastnn.schedules.BatchSize
        run = f"{n} samples per epoch, {batch!r}"
        sizes = dict.fromkeys(batch.sizes(n, epochs, drop_last, ranks), ("a batch", "pass drop_last=True or another "
                                                                               "batch-size schedule"))
    else:                                                       # a schedule of the user's: its sizes unknown
        return
    for size, (which, fix) in sizes.items():
        if size >= ranks and size // ranks == 1:
            gives = (f"{which} ({run}) holds {size} sample" if ranks == 1 else
                     f"a batch of {size} samples gives a rank 1 sample on {ranks} ranks ({run})")
            raise ValueError(f"fit: {gives}, and BatchNorm layer {norms[0]!r} cannot train on one value per "
                             f"channel: expected at least 2 samples per rank in every batch ({fix})")


def _check_labels(y: np.ndarray, classes: int, what: str) -> None:
    """ValueError naming the first of integer class labels (N,) outside [0, classes): the loss
    sees one batch at a time, so a bad label late in the data failed after steps had been taken."""
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        return
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise ValueError(f"fit: {what}[{bad[0]}] = {y[bad[0]]}: expected class labels in [0, {classes}) for a "
                         f"model of {classes} outputs ({bad.size} of {len(y)} labels outside)")


def evaluate(model: Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024,
             loss: LossFn = softmax_cross_entropy) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode; restores the mode. Accuracy is the fraction of
    samples whose argmax(output) is the label: ``y`` integer class labels (N,), or one-hot or
    probability targets of the outputs' shape (argmax of each row: a regression's targets of
    that shape are read so too, as Keras's ``"accuracy"`` reads them); NaN for other targets
    and for a model of one output (a regression, or binary logits: argmax of one column is
    always 0)."""
    batch_size = check_int(batch_size, "evaluate: batch_size", 1)
    if y is None:
        raise TypeError("evaluate: expected a y array of targets, got None")
    _n_samples(x, y)
    total, correct, labelled = 0.0, 0, True
    with _in_eval(model):
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size])
            yb = y[i:i + batch_size]
            value, _ = loss(out, yb)
            total += value * len(out)
            if yb.shape == out.shape and out.ndim == 2 and out.shape[1] > 1:
                yb = np.argmax(yb, axis=1)
            elif not (yb.ndim == 1 and yb.dtype.kind in "iu" and out.ndim == 2 and out.shape[1] > 1):
                labelled = False        # argmax over one output is always 0: no class accuracy
                continue
            correct += int(np.sum(np.argmax(out, axis=1) == yb))
    return total / len(x), correct / len(x) if labelled else float("nan")


def predict(model: Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs for x (N, ...), computed in eval mode (dropout off) ``batch_size``
    samples at a time, as Keras's ``predict``; restores the mode. Returns (N, ...) outputs."""
    batch_size = check_int(batch_size, "predict: batch_size", 1)
    _n_samples(x, None)
    with _in_eval(model):
        return np.concatenate([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@contextlib.contextmanager
def _in_eval(model: Module):
    """Eval mode inside, every module's mode found restored after (a frozen layer of a model in
    training mode stays frozen)."""
    modes = [(m, m.training) for _, m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _check_resume(path, extra: dict, model: Module, batch_size, seed: int, n_samples: int,
                  settings: dict | None, drop_last: bool) -> None:
    """Refuse a checkpoint ``fit`` cannot continue, before anything is loaded: not written by
    ``fit``, a data position outside this data set, written over another number of samples or
    with another data seed (its data position is in that permutation), ``drop_last``, batch
    size, batch-size schedule or ``settings``, or a batch-size schedule state, loss sums or
    per-rank generator states that would fail to load (each is tried on a copy)."""
    if not isinstance(extra, dict) or "epoch" not in extra or "sample" not in extra:
        got = f"extra keys {sorted(extra)}" if isinstance(extra, dict) else f"extra {extra!r:.200}"
        raise ValueError(f"{path}: expected a checkpoint written by fit (with the data position), got {got}")
    for key, top, want in (("epoch", math.inf, "an int >= 0"),
                           ("sample", n_samples, f"an int in 0..{n_samples} (the samples in this data set)")):
        v = extra[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
            raise ValueError(f"{path}: expected the data position's {key} {want}, got {v!r}")
    if extra.get("seed", seed) != seed:
        raise ValueError(f"{path}: saved by a run with seed={extra['seed']}, expected this run's seed={seed} (the "
                         "data position is a place in that seed's permutation)")
    if extra.get("samples", n_samples) != n_samples:     # absent from checkpoints written before it was saved
        raise ValueError(f"{path}: saved by a run over {extra['samples']!r:.50} samples, expected this run's "
                         f"{n_samples} (the data position is a place in that data's permutation)")
    if extra.get("drop_last", False) != drop_last:     # absent from checkpoints written before it was saved
        raise ValueError(f"{path}: saved by a run with drop_last={extra.get('drop_last', False)!r:.50}, expected "
                         f"this run's drop_last={drop_last}")
    state = extra.get("batch_size_schedule")
    if state is not None and not isinstance(state, dict):
        raise ValueError(f"{path}: expected the batch-size schedule's state a dict or null, got {state!r:.200}")
    saved = (state or {}).get("schedule")
    mine = batch_size.state_dict()["schedule"] if hasattr(batch_size, "state_dict") else None
    if saved != mine:
        raise ValueError(f"{path}: saved with batch_size {saved or 'a fixed int'}, expected this run's "
                         f"{mine or batch_size}")
    if state is not None:       # on a copy (sharing the optimizer it may rescale): the real one loads after
        shared = getattr(batch_size, "opt", None)
        trial = copy.deepcopy(batch_size, {id(shared): shared} if shared is not None else {})
        try:
            trial.load_state_dict(state)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: malformed batch-size schedule state ({e})") from e
    fixed = extra.get("batch_size")
    if fixed is not None:       # absent from checkpoints written before it was saved
        if isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 1:
            raise ValueError(f"{path}: expected the saved batch_size an int >= 1 or null, got {fixed!r:.200}")
        if fixed != batch_size:
            raise ValueError(f"{path}: saved by a run with batch_size={fixed}, expected this run's "
                             f"batch_size={batch_size}")
    was = extra.get("settings")
    if was is not None and not isinstance(was, dict):
        raise ValueError(f"{path}: expected the saved settings a dict or null, got {was!r:.200}")
    changed = [f"{k} {was[k]!r} -> {v!r}" for k, v in (settings or {}).items() if k in (was or {}) and was[k] != v]
    if changed:     # the settings both runs have (one saved before a setting was added lacks it)
        raise ValueError(f"{path}: saved by a run with other settings ({'; '.join(changed)})")
    sums = extra.get("epoch_loss")
    if sums is not None and not (isinstance(sums, list) and all(
            isinstance(s, list) and len(s) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in s) and s[1] >= 0 for s in sums)):
        raise ValueError(f"{path}: expected epoch_loss a list of [loss sum, samples >= 0] per rank, got {sums!r:.200}")
    _check_rank_rngs(path, extra.get("rank_rngs"), model)


def _check_rank_rngs(path, saved, model: Module) -> None:
    """Each rank's saved generator states (None: one process), as ``_rng_states`` gives them,
    tried on fresh generators of the same kinds."""
    if saved is None:
        return
    gens = dict(model.rngs())
    expected = (f"expected rank_rngs a list of each rank's generator states, {{'model': {{name: state}}, "
                f"'global': state}} with the model's names {sorted(gens)}")
    if not isinstance(saved, list) or not all(
            isinstance(r, dict) and set(r) == {"model", "global"} and isinstance(r["model"], dict)
            and set(r["model"]) == set(gens) for r in saved):
        raise ValueError(f"{path}: {expected}, got {saved!r:.200}")
    for r in saved:
        pairs = [(gens[n], r["model"][n]) for n in gens] + [(random.generator(), r["global"])]
        for gen, state in pairs:
            random.check_state(gen, state, f"{path}: rank_rngs")


def _rng_states(model: Module) -> dict:
    return {"model": {n: g.bit_generator.state for n, g in model.rngs()},
            "global": random.generator().bit_generator.state}


def _set_rng_states(model: Module, states: dict) -> None:
    for n, g in model.rngs():
        g.bit_generator.state = states["model"][n]
    random.generator().bit_generator.state = states["global"]
