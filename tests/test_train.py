"""The training loop end to end: accuracy on digits, checkpoints, exact resume, the CLI."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn


def _digits_setup(seed=0, dropout=0.0, dtype=np.float32):
    x, y = fnn.data.load_digits(dtype)
    xtr, xte, ytr, yte = fnn.data.train_test_split(x, y, test_fraction=0.2, seed=0)
    fnn.manual_seed(seed)
    layers = [fnn.Dense(64, 128, activation="relu", dtype=dtype)]
    if dropout:
        layers.append(fnn.Dropout(dropout))
    model = fnn.Sequential(*layers, fnn.Dense(128, 10, dtype=dtype))
    return model, (xtr, xte, ytr, yte)


def test_digits_reaches_95_percent_test_accuracy():
    model, (xtr, xte, ytr, yte) = _digits_setup()
    opt = fnn.optim.Adam(model, lr=3e-3)
    sched = fnn.schedules.InverseTime(opt, decay_steps=1000)
    hist = fnn.train.fit(model, opt, xtr, ytr, epochs=15, batch_size=32, schedule=sched, progress=False)
    loss, acc = fnn.train.evaluate(model, xte, yte)
    assert acc >= 0.95, f"test accuracy {acc:.3f}"
    assert hist["loss"][-1] < hist["loss"][0]


def test_sgd_momentum_with_growing_batch_learns_digits():
    model, (xtr, xte, ytr, yte) = _digits_setup()
    opt = fnn.optim.SGD(model, lr=0.05, momentum=0.9)
    grow = fnn.schedules.BatchSize(16, factor=2, every_samples=3 * len(xtr), max_batch=128)
    fnn.train.fit(model, opt, xtr, ytr, epochs=12, batch_size=grow, progress=False)
    assert grow.batch_size == 128
    assert fnn.train.evaluate(model, xte, yte)[1] >= 0.93


def _trajectory(tmp_path, interrupt_at=None, save_every=37):
    """Train 3 epochs with dropout, Adam, warmup+cosine and a growing batch, checkpointing every
    ``save_every`` steps; optionally stop after ``interrupt_at`` steps (the steps since the last
    checkpoint are lost) and resume in fresh objects from the checkpoint."""
    path = tmp_path / "run.npz"

    def build(seed=1):
        model, (xtr, _, ytr, _) = _digits_setup(seed=seed, dropout=0.2)
        opt = fnn.optim.AdamW(model, lr=3e-3, max_grad_norm=5.0)
        s = fnn.schedules
        sched = s.Sequential(opt, [s.Warmup(opt, 10), s.Cosine(opt, T_max=200)], milestones=[10])
        grow = s.BatchSize(32, factor=2, every_samples=1000, max_batch=128)
        return model, opt, sched, grow, xtr, ytr

    class Stop(Exception):
        pass

    def stopper(step, loss):
        if interrupt_at is not None and step == interrupt_at:
            raise Stop

    model, opt, sched, grow, xtr, ytr = build()
    kw = dict(epochs=3, seed=5, checkpoint=path, checkpoint_every=save_every, progress=False)
    try:
        hist = fnn.train.fit(model, opt, xtr, ytr, batch_size=grow, schedule=sched, on_step=stopper, **kw)
    except Stop:
        # other initial weights and dropout seeds: only the checkpoint can give the same result
        model, opt, sched, grow, xtr, ytr = build(seed=2)
        fnn.manual_seed(123)
        hist = fnn.train.fit(model, opt, xtr, ytr, batch_size=grow, schedule=sched, resume=True, **kw)
    return model.flat.data.copy(), opt.step_count, sched.get_last_lr(), hist["steps"]


def test_resume_equals_uninterrupted(tmp_path):
    full = _trajectory(tmp_path / "a")
    resumed = _trajectory(tmp_path / "b", interrupt_at=41)
    np.testing.assert_array_equal(full[0], resumed[0])
    assert full[1:3] == resumed[1:3]
    # the resumed run took only the steps after the last checkpoint: the one at the end of
    # epoch 1, step 39 (32 batches of 32, then the batch grows to 64: 7 more for 1437 samples)
    assert resumed[3] == full[3] - 39


def test_a_run_resumed_mid_epoch_reports_that_epochs_whole_loss(tmp_path):
    """The checkpoint keeps the unfinished epoch's loss sum: the resumed run's mean for that
    epoch is the uninterrupted run's (it used to cover only the steps after the resume)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 8)).astype(np.float32), rng.integers(0, 3, 200)

    def run(path, stop_at=None):
        fnn.manual_seed(0)
        model = fnn.Sequential(fnn.Dense(8, 16, activation="relu"), fnn.Dense(16, 3))
        opt = fnn.optim.SGD(model, lr=0.1, momentum=0.9)

        def on_step(step, loss):
            if step == stop_at:
                raise KeyboardInterrupt
        kw = dict(epochs=2, batch_size=16, seed=3, checkpoint=path, checkpoint_every=4, progress=False)
        try:
            return fnn.train.fit(model, opt, x, y, on_step=on_step, **kw), model
        except KeyboardInterrupt:       # steps 14-26 are epoch 1; the last checkpoint is step 16's
            return fnn.train.fit(model, opt, x, y, resume=True, **kw), model

    (full, a), (resumed, b) = run(tmp_path / "a.npz"), run(tmp_path / "b.npz", stop_at=19)
    np.testing.assert_array_equal(a.flat.data, b.flat.data)
    assert resumed["steps"] == 26 - 16
    assert resumed["loss"] == full["loss"][1:]


def _resume_mid_epoch_with_saved_sums(path, edit):
    """A 200-sample run stopped in epoch 1 after step 19 (checkpoint at step 16), its
    checkpoint's extra edited, then resumed; returns the resumed run's history."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 8)).astype(np.float32), rng.integers(0, 3, 200)
    kw = dict(epochs=2, batch_size=16, seed=3, checkpoint=path, checkpoint_every=4, progress=False)

    def build():
        fnn.manual_seed(0)
        model = fnn.Sequential(fnn.Dense(8, 16, activation="relu"), fnn.Dense(16, 3))
        return model, fnn.optim.SGD(model, lr=0.1, momentum=0.9)

    def stop(step, loss):
        if step == 19:
            raise KeyboardInterrupt
    full = fnn.train.fit(*build(), x, y, **{**kw, "checkpoint": None, "checkpoint_every": None})
    with pytest.raises(KeyboardInterrupt):
        fnn.train.fit(*build(), x, y, on_step=stop, **kw)
    _rewrite_meta(path, lambda m: edit(m["extra"]))
    return full, fnn.train.fit(*build(), x, y, resume=True, **kw)


def test_a_mid_epoch_resume_of_another_rank_count_keeps_the_epochs_loss(tmp_path):
    """Each rank's [loss sum, samples] of a checkpoint written by two ranks: resumed by one
    process, the saved part weighed half (each rank took the ranks' mean sum and samples)."""
    def as_two_ranks(extra):
        (total, samples), = extra["epoch_loss"]
        extra["epoch_loss"] = [[total * 0.25, samples / 2], [total * 0.75, samples / 2]]
    full, resumed = _resume_mid_epoch_with_saved_sums(tmp_path / "r.npz", as_two_ranks)
    assert resumed["loss"] == pytest.approx(full["loss"][1:], rel=1e-12)


def test_a_mid_epoch_resume_of_a_checkpoint_without_samples_ignores_its_step_sums(tmp_path):
    """A checkpoint written before fit kept "samples" holds [sum of steps' mean losses, steps]:
    added to sums over samples it skewed the resumed epoch's loss; now it is left out (the
    epoch's loss covers the steps after the resume)."""
    def old_format(total):
        def edit(extra):
            del extra["samples"]
            extra["epoch_loss"] = [[total, 3]]
        return edit
    losses = [_resume_mid_epoch_with_saved_sums(tmp_path / f"{t}.npz", old_format(t))[1]["loss"] for t in (0.5, 50.0)]
    assert losses[0] == losses[1]


def test_checkpoint_of_a_different_model_is_rejected_and_nothing_changes(tmp_path):
    a = fnn.Sequential(fnn.Dense(4, 3), fnn.Dense(3, 2))
    path = fnn.checkpoint.save(tmp_path / "a.npz", a, fnn.optim.Adam(a))
    b = fnn.Sequential(fnn.Dense(4, 5), fnn.Dense(5, 2))
    opt_b = fnn.optim.Adam(b, lr=0.5)
    before = b.flat.data.copy()
    with pytest.raises(ValueError, match=r"different model: it has 0.weight \(4, 3\), the model has 0.weight \(4, 5\)"):
        fnn.checkpoint.load(path, b, opt_b)
    np.testing.assert_array_equal(b.flat.data, before)
    c = fnn.Sequential(fnn.Dense(4, 3, dtype=np.float64), fnn.Dense(3, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="checkpoint is float32, model is float64"):
        fnn.checkpoint.load(path, c)


def test_failed_load_restores_everything(tmp_path):
    model = fnn.Sequential(fnn.Dense(4, 3))
    path = fnn.checkpoint.save(tmp_path / "m.npz", model, fnn.optim.SGD(model, momentum=0.9))
    target = fnn.Sequential(fnn.Dense(4, 3))
    opt = fnn.optim.Adam(target)  # wrong optimizer type for this checkpoint
    before = target.flat.data.copy()
    with pytest.raises(ValueError, match="expected a Adam state"):
        fnn.checkpoint.load(path, target, opt)
    np.testing.assert_array_equal(target.flat.data, before)


def test_a_checkpoint_keeps_an_lr_set_by_hand_and_a_refused_one_restores_it(tmp_path):
    """An lr edited between schedule steps lasts until the schedule's next step: load set it to the
    schedule's formula instead (the resumed run was not exact), and so did the rollback of a
    refused load."""
    def build(t_max=10):
        fnn.manual_seed(0)
        model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
        opt = fnn.optim.SGD(model, lr=0.1)
        return model, opt, fnn.schedules.Cosine(opt, t_max)

    model, opt, sched = build()
    model.flat.grad[:] = 1
    opt.step()
    sched.step()
    opt.param_groups[0]["lr"] = 0.5
    path = fnn.checkpoint.save(tmp_path / "lr.npz", model, opt, sched)
    _, opt2, sched2 = build()
    fnn.checkpoint.load(path, _, opt2, sched2)
    assert (opt2.param_groups[0]["lr"], sched2.t) == (0.5, 1)
    _, opt3, sched3 = build(t_max=20)
    opt3.param_groups[0]["lr"] = 0.25
    with pytest.raises(ValueError, match="expected one of Cosine"):
        fnn.checkpoint.load(path, _, opt3, sched3)
    assert (opt3.param_groups[0]["lr"], sched3.t) == (0.25, 0)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = fnn.Sequential(fnn.Dense(4, 3))
    path = fnn.checkpoint.save(tmp_path / "m.npz", model)
    good = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    model.flat.data[:] = 7
    with pytest.raises(OSError, match="disk full"):
        fnn.checkpoint.save(path, model)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.npz"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"not a readable fastnn checkpoint \(not an .npz \(zip\) archive\)$"):
        fnn.checkpoint.load(bad, fnn.Sequential(fnn.Dense(2, 2)))     # NumPy's hint was allow_pickle=True


def test_files_that_are_not_checkpoints_are_a_clear_error(tmp_path):
    model = fnn.Sequential(fnn.Dense(2, 2))
    np.save(tmp_path / "a.npy", np.zeros(3))
    np.savez(tmp_path / "b.npz", meta=np.frombuffer(b'{"format": "fastnn-checkpoint-1"}', np.uint8))
    np.savez(tmp_path / "c.npz", meta=np.frombuffer(b"[1, 2]", np.uint8))
    for name, match in (("a.npy", "not a readable fastnn checkpoint .a single .npy array"),
                        ("b.npz", "not a complete fastnn checkpoint: expected .'model', 'step'"),
                        ("c.npz", "expected format 'fastnn-checkpoint-1', got 'list'")):
        with pytest.raises(ValueError, match=match):
            fnn.checkpoint.load(tmp_path / name, model)


def test_a_refused_checkpoint_restores_an_optimizer_whose_momentum_came_later(tmp_path):
    model = fnn.Sequential(fnn.Dense(3, 2))
    opt = fnn.optim.SGD(model, lr=0.1, momentum=0.9)
    path = fnn.checkpoint.save(tmp_path / "r.npz", model, opt, fnn.schedules.Cosine(opt, T_max=10))
    other = fnn.Sequential(fnn.Dense(3, 2))
    opt2 = fnn.optim.SGD(other, lr=0.1)
    other.flat.grad[:] = 1.0
    opt2.step()
    opt2.param_groups[0]["momentum"] = 0.5       # its buffer comes at the next step
    sched2 = fnn.schedules.Step(opt2, 3)
    before = opt2.state_dict()
    with pytest.raises(ValueError, match="schedule state: saved by Cosine"):
        fnn.checkpoint.load(path, other, opt2, sched2)
    after = opt2.state_dict()
    assert after["step"] == 1 and after["param_groups"] == before["param_groups"] and after["state"] == {}


def test_damaged_checkpoint_names_its_path(tmp_path):
    model = fnn.Sequential(fnn.Dense(4, 3))
    path = fnn.checkpoint.save(tmp_path / "m.npz", model, fnn.optim.Adam(model))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF                      # one flipped byte inside a stored array
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{path}: not a readable fastnn checkpoint"):
        fnn.checkpoint.load(path, model)
    path.write_bytes(bytes(raw[:len(raw) // 2]))    # truncated
    with pytest.raises(ValueError, match=f"{path}: not a readable fastnn checkpoint"):
        fnn.checkpoint.load(path, model)


@pytest.mark.parametrize("damage, error", [
    ("compression method 99", "That compression method is not supported"),    # zipfile: NotImplementedError
    ("compression method 8", "while decompressing data"),                      # zlib.error
    ("encryption flag", "is encrypted"),                                        # zipfile: RuntimeError
])
def test_a_checkpoint_with_damaged_zip_headers_is_a_clear_error(tmp_path, damage, error):
    """A flipped bit in a zip header's compression method or flags escaped load as zipfile's
    NotImplementedError or RuntimeError, or zlib's error, instead of the ValueError that fit turns
    into a ResumeError and fastnn train into one line."""
    import struct

    model = fnn.Sequential(fnn.Dense(4, 3))
    path = fnn.checkpoint.save(tmp_path / "m.npz", model)
    raw = bytearray(path.read_bytes())
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")    # meta.npy's headers
    if damage.startswith("compression method"):
        method = struct.pack("<H", int(damage.split()[-1]))
        raw[local + 8:local + 10], raw[central + 10:central + 12] = method, method
        name, field = struct.unpack("<HH", raw[local + 26:local + 30])
        raw[local + 30 + name + field] = 0x07       # deflate's first block of the reserved type
    else:
        raw[local + 6] |= 1
        raw[central + 8] |= 1
    path.write_bytes(bytes(raw))
    for read in (lambda: fnn.checkpoint.load(path, model), lambda: fnn.checkpoint.read_meta(path)):
        with pytest.raises(ValueError, match=f"{path}: not a readable fastnn checkpoint .*{error}"):
            read()


def test_checkpoint_takes_numpy_hyperparameters_and_an_ordinary_file_mode(tmp_path):
    model = fnn.Sequential(fnn.Dense(4, 3))
    opt = fnn.optim.Adam(model, lr=np.float32(1e-3), betas=(np.float64(0.8), 0.9))
    path = fnn.checkpoint.save(tmp_path / "m.npz", model, opt)
    opt2 = fnn.optim.Adam(model)
    fnn.checkpoint.load(path, model, opt2)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3) and opt2.param_groups[0]["betas"] == (0.8, 0.9)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o600)                   # made private: a new save replaced it with a 0644 file
    fnn.checkpoint.save(path, model, opt)
    assert path.stat().st_mode & 0o777 == 0o600


def test_resume_with_another_batch_schedule_is_refused_before_anything_changes(tmp_path):
    x, y = fnn.data.load_digits()
    x, y = x[:96], y[:96]
    model = fnn.Sequential(fnn.Dense(64, 10))
    ck = tmp_path / "run.npz"
    fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), x, y, epochs=1, progress=False, checkpoint=ck,
                  batch_size=fnn.schedules.BatchSize(16, every_samples=32))
    fresh = fnn.Sequential(fnn.Dense(64, 10))
    before = fresh.flat.data.copy()
    for other, saved in [(fnn.schedules.BatchSize(8, every_samples=32), "BatchSize"), (32, "BatchSize")]:
        opt = fnn.optim.SGD(fresh, lr=0.1)
        with pytest.raises(ValueError, match=f"{ck}: saved with batch_size .*{saved}.*expected this run's"):
            fnn.train.fit(fresh, opt, x, y, epochs=2, progress=False, checkpoint=ck, resume=True, batch_size=other)
        np.testing.assert_array_equal(fresh.flat.data, before)
        assert opt.step_count == 0
    plain = tmp_path / "plain.npz"
    fnn.checkpoint.save(plain, fresh, fnn.optim.SGD(fresh))
    with pytest.raises(ValueError, match="expected a checkpoint written by fit"):
        fnn.train.fit(fresh, fnn.optim.SGD(fresh), x, y, epochs=1, progress=False, checkpoint=plain, resume=True)


def test_evaluate_and_fit_reject_empty_data():
    model = fnn.Sequential(fnn.Dense(2, 2))
    with pytest.raises(ValueError, match="empty"):
        fnn.train.evaluate(model, np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty"):
        fnn.train.fit(model, fnn.optim.SGD(model), np.zeros((0, 2), np.float32), np.zeros(0, np.int64),
                      epochs=1, progress=False)


def test_evaluate_refuses_targets_of_another_length():
    model = fnn.Sequential(fnn.Dense(4, 3))
    x = np.zeros((50, 4), np.float32)
    for batch_size in (10, 50, 1024):          # 10 and 50 used to ignore the 30 extra labels
        with pytest.raises(ValueError, match="x and y: expected the same number of samples, got 50 and 80"):
            fnn.train.evaluate(model, x, np.zeros(80, np.int64), batch_size=batch_size)
    with pytest.raises(TypeError, match="expected a y array of targets, got None"):
        fnn.train.evaluate(model, x, None)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epochs=2.5), TypeError, "fit: epochs: expected an int >= 0, got float 2.5"),
    (dict(epochs=-1), ValueError, "fit: epochs: expected an int >= 0, got -1"),
    (dict(epochs=True), TypeError, "fit: epochs: expected an int >= 0, got bool True"),
    (dict(checkpoint_every=2.5), TypeError, "fit: checkpoint_every: expected an int >= 1, got float 2.5"),
    (dict(checkpoint_every=0), ValueError, "fit: checkpoint_every: expected an int >= 1, got 0"),
    # without a checkpoint, resume=True trained from scratch and checkpoint_every saved nothing, in silence
    (dict(resume=True), ValueError, "fit: resume=True needs a checkpoint: expected a checkpoint path, got None"),
    (dict(checkpoint_every=5), ValueError, "fit: checkpoint_every=5 needs a checkpoint: expected a checkpoint path"),
    # "no" was taken as true
    (dict(resume="no"), TypeError, "fit: resume: expected True or False, got str 'no'"),
])
def test_fit_checks_epochs_checkpoint_every_and_resume(kwargs, error, match):
    model = fnn.Sequential(fnn.Dense(2, 2))
    before = model.flat.data.copy()
    with pytest.raises(error, match=match):
        fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), np.ones((10, 2), np.float32), np.zeros(10, np.int64),
                      **{"epochs": 1, **kwargs}, progress=False)
    np.testing.assert_array_equal(model.flat.data, before)


def test_cli_sizes_the_lr_schedule_for_a_growing_batch(tmp_path):
    """--grow-batch: the cosine ends at 0 on the last step the growing batch takes (80 steps
    of 32, 64, 128 over 3 epochs of 1437 samples), not after 3 x 45 steps of the first batch."""
    import json

    from fastnn.cli import main

    ck = tmp_path / "gb.npz"
    assert main(["train", "--epochs", "3", "--grow-batch", "128", "--schedule", "cosine", "--no-progress",
                 "--threads", "1", "--checkpoint", str(ck)]) == 0
    meta = json.loads(bytes(np.load(ck)["meta"]))
    assert meta["step"] == 80
    assert [g["lr"] for g in meta["optimizer"]["param_groups"]] == [0.0, 0.0]


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "argument --batch-size: expected an int >= 1, got '0'"),
    (["--epochs", "-1"], "argument --epochs: expected an int >= 0, got '-1'"),
    (["--lr", "nan"], "argument --lr: expected a finite number >= 0, got 'nan'"),
    (["--dropout", "1"], r"argument --dropout: expected a number in \[0, 1\), got '1'"),
    (["--grow-batch", "16"], "argument --grow-batch: expected a batch size >= --batch-size 32, got 16"),
    (["--threads", "1000"], "argument --threads: expected at most NUMBA_NUM_THREADS = "),
    (["--seed", "-1"], "argument --seed: expected an int >= 0, got '-1'"),
    (["--model", "cnn", "--hidden", "3"], "argument --hidden: sets the mlp's widths, got --model cnn"),
    (["--momentum", "0.5"], "argument --momentum: sets SGD's momentum, got --optimizer adam"),
    (["--checkpoint", "x{foo}.npz"], r"argument --checkpoint: expected a path whose only fields are \{data\} and "
                                     r"\{model\} \(bare: .*\), got \{foo\} in 'x\{foo\}.npz'"),
    (["--checkpoint", "x{.npz"], r"argument --checkpoint: .* got 'x\{.npz' \(ValueError"),
    # an attribute, index, conversion or format spec: an AttributeError traceback, or {model.upper}
    # a file named "<built-in method upper of str object at 0x...>"
    (["--checkpoint", "{data.x}"], r"argument --checkpoint: .* got \{data.x\} in '\{data.x\}'"),
    (["--checkpoint", "{model.upper}"], r"argument --checkpoint: .* got \{model.upper\} in"),
    (["--checkpoint", "c/{data[0]}-{model!r}.npz"], r"argument --checkpoint: .* got \{data\[0\]\} in"),
    (["--checkpoint", "{model!r}.npz"], r"argument --checkpoint: .* got \{model!r\} in"),
    (["--checkpoint", "{model:>9}.npz"], r"argument --checkpoint: .* got \{model:>9\} in"),
    (["--checkpoint", "{}.npz"], r"argument --checkpoint: .* got \{\} in"),
    (["--checkpoint", ""], "argument --checkpoint: expected a file path, got ''"),
])
def test_cli_train_refuses_bad_arguments(argv, message, capsys):
    from fastnn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fastnn train: error: argument ") and err.count("\n") == 1, err     # one line
    assert re.search(message, err)


def test_cli_train_refuses_a_folder_as_checkpoint_before_training(tmp_path, capsys):
    from fastnn.cli import main

    assert main(["train", "--checkpoint", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"fastnn train: --checkpoint: cannot write the checkpoint to {tmp_path}: it is a folder, " \
                  "expected a file path\n"


def test_fit_refuses_an_unwritable_checkpoint_before_the_first_step(tmp_path):
    model = fnn.Sequential(fnn.Dense(2, 2))
    before = model.flat.data.copy()
    x, y = np.ones((10, 2), np.float32), np.zeros(10, np.int64)
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), x, y, epochs=1, progress=False, checkpoint=tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="cannot write the checkpoint in .*file"):
        fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), x, y, epochs=1, progress=False,
                      checkpoint=tmp_path / "file" / "ck.npz")
    np.testing.assert_array_equal(model.flat.data, before)


def test_cli_diverging_run_stops_in_one_line_or_skips(tmp_path, capsys):
    from fastnn.cli import main

    # lr 1000 diverged only for some data orders (a huge but finite loss for others)
    argv = ["train", "--optimizer", "sgd", "--lr", "1e6", "--epochs", "1", "--no-progress",
            "--checkpoint", str(tmp_path / "d.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.match("fastnn train: (gradient has |fit: the loss is (nan|inf) )", err), err
    assert err.endswith("(here: --nonfinite skip; or lower --lr, or set --clip)\n")
    assert err.count("\n") == 1
    assert main([*argv, "--nonfinite", "skip"]) == 0
    assert re.search(r"samples/s .*\(45 steps, [1-9]\d* skipped\)", capsys.readouterr().out)


def test_cli_adamw_decays_the_weights_by_default_as_torch(tmp_path):
    import json

    from fastnn.cli import main

    for opt, want in (("adamw", 1e-2), ("adam", 0.0)):
        ck = tmp_path / f"{opt}.npz"
        assert main(["train", "--epochs", "1", "--optimizer", opt, "--no-progress", "--checkpoint", str(ck)]) == 0
        groups = json.loads(bytes(np.load(ck)["meta"]))["optimizer"]["param_groups"]
        assert [g["weight_decay"] for g in groups] == [want, 0.0]        # biases are kept out of decay


def test_cli_train_reports_missing_data_in_one_line(tmp_path, capsys, monkeypatch):
    from fastnn.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(tmp_path / "none"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastnn train: --data {tmp_path / 'none'}: no MNIST file found") and err.count("\n") == 1
    assert not (tmp_path / "checkpoints").exists()          # refused before anything is written


def test_cli_resume_refuses_other_settings(tmp_path, capsys):
    """--lr and --weight-decay on --resume used to be dropped silently (the checkpoint's won),
    and --dropout, --clip, --nonfinite and --batch-size changes were taken without a word."""
    from fastnn.cli import main

    ck = str(tmp_path / "m.npz")
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", ck]) == 0
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", ck + "-sgd", "--optimizer", "sgd"]) == 0
    capsys.readouterr()
    # named by the option, once (they read "initial_lr 0.002 -> 0.1 in group 0; initial_lr ... in group 1")
    for extra, changed in ((["--lr", "0.1"], "(--lr 0.002 -> 0.1)"),
                           (["--weight-decay", "0.1"], "(--weight-decay 0.0 -> 0.1)"),
                           (["--optimizer", "sgd", "--momentum", "0.5"], "(--momentum 0.9 -> 0.5)"),
                           # options that shape the trajectory outside the optimizer's state: accepted before
                           (["--dropout", "0.25"], "--dropout 0.0 -> 0.25"),
                           (["--clip", "1"], "--clip None -> 1.0"),
                           (["--nonfinite", "skip"], "--nonfinite 'raise' -> 'skip'"),
                           (["--batch-size", "16"], "--batch-size 32 -> 16")):
        path = ck + "-sgd" if "sgd" in extra else ck
        assert main(["train", "--epochs", "2", "--no-progress", "--resume", "--checkpoint", path, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fastnn train: --resume from {path}: it was trained with other settings (")
        assert changed in err and err.count("\n") == 1
    assert main(["train", "--epochs", "2", "--no-progress", "--resume", "--checkpoint", ck]) == 0


def test_cli_resume_from_a_checkpoint_fastnn_train_did_not_write(tmp_path, capsys):
    from fastnn.cli import main

    model = fnn.Sequential(fnn.Dense(64, 128, activation="relu"), fnn.Dense(128, 128, activation="relu"),
                           fnn.Dense(128, 10))
    fnn.checkpoint.save(tmp_path / "plain.npz", model, fnn.optim.Adam(model), step=0)
    assert main(["train", "--epochs", "1", "--no-progress", "--resume", "--checkpoint", str(tmp_path / "plain.npz")]) == 2
    err = capsys.readouterr().err
    assert "holds no schedule state" in err and "(it was not written by fastnn train)" in err
    assert "--schedule" not in err                                # no hint towards options that cannot help


def test_cli_train_interrupted_says_in_one_line_where_to_go_on(tmp_path, capsys, monkeypatch):
    """Ctrl-C printed a traceback, often ending inside the checkpoint's fsync, which left the
    user to wonder whether the file was whole."""
    import fastnn.cli as cli

    def interrupt():
        raise KeyboardInterrupt

    ck = str(tmp_path / "i.npz")
    args = ["train", "--no-progress", "--checkpoint", ck]
    monkeypatch.setattr(cli, "seconds_since_launch", interrupt)     # called at the first step
    assert cli.main([*args, "--epochs", "1"]) == 130
    assert capsys.readouterr().err == f"fastnn train: interrupted; no checkpoint to go on from at {ck}\n"
    monkeypatch.undo()
    assert cli.main([*args, "--epochs", "1"]) == 0
    monkeypatch.setattr(cli, "seconds_since_launch", interrupt)
    capsys.readouterr()
    assert cli.main([*args, "--epochs", "2", "--resume"]) == 130
    assert re.fullmatch(f"fastnn train: interrupted; {re.escape(ck)} holds step [1-9][0-9]*: go on from there "
                        "with --resume\n", capsys.readouterr().err)


def test_cli_train_zero_epochs_writes_and_claims_nothing(tmp_path, capsys):
    from fastnn.cli import main

    ck = tmp_path / "e0.npz"
    assert main(["train", "--epochs", "0", "--schedule", "exponential", "--no-progress", "--checkpoint", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "nothing to train  --epochs 0" in out and "checkpoint" not in out and not ck.exists()


@pytest.mark.parametrize("saved, expected", [
    ("constant", ["saved by Constant(), expected one of Cosine(", "pass the --schedule, --epochs"]),
    # the same --schedule with more --epochs was told only "it was trained with another lr schedule"
    ("cosine", ["a cosine schedule spans the run's --epochs, so a longer run needs a new --checkpoint"])])
def test_cli_resume_with_another_schedule_names_the_options(tmp_path, capsys, saved, expected):
    from fastnn.cli import main

    ck = str(tmp_path / "s.npz")
    assert main(["train", "--epochs", "1", "--schedule", saved, "--no-progress", "--checkpoint", ck]) == 0
    assert main(["train", "--epochs", "2", "--schedule", "cosine", "--no-progress", "--checkpoint", ck,
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert all(e in err for e in expected), err


def test_cli_train_and_resume(tmp_path):
    ck = tmp_path / "ck.npz"
    cmd = [sys.executable, "-m", "fastnn.cli", "train", "--epochs", "2", "--no-progress", "--threads", "1",
           "--checkpoint", str(ck)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout and "samples/s" in out.stdout and str(ck) in out.stdout
    assert ck.exists()
    again = subprocess.run(cmd[:5] + ["4"] + cmd[6:] + ["--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "(90 steps" in again.stdout  # epochs 3 and 4 only: 2 x ceil(1437 / 32)
    done = subprocess.run(cmd[:5] + ["4"] + cmd[6:] + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (f"nothing to train  {ck} has trained 4 epochs, --epochs 4 (pass --epochs above 4 to go on)" in done.stdout
            and "samples/s" not in done.stdout)
    fewer = subprocess.run(cmd[:5] + ["3"] + cmd[6:] + ["--resume"], capture_output=True, text=True, timeout=300)
    assert f"{ck} has trained 4 epochs, --epochs 3 (pass --epochs above 4" in fewer.stdout   # it said "reached 3"
    refused = subprocess.run(cmd + ["--resume", "--optimizer", "sgd"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"fastnn train: cannot resume from {ck}: optimizer state: expected a SGD "
                                      "state, got 'Adam'; train from scratch without --resume or give another "
                                      "--checkpoint")


def test_cli_train_help_shows_every_default(capsys):
    """argparse adds "(default: ...)" to an option's help only where it has one: --help did not
    say the defaults of --epochs, --lr, --batch-size, --model and others."""
    from fastnn.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())        # undo the line wrapping
    for option, default in (("--model", "mlp"), ("--dropout", "0.0"), ("--optimizer", "adam"), ("--lr", "0.002"),
                            ("--batch-size", "32"), ("--epochs", "30"), ("--seed", "0"), ("--dtype", "float32")):
        shown = re.search(f"{option} .*?\\(default: ([^)]*)\\)", text.split(" options: ")[1])   # the first after it
        assert shown.group(1) == default, option


def test_cli_info():
    out = subprocess.run([sys.executable, "-m", "fastnn.cli", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for key in ("CPU", "SIMD width", "caches", "cores", "numba", "MPI", "CUDA"):
        assert key in out.stdout


def test_cli_output_into_a_closed_pipe_ends_without_a_traceback():
    """`fastnn info | true` printed a BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run([sys.executable, "-m", "fastnn.cli", "info"], stdout=write, stderr=subprocess.PIPE,
                             text=True, timeout=120)
    finally:
        os.close(write)
    assert (out.returncode, out.stderr) == (1, "")


def test_cli_train_says_in_one_line_that_a_model_does_not_fit_in_memory(tmp_path, capsys):
    from fastnn.cli import main

    assert main(["train", "--hidden", str(10**9), str(10**9), "--checkpoint", str(tmp_path / "c.npz"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastnn train: --hidden {10**9} {10**9}: ") and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


def test_cli_trains_the_cnn_on_non_square_images_and_refuses_tiny_ones(tmp_path, capsys):
    from fastnn.cli import main

    rng = np.random.default_rng(0)
    for folder, (h, w) in (("wide", (6, 10)), ("tiny", (1, 1))):
        (tmp_path / folder).mkdir()
        for prefix, n in (("train", 40), ("t10k", 10)):
            labels = rng.integers(0, 3, n).astype(np.uint8)
            images = (rng.random((n, h, w)) * 60 + labels[:, None, None] * 60).astype(np.uint8)
            fnn.data.write_idx(tmp_path / folder / f"{prefix}-images-idx3-ubyte", images)
            fnn.data.write_idx(tmp_path / folder / f"{prefix}-labels-idx1-ubyte", labels)
    args = ["train", "--model", "cnn", "--epochs", "1", "--no-progress", "--checkpoint", str(tmp_path / "c.npz")]
    assert main([*args, "--data", str(tmp_path / "wide")]) == 0
    assert "test accuracy" in capsys.readouterr().out and (tmp_path / "c.npz").exists()
    assert main([*args, "--data", str(tmp_path / "tiny")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected images of at least 2x2 pixels (it pools by 2), got 1x1" in err


def test_cli_notes_classes_without_training_samples(tmp_path, capsys):
    """One damaged label (200) built a 201-output model without a word."""
    from fastnn.cli import main

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        labels = np.arange(n, dtype=np.uint8) % 3
        labels[0] = 200 if prefix == "train" else 0
        fnn.data.write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 4, 4), dtype=np.uint8))
        fnn.data.write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    assert main(["train", "--data", str(tmp_path), "--epochs", "1", "--no-progress",
                 "--checkpoint", str(tmp_path / "c.npz")]) == 0
    err = capsys.readouterr().err
    assert err == (f"fastnn train: note: --data {tmp_path}: labels go up to 200, so the model has 201 outputs, but "
                   "197 classes have no training sample (3, 4, 5, 6, 7, ...): a damaged label file?\n")


@pytest.mark.parametrize("shape, error, match", [
    ((8, 8), ValueError, r"expected image_shape a tuple \(height, width, channels\), got \(8, 8\)"),
    (64, TypeError, r"expected image_shape a tuple \(height, width, channels\), got 64"),
    ((8.0, 8, 1), TypeError, r"image_shape \(8.0, 8, 1\): expected an int >= 1, got float 8.0"),
])
@pytest.mark.parametrize("build", ["small_cnn", "small_resnet"])
def test_the_image_models_name_a_bad_image_shape(shape, error, match, build):
    """(8, 8) failed to unpack ("not enough values"), and a float side reached the locally
    connected layer, whose error named a shape (4.0, 4) that the caller never gave."""
    with pytest.raises(error, match=f"{build}: {match}"):
        getattr(fnn.models, build)(shape, 10)


@pytest.mark.parametrize("build", ["small_cnn", "small_resnet"])
def test_the_image_models_name_a_bad_class_count(build):
    """classes=0 was reported as the last Dense layer's out_features."""
    with pytest.raises(ValueError, match=f"{build}: classes: expected an int >= 1, got 0"):
        getattr(fnn.models, build)((8, 8, 1), 0)


def test_evaluate_accuracy_follows_the_targets():
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(4, 3))
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    labels = np.argmax(model(x), axis=1)
    labels[:10] = (labels[:10] + 1) % 3
    assert fnn.train.evaluate(model, x, labels, batch_size=7)[1] == pytest.approx(0.8)
    onehot = np.eye(3, dtype=np.float32)[labels]
    loss, acc = fnn.train.evaluate(model, x, onehot, loss=fnn.losses.mean_squared_error, batch_size=7)
    assert acc == pytest.approx(0.8) and loss == pytest.approx(fnn.losses.mean_squared_error(model(x), onehot)[0])
    small = fnn.Sequential(fnn.Dense(4, 1))
    assert np.isnan(fnn.train.evaluate(small, x, np.zeros((50, 1), np.float32), loss=fnn.losses.mean_squared_error)[1])
    for bad in (0, -1, 2.0, True):
        with pytest.raises((TypeError, ValueError), match="evaluate: batch_size: expected an int >= 1"):
            fnn.train.evaluate(model, x, labels, batch_size=bad)


def test_fit_refuses_a_bad_batch_size_before_touching_the_checkpoint(tmp_path):
    model, (xtr, _, ytr, _) = _digits_setup()
    opt = fnn.optim.SGD(model, lr=0.1)
    ck = tmp_path / "ck.npz"
    fnn.train.fit(model, opt, xtr[:64], ytr[:64], epochs=1, batch_size=32, checkpoint=ck, progress=False)
    before = model.flat.data.copy()
    model.flat.data[:] = 0
    with pytest.raises(ValueError, match="fit: batch_size: expected an int >= 1, got 0"):
        fnn.train.fit(model, opt, xtr, ytr, epochs=2, batch_size=0, checkpoint=ck, resume=True, progress=False)
    assert not model.flat.data.any() and not np.array_equal(before, model.flat.data)   # nothing was loaded


def _overflowing_model():
    """A float32 model whose logits overflow to +-inf on x = [1, 0] while every gradient stays
    finite: the loss is inf, dlogits is not."""
    model = fnn.Sequential(fnn.Dense(2, 2))
    model[0].params["weight"][...] = [[3e38, -3e38], [0, 0]]
    return model, np.array([[1, 0]] * 4, np.float32), np.array([1, 1, 1, 1])


def test_fit_raises_or_skips_on_an_infinite_loss_with_finite_gradients():
    model, x, y = _overflowing_model()
    before = model.flat.data.copy()
    opt = fnn.optim.SGD(model, lr=1e-3)
    with pytest.raises(FloatingPointError, match="fit: the loss is inf at step 1, expected a finite loss"):
        fnn.train.fit(model, opt, x, y, epochs=1, batch_size=4, progress=False)
    np.testing.assert_array_equal(model.flat.data, before)
    assert opt.step_count == 0
    opt = fnn.optim.SGD(model, lr=1e-3, nonfinite="skip")
    hist = fnn.train.fit(model, opt, x, y, epochs=1, batch_size=4, progress=False)
    assert hist["skipped"] == 1 and opt.skipped_steps == 1 and opt.step_count == 0
    np.testing.assert_array_equal(model.flat.data, before)
    opt = fnn.optim.SGD(model, lr=1e-3, nonfinite="ignore")    # as torch: the finite gradient is applied
    hist = fnn.train.fit(model, opt, x, y, epochs=1, batch_size=4, progress=False)
    assert hist["skipped"] == 0 and opt.step_count == 1 and np.all(np.isfinite(model.flat.data))


def test_resume_with_another_seed_is_refused(tmp_path):
    x, y = fnn.data.load_digits()
    x, y = x[:50], y[:50]
    model = fnn.Sequential(fnn.Dense(64, 10))
    ck = tmp_path / "run.npz"
    fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), x, y, epochs=1, batch_size=8, progress=False,
                  checkpoint=ck, checkpoint_every=3, seed=0)
    before = model.flat.data.copy()
    opt = fnn.optim.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match=f"{ck}: saved by a run with seed=0, expected this run's seed=1"):
        fnn.train.fit(model, opt, x, y, epochs=2, batch_size=8, progress=False, checkpoint=ck, resume=True, seed=1)
    np.testing.assert_array_equal(model.flat.data, before)
    assert opt.step_count == 0


def test_resume_over_another_number_of_samples_is_refused(tmp_path):
    """The data position (epoch, sample) is a place in the permutation of that many samples: a
    checkpoint of 50 samples continued over 40 without a word, on another order of batches."""
    x, y = fnn.data.load_digits()
    model = fnn.Sequential(fnn.Dense(64, 10))
    ck = tmp_path / "run.npz"
    fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), x[:50], y[:50], epochs=1, batch_size=8, progress=False,
                  checkpoint=ck)
    before = model.flat.data.copy()
    opt = fnn.optim.SGD(model, lr=0.1)
    with pytest.raises(fnn.checkpoint.ResumeError, match=f"{ck}: saved by a run over 50 samples, expected this "
                                                         "run's 40"):
        fnn.train.fit(model, opt, x[:40], y[:40], epochs=2, batch_size=8, progress=False, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(model.flat.data, before)
    assert opt.step_count == 0


def _rewrite_meta(path, edit):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["meta"].tobytes())
    edit(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(global_rng={"bit_generator": "PCG64", "state": "garbage"}), "malformed checkpoint"),
    (lambda m: m.update(model=3), "malformed model signature"),
    (lambda m: m["model"].update(params=[["0.weight"]]), "malformed model signature"),
    (lambda m: m.update(rng=None), "malformed checkpoint: expected rng a dict, got None"),     # was a TypeError
    (lambda m: m.update(extra=5), "malformed checkpoint: expected extra a dict, got 5")])    # was loaded
def test_a_malformed_checkpoint_loads_nothing(tmp_path, edit, match):
    model = fnn.Sequential(fnn.Dense(4, 3))
    opt = fnn.optim.Adam(model, lr=0.5)
    path = fnn.checkpoint.save(tmp_path / "m.npz", model, opt)
    _rewrite_meta(path, edit)
    target = fnn.Sequential(fnn.Dense(4, 3))
    opt2 = fnn.optim.Adam(target, lr=0.1)
    before, rng = target.flat.data.copy(), fnn.random.generator().bit_generator.state
    with pytest.raises(ValueError, match=f"{path}: {match}"):
        fnn.checkpoint.load(path, target, opt2)
    np.testing.assert_array_equal(target.flat.data, before)
    assert opt2.param_groups[0]["lr"] == 0.1 and fnn.random.generator().bit_generator.state == rng


def test_a_malformed_generator_state_is_refused_before_the_optimizer_changes(tmp_path):
    """A damaged Dropout generator state was found after the optimizer had taken the file's
    groups, leaving a schedule's initial_lr behind in a fresh optimizer."""
    model = fnn.Sequential(fnn.Dense(4, 3), fnn.Dropout(0.5))
    opt = fnn.optim.SGD(model, lr=0.5)
    path = fnn.checkpoint.save(tmp_path / "m.npz", model, opt, fnn.schedules.Cosine(opt, T_max=10))
    _rewrite_meta(path, lambda m: m["rng"].update({"1": "garbage"}))
    target = fnn.Sequential(fnn.Dense(4, 3), fnn.Dropout(0.5))
    opt2 = fnn.optim.SGD(target, lr=0.01)
    groups = copy.deepcopy(opt2.param_groups)
    with pytest.raises(ValueError, match=f"{path}: malformed checkpoint: random generator 1: expected a PCG64 state"):
        fnn.checkpoint.load(path, target, opt2)
    assert opt2.param_groups == groups


def test_cli_without_scikit_learn_says_what_to_install(tmp_path, capsys, monkeypatch):
    from fastnn.cli import main

    monkeypatch.setitem(sys.modules, "sklearn", None)          # fastnn[data] not installed
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err == "fastnn train: --data digits: load_digits needs scikit-learn's bundled data: pip install " \
                  "fastnn[data]\n"


def test_a_one_step_run_reports_no_rate(tmp_path, capsys):
    from fastnn.cli import main

    assert main(["train", "--epochs", "1", "--batch-size", "4096", "--no-progress",
                 "--checkpoint", str(tmp_path / "one.npz")]) == 0
    out = capsys.readouterr().out
    assert "samples/s         n/a (the first step, which loads the kernels, is not timed) (1 steps, 0 skipped)" in out


def _accumulating_run(path, *, stop=None, resume=False, every=3, batch=8, nan_at=None):
    """Two epochs of 45 samples, 2 micro-batches per step, on a one-process DataParallel."""
    x, y = np.random.default_rng(1).standard_normal((45, 5)), np.random.default_rng(2).integers(0, 3, 45)
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(5, 16, activation="relu", dtype=np.float64), fnn.Dense(16, 3, dtype=np.float64))
    opt = fnn.distributed.DataParallel(model, fnn.optim.Adam(model, lr=0.05, nonfinite="skip"), accumulate_steps=2)
    losses = []

    def on_step(step, loss):
        losses.append(loss)
        if step == stop:
            raise KeyboardInterrupt

    def loss(out, yb):
        value, d = fnn.losses.softmax_cross_entropy(out, yb)
        if len(losses) + 1 == nan_at:
            d[0, 0] = np.nan
        return value, d
    try:
        hist = fnn.train.fit(model, opt, x, y, epochs=2, batch_size=batch, progress=False, checkpoint=path,
                             checkpoint_every=every, resume=resume, on_step=on_step, loss=loss)
    except KeyboardInterrupt:
        hist = None
    return model.flat.data.copy(), opt, hist, losses


@pytest.mark.parametrize("every, batch, stop", [(3, 8, 5), (None, 7, 9), (3, 8, 9)])
def test_resume_with_accumulated_steps_equals_uninterrupted(tmp_path, every, batch, stop):
    """A checkpoint due between the micro-batches of an accumulated step (every 3 micro-batches
    with 2 per step; an epoch of 7 batches) lacked their summed gradient: the resumed run
    differed by 0.11, or took 10 optimizer steps instead of 11. It now waits for the step's end
    (micro-batch 4 and 8 here: the runs stop after it is written)."""
    full, full_opt, _, _ = _accumulating_run(tmp_path / "a.npz", every=every, batch=batch)
    _, _, stopped, _ = _accumulating_run(tmp_path / "b.npz", stop=stop, every=every, batch=batch)
    assert stopped is None and (tmp_path / "b.npz").exists()
    resumed, resumed_opt, hist, _ = _accumulating_run(tmp_path / "b.npz", resume=True, every=every, batch=batch)
    assert 0 < hist["steps"] < 2 * -(-45 // batch)          # resumed mid-run, not trained from scratch
    np.testing.assert_array_equal(resumed, full)
    assert resumed_opt.step_count == full_opt.step_count


def test_history_with_accumulated_steps_counts_every_micro_batch(tmp_path):
    """The epoch's loss averaged only each step's last micro-batch, and a skipped step's next
    micro-batch was counted as skipped too. Now every micro-batch of a taken step counts, and
    the skipped step's (the first two, a NaN gradient in the first) count as one skip."""
    _, opt, hist, losses = _accumulating_run(None, every=None, nan_at=1)
    assert opt.skipped_steps == 1 and hist["skipped"] == 1
    per_epoch = -(-45 // 8)          # 6: three whole steps an epoch, the last micro-batch of 5 samples
    sizes = [8] * 5 + [5]
    np.testing.assert_allclose(hist["loss"], [np.average(losses[2:per_epoch], weights=sizes[2:]),
                                              np.average(losses[per_epoch:], weights=sizes)], rtol=1e-12)


def test_checkpoint_with_params_of_another_size_is_refused(tmp_path):
    model = fnn.Sequential(fnn.Dense(5, 8, activation="relu"), fnn.Dense(8, 3))
    opt = fnn.optim.Adam(model, lr=0.01)
    fnn.checkpoint.save(tmp_path / "c.npz", model, opt)
    saved = dict(np.load(tmp_path / "c.npz"))
    before = model.flat.data.copy()
    for params in (saved["params"][:1], saved["params"].astype(np.int64)):      # was broadcast / cast in
        np.savez(tmp_path / "bad.npz", **{**saved, "params": params})
        with pytest.raises(ValueError, match=r"expected params of float32\(\d+,\) .* got "):
            fnn.checkpoint.load(tmp_path / "bad.npz", model, opt)
        np.testing.assert_array_equal(model.flat.data, before)


@pytest.mark.parametrize("key, value, match", [
    ("sample", 2000, r"expected the data position's sample an int in 0..45 \(the samples in this data set\), got 2000"),
    ("epoch", "x", "expected the data position's epoch an int >= 0, got 'x'")])
def test_resume_from_a_position_outside_the_data_is_refused_before_loading(tmp_path, key, value, match):
    _accumulating_run(tmp_path / "c.npz", every=None)
    meta, arrays = fnn.checkpoint.read_meta(tmp_path / "c.npz"), dict(np.load(tmp_path / "c.npz"))
    del arrays["meta"]
    meta["extra"][key] = value
    np.savez(tmp_path / "c.npz", meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    with pytest.raises(fnn.checkpoint.ResumeError, match=match):
        _accumulating_run(tmp_path / "c.npz", every=None, resume=True)


def test_allreduce_mean_refuses_what_is_not_numbers():
    np.testing.assert_array_equal(fnn.distributed.allreduce_mean([1, 2.5]), [1.0, 2.5])
    for bad in (None, "1.0", [[1.0], [2.0]]):
        with pytest.raises(TypeError, match="allreduce_mean: expected a number or a 1-D sequence of numbers"):
            fnn.distributed.allreduce_mean(bad)


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_checkpoint_never_replaces_a_device_or_fifo(tmp_path, kind):
    """check_file_target refused folders only, and atomic_write's rename turned a device such as
    /dev/null (as root) or a FIFO into a regular file. A FIFO and a socket stand in for devices
    (one stat check refuses every kind that is not a regular file; making a device needs root)."""
    import socket
    import stat

    from fastnn.files import check_file_target

    target = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(target)
        test, name = stat.S_ISFIFO, "a FIFO"
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
        server.close()                          # the socket file stays
        test, name = stat.S_ISSOCK, "a socket"
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    model = fnn.Sequential(fnn.Dense(2, 2))
    for path in (target, link):
        with pytest.raises(OSError, match=f"cannot write the checkpoint to {path}: it is {name}.*expected a "
                                          "regular file"):
            check_file_target(path, "the checkpoint")
        with pytest.raises(OSError, match=f"cannot write {path}: it is {name}"):
            fnn.checkpoint.save(path, model)
        with pytest.raises(OSError, match=f"it is {name}"):
            fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), np.ones((4, 2), np.float32), np.zeros(4, np.int64),
                          epochs=1, progress=False, checkpoint=path)
    assert test(os.stat(target).st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kind, "link.npz"])   # no temporary file left


def test_a_checkpoint_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    model = fnn.Sequential(fnn.Dense(2, 2))
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "ck.npz", tmp_path / "ck.npz"
    link.symlink_to(target)                                  # dangling: the first save creates the target
    for value in (1.0, 2.0):
        model.flat.data[:] = value
        assert fnn.checkpoint.save(link, model) == link
        assert link.is_symlink() and os.readlink(link) == str(target) and target.is_file()
        fnn.checkpoint.load(target, model)
        assert (model.flat.data == value).all()
    assert os.listdir(tmp_path / "real") == ["ck.npz"] and sorted(os.listdir(tmp_path)) == ["ck.npz", "real"]


def test_a_checkpoint_that_cannot_be_created_names_the_path_asked_for(tmp_path):
    """The error named the hidden temporary file ('.ck.npz.<pid>.<hex>.tmp') or only the folder."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "ck.npz"
    with pytest.raises(FileExistsError, match=f"cannot write {path} in {tmp_path / 'file'} \\(File exists\\)"):
        fnn.checkpoint.save(path, fnn.Sequential(fnn.Dense(2, 2)))
    assert os.listdir(tmp_path) == ["file"]


def test_a_checkpoint_with_a_long_file_name_is_written(tmp_path):
    """The temporary file's name added about 30 bytes to the target's: a 250-byte name (the
    limit is 255) failed with "File name too long"."""
    model = fnn.Sequential(fnn.Dense(2, 2))
    path = tmp_path / ("\u00e9" * 123 + ".npz")      # 250 bytes in UTF-8
    fnn.checkpoint.save(path, model)
    fnn.checkpoint.load(path, model)
    assert os.listdir(tmp_path) == [path.name]


def test_a_checkpoint_path_ending_in_a_separator_is_refused(tmp_path, capsys):
    """pathlib dropped the trailing "/" of --checkpoint dir/: a file "dir" was written, which
    --resume with the same path never found (os.path.exists("dir/") is False for a file), so
    the resumed run trained from scratch over it."""
    from fastnn.cli import main

    path = f"{tmp_path}/ck{os.sep}"
    model = fnn.Sequential(fnn.Dense(2, 2))
    with pytest.raises(IsADirectoryError, match=f"cannot write {re.escape(path)}: it ends in .*expected a file path"):
        fnn.checkpoint.save(path, model)
    assert main(["train", "--checkpoint", path, "--epochs", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"fastnn train: --checkpoint: cannot write the checkpoint to {path}: it ends "
                                       f"in '{os.sep}', a folder's path, expected a file path\n")
    assert os.listdir(tmp_path) == []


def _batch_size_run(path, batch_size, *, stop=None, resume=False, settings=None):
    """A small run that checkpoints every 3 steps; returns (model, optimizer), or raises."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 2, 40)
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(4, 8), fnn.Dropout(0.5), fnn.Dense(8, 2))
    opt = fnn.optim.SGD(model, lr=0.1, momentum=0.9)

    def on_step(step, loss):
        if step == stop:
            raise KeyboardInterrupt
    try:
        fnn.train.fit(model, opt, x, y, epochs=2, batch_size=batch_size, checkpoint=path, checkpoint_every=3,
                      resume=resume, progress=False, on_step=on_step, settings=settings)
    except KeyboardInterrupt:
        pass
    return model, opt


@pytest.mark.parametrize("key, value, match", [
    ("batch_size_schedule", lambda s: {**s, "samples_seen": -1}, "malformed batch-size schedule state .*samples_seen"),
    ("batch_size_schedule", lambda s: {**s, "lr_batch": "4"}, "malformed batch-size schedule state .*lr_batch"),
    ("batch_size_schedule", lambda s: [s], "expected the batch-size schedule's state a dict or null"),
    ("epoch_loss", lambda s: [["x", 3]], r"expected epoch_loss a list of \[loss sum, samples >= 0\] per rank"),
    ("epoch_loss", lambda s: [[1.0, -3]], r"expected epoch_loss a list"),
    ("rank_rngs", lambda s: [{"model": {}, "global": {}}], "expected rank_rngs a list of each rank's generator"),
    ("rank_rngs", lambda s: [{"model": {"1": {"bit_generator": "PCG64", "state": 3}}, "global": {}}],
     "rank_rngs: expected a PCG64 state, got a malformed one"),
])
def test_a_malformed_resume_state_is_refused_before_anything_is_loaded(tmp_path, key, value, match):
    """A bad batch-size schedule state was found only after the model and optimizer were
    loaded (then a plain ValueError); loss sums and per-rank generators were not checked."""
    path = tmp_path / "m.npz"
    _batch_size_run(path, fnn.schedules.BatchSize(4, every_samples=20), stop=4)
    _rewrite_meta(path, lambda m: m["extra"].update({key: value(m["extra"][key])}))
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(4, 8), fnn.Dropout(0.5), fnn.Dense(8, 2))
    opt = fnn.optim.SGD(model, lr=0.1, momentum=0.9)
    schedule = fnn.schedules.BatchSize(4, every_samples=20)
    before = model.flat.data.copy(), fnn.random.generator().bit_generator.state
    x, y = np.ones((40, 4), np.float32), np.zeros(40, np.int64)
    with pytest.raises(fnn.checkpoint.ResumeError, match=f"cannot resume from {path}: {path}: {match}"):
        fnn.train.fit(model, opt, x, y, epochs=2, batch_size=schedule, checkpoint=path, resume=True, progress=False)
    np.testing.assert_array_equal(model.flat.data, before[0])
    assert opt.step_count == 0 and not opt.state["momentum_buffer"].any() and schedule.samples_seen == 0
    assert fnn.random.generator().bit_generator.state == before[1]


def test_resume_with_another_fixed_batch_size_or_settings_is_refused(tmp_path):
    """fit(batch_size=8) checkpointed, resumed with batch_size=5: it went on without a word."""
    path = tmp_path / "bs.npz"
    _batch_size_run(path, 8, stop=4, settings={"dropout": 0.5, "betas": (0.9, 0.99)})
    for batch, settings, match in ((5, None, "saved by a run with batch_size=8, expected this run's batch_size=5"),
                                   (8, {"dropout": 0.25}, r"saved by a run with other settings \(dropout 0.5 -> "
                                                          r"0.25\)")):
        with pytest.raises(fnn.checkpoint.ResumeError, match=f"cannot resume from {path}: {path}: {match}"):
            _batch_size_run(path, batch, resume=True, settings=settings)
    full, _ = _batch_size_run(tmp_path / "full.npz", 8)
    resumed, _ = _batch_size_run(path, 8, resume=True, settings={"betas": [0.9, 0.99], "new": 1})   # tuples as saved
    np.testing.assert_array_equal(resumed.flat.data, full.flat.data)
    _rewrite_meta(path, lambda m: m["extra"].pop("batch_size"))      # a checkpoint from before it was saved
    _batch_size_run(path, 5, resume=True)


@pytest.mark.parametrize("step, error, match", [
    (-1, ValueError, "step: expected an int >= 0, got -1"),
    (1.7, TypeError, "step: expected an int >= 0, got float 1.7"),
    (True, TypeError, "step: expected an int >= 0, got bool True")])
def test_checkpoint_save_refuses_a_step_load_would_refuse(tmp_path, step, error, match):
    """save wrote step=-1 (and 1.7 as 1), which load then refused."""
    model = fnn.Sequential(fnn.Dense(2, 2))
    with pytest.raises(error, match=match):
        fnn.checkpoint.save(tmp_path / "s.npz", model, step=step)
    assert os.listdir(tmp_path) == []
    fnn.checkpoint.save(tmp_path / "s.npz", model, step=np.int64(3))
    assert fnn.checkpoint.load(tmp_path / "s.npz", model)["step"] == 3


def _small_fit_setup(seed=0):
    x, y = np.random.default_rng(1).standard_normal((103, 5)), np.random.default_rng(2).integers(0, 3, 103)
    fnn.manual_seed(seed)
    model = fnn.Sequential(fnn.Dense(5, 16, activation="relu", dtype=np.float64), fnn.Dropout(0.3, seed=4),
                           fnn.Dense(16, 3, dtype=np.float64))
    return model, fnn.optim.SGD(model, lr=0.05, momentum=0.9), x, y


def test_fit_loss_is_the_mean_over_samples_as_keras_reports_it():
    """103 samples in batches of 32: the last batch of 7 counted as much as a whole one."""
    model, opt, x, y = _small_fit_setup()
    values = []
    hist = fnn.train.fit(model, opt, x, y, epochs=1, batch_size=32, progress=False,
                         on_step=lambda step, value: values.append(value))
    assert hist["loss"][0] == pytest.approx(np.average(values, weights=[32, 32, 32, 7]), rel=1e-12)
    assert hist["loss"][0] != pytest.approx(np.mean(values), rel=1e-6)


def test_fit_validation_data_and_initial_epoch_continue_as_one_run():
    """Calling fit once an epoch (the Keras way to validate in between) repeated epoch 0's
    order every time; initial_epoch continues the count, and validation_data reports each epoch."""
    whole, opt, x, y = _small_fit_setup()
    xv, yv = x[:20], y[:20]
    hist = fnn.train.fit(whole, opt, x, y, epochs=3, batch_size=16, progress=False, validation_data=(xv, yv))
    model, opt, _, _ = _small_fit_setup()
    parts = [fnn.train.fit(model, opt, x, y, epochs=e + 1, initial_epoch=e, batch_size=16, progress=False)
             for e in range(3)]
    np.testing.assert_array_equal(model.flat.data, whole.flat.data)
    assert [p["loss"][0] for p in parts] == hist["loss"]
    assert len(hist["val_loss"]) == len(hist["val_accuracy"]) == 3
    assert (hist["val_loss"][-1], hist["val_accuracy"][-1]) == fnn.train.evaluate(whole, xv, yv)
    assert whole.training                                     # fit leaves the model training, as torch


def test_predict_runs_in_eval_mode_and_restores_the_mode():
    model, _, x, _ = _small_fit_setup()
    out = fnn.train.predict(model, x, batch_size=10)          # dropout off, batch by batch
    model.eval()
    np.testing.assert_array_equal(out, model(x))
    model.train()
    np.testing.assert_array_equal(fnn.train.predict(model, x), out)
    assert model.training


def test_evaluate_of_a_one_output_model_gives_no_class_accuracy():
    """argmax over one column is always 0: it reported the fraction of label 0 as accuracy."""
    model = fnn.Sequential(fnn.Dense(2, 1, dtype=np.float64))
    x, y = np.random.default_rng(0).standard_normal((50, 2)), np.arange(50) % 2
    loss = lambda out, yb: fnn.losses.mean_squared_error(out, yb[:, None].astype(out.dtype))  # noqa: E731
    assert np.isnan(fnn.train.evaluate(model, x, y, loss=loss)[1])


def test_fit_trains_on_one_hot_targets():
    model, opt, x, y = _small_fit_setup()
    hist = fnn.train.fit(model, opt, x, np.eye(3)[y], epochs=3, batch_size=16, progress=False)
    model2, opt2, _, _ = _small_fit_setup()
    hist2 = fnn.train.fit(model2, opt2, x, y, epochs=3, batch_size=16, progress=False)
    np.testing.assert_allclose(hist["loss"], hist2["loss"], rtol=1e-12)
    np.testing.assert_allclose(model.flat.data, model2.flat.data, rtol=1e-10, atol=1e-13)
    assert fnn.train.evaluate(model, x, np.eye(3)[y]) == pytest.approx(fnn.train.evaluate(model, x, y))


@pytest.mark.parametrize("change, error, match", [
    (dict(loss="mse"), TypeError, r"fit: loss: expected a function .* got str 'mse'"),
    (dict(optimizer="adam"), TypeError, r"fit: optimizer: expected a fastnn optimizer .* got str 'adam'"),
    (dict(optimizer="other"), ValueError, "the optimizer updates another model's parameters"),
    (dict(validation_data=[1, 2]), TypeError, r"validation_data: expected a tuple \(x_val, y_val\), got list"),
    (dict(validation_data=(1,)), TypeError, r"validation_data: expected a tuple \(x_val, y_val\), got a tuple of 1"),
    (dict(initial_epoch=-1), ValueError, "initial_epoch: expected an int >= 0"),
    # a schedule of another optimizer left this run's lr alone and changed the other's; a float
    # failed after the first step; bad validation data after a whole epoch; y=None in the loss
    (dict(schedule="other"), ValueError, "fit: the schedule sets another optimizer's learning rate"),
    (dict(schedule=0.5), TypeError, r"fit: schedule: expected a fastnn.schedules schedule .* got float 0.5"),
    (dict(schedule="part"), ValueError, r"fit: schedule: Warmup\(.*\) is part of Sequential\(.*\); pass that"),
    (dict(validation_data="float32"), TypeError,
     "fit: validation_data: Dense input: expected dtype float64, got float32"),
    (dict(validation_data="labels"), ValueError, "fit: validation_data: softmax_cross_entropy labels"),
    (dict(y=None), TypeError, "fit: expected a y array of targets for softmax_cross_entropy, got None"),
])
def test_fit_refuses_what_would_train_nothing_before_any_step(change, error, match):
    model, opt, x, y = _small_fit_setup()
    if change.get("optimizer") == "other":      # made from a model built the same way: a build() helper's slip
        change["optimizer"] = _small_fit_setup()[1]
    if change.get("schedule") == "other":
        change["schedule"] = fnn.schedules.InverseTime(_small_fit_setup()[1], 10)
    if change.get("schedule") == "part":        # the warm-up passed instead of the schedule it is part of
        change["schedule"] = warm = fnn.schedules.Warmup(opt, 5)
        fnn.schedules.Sequential(opt, [warm, fnn.schedules.Cosine(opt, 50)], [5])
    if change.get("validation_data") == "float32":
        change["validation_data"] = (x[:10].astype(np.float32), y[:10])
    if change.get("validation_data") == "labels":
        change["validation_data"] = (x[:10], y[:10] + 3)
    if "y" in change:
        y = change.pop("y")
    kwargs = dict(dict(optimizer=opt, epochs=1, progress=False), **change)
    before = model.flat.data.copy()
    with pytest.raises(error, match=match):
        fnn.train.fit(model, x=x, y=y, **kwargs)
    np.testing.assert_array_equal(model.flat.data, before)
    assert not model.flat.grad.any()


def test_resume_restores_batchnorm_running_statistics(tmp_path):
    """The checkpoint holds the buffers: a run stopped after step 7 and resumed from its step-5
    checkpoint ends with the uninterrupted run's parameters and running statistics, bitwise."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((120, 6)), rng.integers(0, 3, 120)

    class Stop(Exception):
        pass

    def build():
        fnn.manual_seed(0)
        model = fnn.Sequential(fnn.Dense(6, 8, dtype=np.float64), fnn.BatchNorm(8, dtype=np.float64), fnn.ReLU(),
                               fnn.Dense(8, 3, dtype=np.float64))
        return model, fnn.optim.SGD(model, lr=0.1, momentum=0.9)

    def run(path, stop_at=None):
        def on_step(step, loss):
            if step == stop_at:
                raise Stop

        kw = dict(epochs=3, batch_size=16, seed=1, checkpoint=path, checkpoint_every=5, progress=False)
        model, opt = build()
        try:
            fnn.train.fit(model, opt, x, y, on_step=on_step, **kw)
        except Stop:
            model, opt = build()
            fnn.train.fit(model, opt, x, y, resume=True, **kw)
        return model.state_dict()

    full, resumed = run(tmp_path / "a.npz"), run(tmp_path / "b.npz", stop_at=7)
    assert int(full["1.num_batches_tracked"]) == 24
    for name in full:
        np.testing.assert_array_equal(full[name], resumed[name], err_msg=name)


def test_a_frozen_batchnorm_stays_frozen_through_evaluate_predict_and_fit():
    """torch's fine-tuning idiom, model.train() then a BatchNorm's eval(): evaluate and predict
    restored the whole model to training mode, and fit unfroze the layer and moved its statistics."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 4)), rng.integers(0, 3, 64)
    model = fnn.Sequential(fnn.Dense(4, 6, dtype=np.float64), fnn.BatchNorm(6, dtype=np.float64),
                           fnn.Dense(6, 3, dtype=np.float64))
    model.train()
    model[1].eval()
    stats = {n: b.copy() for n, b in model.named_buffers()}
    fnn.train.evaluate(model, x, y)
    fnn.train.predict(model, x)
    assert [m.training for _, m in model.modules()] == [True, True, False, True]
    fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), x, y, epochs=1, batch_size=16, progress=False)
    assert [m.training for _, m in model.modules()] == [True, True, False, True]
    for n, b in model.named_buffers():
        np.testing.assert_array_equal(b, stats[n], err_msg=n)
    model.eval()
    fnn.train.fit(model, fnn.optim.SGD(model, lr=0.1), x, y, epochs=1, batch_size=16, progress=False)
    assert all(m.training for _, m in model.modules())       # a model in eval mode trains in training mode


def test_fit_drop_last_skips_the_short_batch_batchnorm_cannot_train_on(tmp_path):
    """103 samples in batches of 34 leave a batch of one, on which BatchNorm raised mid-epoch:
    drop_last=True takes the steps that batches(drop_last=True) gives, and resume checks it."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((103, 6)), rng.integers(0, 3, 103)

    def build():
        fnn.manual_seed(0)
        model = fnn.Sequential(fnn.Dense(6, 8, dtype=np.float64), fnn.BatchNorm(8, dtype=np.float64), fnn.ReLU(),
                               fnn.Dense(8, 3, dtype=np.float64))
        return model, fnn.optim.SGD(model, lr=0.1, momentum=0.9)

    with pytest.raises(ValueError, match="BatchNorm layer '1' cannot train on one value per channel"):
        fnn.train.fit(*build(), x, y, epochs=1, batch_size=34, progress=False)   # now before training
    path = tmp_path / "d.npz"
    model, opt = build()
    hist = fnn.train.fit(model, opt, x, y, epochs=2, batch_size=34, drop_last=True, seed=3, checkpoint=path,
                         progress=False)
    assert (hist["steps"], hist["samples"]) == (6, 204)
    ref, ref_opt = build()
    for epoch in range(2):
        for xb, yb in fnn.data.batches(x, y, 34, seed=3, epoch=epoch, drop_last=True):
            ref.backward(fnn.losses.softmax_cross_entropy(ref(xb), yb)[1])
            ref_opt.step()
            ref_opt.zero_grad()
    np.testing.assert_array_equal(model.flat.data, ref.flat.data)
    with pytest.raises(fnn.checkpoint.ResumeError, match="saved by a run with drop_last=True, expected this run's "
                                                          "drop_last=False"):
        model, opt = build()
        model[1].eval()             # frozen: the short batch of one is no BatchNorm's concern
        fnn.train.fit(model, opt, x, y, epochs=3, batch_size=34, seed=3, checkpoint=path, resume=True,
                      progress=False)
    with pytest.raises(ValueError, match=r"drop_last=True with batch_size=104 drops every batch of the 103 "
                                         r"samples: expected a batch_size <= 103"):
        fnn.train.fit(*build(), x, y, batch_size=104, drop_last=True, progress=False)
    _rewrite_meta(path, lambda m: m["extra"].pop("drop_last"))      # a checkpoint from before it was saved
    with pytest.raises(fnn.checkpoint.ResumeError, match="saved by a run with drop_last=False, expected this run's "
                                                          "drop_last=True"):
        fnn.train.fit(*build(), x, y, epochs=3, batch_size=34, drop_last=True, seed=3, checkpoint=path, resume=True,
                      progress=False)


def test_resume_without_the_schedule_the_checkpoint_holds_is_refused(tmp_path):
    """It went on at the last lr, frozen: another trajectory than the uninterrupted run's."""
    model, opt, x, y = _small_fit_setup()
    path = tmp_path / "s.npz"
    fnn.train.fit(model, opt, x, y, epochs=1, batch_size=32, checkpoint=path, progress=False,
                  schedule=fnn.schedules.InverseTime(opt, decay_steps=2))
    model, opt, x, y = _small_fit_setup()
    before = model.flat.data.copy()
    with pytest.raises(fnn.checkpoint.ResumeError, match=f"{path}: holds an lr schedule's state, but no schedule "
                                                          "was given"):
        fnn.train.fit(model, opt, x, y, epochs=2, batch_size=32, checkpoint=path, resume=True, progress=False)
    np.testing.assert_array_equal(model.flat.data, before)


def test_fit_checks_on_step_before_the_first_step():
    model, opt, x, y = _small_fit_setup()
    before = model.flat.data.copy()
    with pytest.raises(TypeError, match="fit: on_step: expected a function .step, loss. or None, got int 5"):
        fnn.train.fit(model, opt, x, y, epochs=1, on_step=5, progress=False)
    np.testing.assert_array_equal(model.flat.data, before)


@pytest.mark.parametrize("change, error, match", [
    (lambda x, y: (x[:, :4], y), ValueError, r"Dense input: expected shape \(N, 5\), got \(2, 4\)"),
    (lambda x, y: (x.astype(np.float32), y), TypeError, "Dense input: expected dtype float64, got float32"),
    (lambda x, y: (x, y + 5), ValueError, r"softmax_cross_entropy labels: expected values in \[0, 3\)")])
def test_fit_checks_the_data_on_the_model_before_it_resumes(tmp_path, change, error, match):
    """Data of another shape or dtype (or labels out of range) failed at the first forward, after
    the checkpoint had been loaded into the model and optimizer."""
    model, opt, x, y = _small_fit_setup()
    path = tmp_path / "r.npz"
    fnn.train.fit(model, opt, x, y, epochs=1, batch_size=32, checkpoint=path, progress=False)
    model, opt, x, y = _small_fit_setup()
    before = model.flat.data.copy()
    bad_x, bad_y = change(x, y)
    with pytest.raises(error, match=rf"fit: on x\[:2\] \(x of shape {re.escape(str(bad_x.shape))}\): {match}"):
        fnn.train.fit(model, opt, bad_x, bad_y, epochs=2, batch_size=32, checkpoint=path, resume=True,
                      progress=False)
    np.testing.assert_array_equal(model.flat.data, before)
    assert opt.step_count == 0 and not opt.state["momentum_buffer"].any()


def test_cli_names_the_checkpoint_after_the_data_folder_itself(tmp_path, monkeypatch):
    """`--data .` named it checkpoints/.-mlp.npz, a hidden file."""
    from fastnn.cli import _check_train_args, _parser

    monkeypatch.chdir(tmp_path)
    parser = _parser()
    for data, name in ((".", tmp_path.name), (f"{tmp_path}/", tmp_path.name), ("digits", "digits")):
        args = parser.parse_args(["train", "--data", data])
        _check_train_args(parser, args)
        assert args.checkpoint == f"checkpoints/{name}-mlp.npz"


@pytest.mark.parametrize("where", ["y", "validation_data y"])
def test_fit_checks_every_label_before_the_first_step(where):
    """Only y[:2] was checked: a label out of range at the end of y failed after an epoch's steps
    had changed the model (at the end of y_val, after a whole epoch, before its checkpoint)."""
    model, opt, x, y = _small_fit_setup()
    before = model.flat.data.copy()
    bad = y.copy()
    bad[-1] = 3
    ys = (bad, y) if where == "y" else (y, bad)
    with pytest.raises(ValueError, match=rf"fit: {where}\[{len(y) - 1}\] = 3: expected class labels in \[0, 3\) "
                                         rf"for a model of 3 outputs \(1 of {len(y)} labels outside\)"):
        fnn.train.fit(model, opt, x, ys[0], epochs=1, batch_size=8, validation_data=(x, ys[1]), progress=False)
    np.testing.assert_array_equal(model.flat.data, before)
    assert opt.step_count == 0


def test_cli_epochs_0_names_no_old_file_as_its_checkpoint(tmp_path, capsys):
    """--epochs 0 wrote nothing, yet printed an earlier run's file (another model) as its checkpoint."""
    from fastnn.cli import main

    ck = str(tmp_path / "e0.npz")
    assert main(["train", "--epochs", "1", "--hidden", "16", "--no-progress", "--checkpoint", ck]) == 0
    assert f"checkpoint        {ck}" in capsys.readouterr().out
    assert main(["train", "--epochs", "0", "--no-progress", "--checkpoint", ck]) == 0
    out = capsys.readouterr().out
    assert "nothing to train  --epochs 0" in out and "checkpoint  " not in out
    assert main(["train", "--epochs", "1", "--hidden", "16", "--no-progress", "--checkpoint", ck, "--resume"]) == 0
    assert f"checkpoint        {ck}" in capsys.readouterr().out     # resumed from it: it is this run's


def test_fit_drop_last_refuses_an_epoch_the_grown_batch_would_leave_without_a_step(tmp_path):
    """A batch-size schedule grown beyond the data set with drop_last=True: the later epochs took
    no step, silently (the history's loss NaN)."""
    model, opt, x, y = _small_fit_setup()
    sizes = fnn.schedules.BatchSize(16, factor=4, every_samples=len(x), max_batch=256)
    path = tmp_path / "g.npz"
    with pytest.raises(ValueError, match=r"fit: drop_last=True: the batch-size schedule has grown to 256 after 240 "
                                         r"samples, beyond the 103 samples, so epoch 4 would drop every batch"):
        fnn.train.fit(model, opt, x, y, epochs=5, batch_size=sizes, drop_last=True, checkpoint=path, progress=False)
    assert fnn.checkpoint.read_meta(path)["extra"]["epoch"] == 3


def test_fit_refuses_batches_that_leave_a_batchnorm_one_sample_before_training():
    """A last batch of one sample (or a rank's share of one) failed in BatchNorm an epoch in."""
    from fastnn.train import _check_batchnorm_shares

    x, y = np.random.default_rng(1).standard_normal((103, 5)), np.random.default_rng(2).integers(0, 3, 103)
    model = fnn.Sequential(fnn.Dense(5, 8, dtype=np.float64), fnn.BatchNorm(8, dtype=np.float64),
                           fnn.Dense(8, 3, dtype=np.float64))
    opt = fnn.optim.SGD(model, lr=0.1)
    before = model.flat.data.copy()
    with pytest.raises(ValueError, match=r"fit: the last batch of each epoch \(103 samples, batch_size 17\) holds 1 "
                                         r"sample, and BatchNorm layer '1' cannot train on one value per channel: "
                                         r".*\(pass drop_last=True or another batch_size\)"):
        fnn.train.fit(model, opt, x, y, epochs=1, batch_size=17, progress=False)
    np.testing.assert_array_equal(model.flat.data, before)
    assert fnn.train.fit(model, opt, x, y, epochs=1, batch_size=17, drop_last=True, progress=False)["steps"] == 6
    with pytest.raises(ValueError, match=r"a batch of 3 samples gives a rank 1 sample on 2 ranks \(103 samples, "
                                         r"batch_size 20\)"):
        _check_batchnorm_shares(model, 103, 20, 2, False)
    with pytest.raises(ValueError, match=r"a batch of 2 samples .* \(a larger batch_size\)"):
        _check_batchnorm_shares(model, 103, 2, 2, True)
    _check_batchnorm_shares(model, 103, 20, 2, True)        # the short batch dropped
    _check_batchnorm_shares(model, 103, 17, 4, False)       # 103 % 17 = 1 < 4 ranks: dropped
    model.eval()                                            # fit puts it into training mode
    with pytest.raises(ValueError, match="BatchNorm layer '1' cannot train on one value per channel"):
        _check_batchnorm_shares(model, 103, 17, 1, False)
    model.train()
    model[1].eval()                                         # frozen: running statistics, any batch
    _check_batchnorm_shares(model, 103, 17, 1, False)
    images = fnn.Sequential(fnn.Conv2D(1, 2, 3, dtype=np.float64), fnn.BatchNorm(2, dtype=np.float64),
                            fnn.Flatten(), fnn.Dense(8, 3, dtype=np.float64))
    xi = np.random.default_rng(3).standard_normal((103, 4, 4, 1))
    fnn.train.fit(images, fnn.optim.SGD(images, lr=0.1), xi, y, epochs=1, batch_size=17, progress=False)  # 2x2 each


def test_fit_resume_names_another_model_before_a_missing_schedule(tmp_path):
    """A checkpoint of another model with a schedule's state was refused for the missing schedule."""
    x, y = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32), np.arange(40) % 3
    model = fnn.Sequential(fnn.Dense(4, 3))
    opt = fnn.optim.SGD(model, lr=0.1)
    fnn.train.fit(model, opt, x, y, epochs=1, batch_size=8, schedule=fnn.schedules.Cosine(opt, T_max=5),
                  checkpoint=tmp_path / "c.npz", progress=False)
    other = fnn.Sequential(fnn.Dense(4, 5), fnn.Dense(5, 3))
    with pytest.raises(fnn.checkpoint.ResumeError, match="checkpoint of a different model: it has 0.weight"):
        fnn.train.fit(other, fnn.optim.SGD(other, lr=0.1), x, y, epochs=2, batch_size=8, checkpoint=tmp_path / "c.npz",
                      resume=True, progress=False)


def test_fit_names_validation_data_and_a_missing_x():
    """Errors of validation_data's lengths named the training x and y; x=None was an AttributeError."""
    model = fnn.Sequential(fnn.Dense(5, 3))
    x, y = np.zeros((37, 5), np.float32), np.zeros(37, np.int64)
    for val, match in (((x[:5], y[:4]), "x and y: expected the same number of samples, got 5 and 4"),
                       ((x[:0], y[:0]), r"empty data set: x has shape \(0, 5\)")):
        with pytest.raises(ValueError, match=f"fit: validation_data: {match}"):
            fnn.train.fit(model, fnn.optim.SGD(model), x, y, epochs=1, validation_data=val, progress=False)
    with pytest.raises(TypeError, match="x: expected an array with a leading sample axis, got NoneType$"):
        fnn.train.predict(model, None)


def test_fit_checks_a_batch_size_schedule_for_batchnorm_batches_of_one_before_training():
    """Only an int batch size was checked: a schedule's batch of one failed in BatchNorm after
    steps had changed the weights (and the schedule had counted the failed batch)."""
    x, y = np.random.default_rng(1).standard_normal((9, 5)), np.arange(9) % 3
    model = fnn.Sequential(fnn.Dense(5, 8, dtype=np.float64), fnn.BatchNorm(8, dtype=np.float64),
                           fnn.Dense(8, 3, dtype=np.float64))
    opt, grow = fnn.optim.SGD(model, lr=0.1), fnn.schedules.BatchSize(4, milestones=[1000])
    before = model.flat.data.copy()
    with pytest.raises(ValueError, match=r"fit: a batch \(9 samples per epoch, BatchSize\(.*\)\) holds 1 sample, and "
                                         r"BatchNorm layer '1' cannot .*\(pass drop_last=True or another batch-size "
                                         r"schedule\)"):
        fnn.train.fit(model, opt, x, y, epochs=1, batch_size=grow, progress=False)
    np.testing.assert_array_equal(model.flat.data, before)
    assert grow.samples_seen == 0 and opt.step_count == 0
    assert fnn.train.fit(model, opt, x, y, epochs=1, batch_size=grow, drop_last=True, progress=False)["steps"] == 2
    grows = fnn.schedules.BatchSize(2, factor=2, milestones=[8])        # 2, 2, 2, 2, then 4 from 8 samples: 1 left
    assert list(grows.sizes(9, 2)) == [2, 2, 2, 2, 1, 4, 4, 1] and grows.steps(9, 2) == 8
    assert list(grows.sizes(9, 2, ranks=2)) == [2, 2, 2, 2, 4, 4] and grows.steps(9, 2, ranks=2) == 6  # as batches
    fresh = fnn.schedules.BatchSize(2, factor=2, milestones=[8])
    assert sum(1 for _ in fnn.data.batches(x, y, fresh, shard=(0, 2))) == 4             # the tail of 1 dropped
    with pytest.raises(ValueError, match=r"a batch \(9 samples per epoch"):
        fnn.train.fit(model, opt, x, y, epochs=2, batch_size=grows, progress=False)


def test_checkpoint_save_names_the_part_that_is_not_json(tmp_path):
    """An object in ``extra`` was reported as a hyperparameter; nothing is written either way."""
    model = fnn.Sequential(fnn.Dense(4, 3))
    opt = fnn.optim.SGD(model)
    with pytest.raises(TypeError, match="checkpoint.save: extra: expected JSON-able values, got set"):
        fnn.checkpoint.save(tmp_path / "m.npz", model, opt, extra={"seen": {1, 2}})
    opt.param_groups[0]["note"] = object()
    with pytest.raises(TypeError, match="checkpoint.save: optimizer: expected JSON-able values, got object"):
        fnn.checkpoint.save(tmp_path / "m.npz", model, opt)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_load_restores_the_global_generator(tmp_path):
    """fastnn's shared generator (initializers, seeds of new layers) continues as it was saved."""
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(3, 2))
    opt = fnn.optim.SGD(model)
    path = fnn.checkpoint.save(tmp_path / "c.npz", model, opt)
    want = fnn.random.generator().random(3)
    fnn.random.generator().random(10)
    fnn.checkpoint.load(path, model, opt)
    np.testing.assert_array_equal(fnn.random.generator().random(3), want)


def test_a_refused_checkpoint_leaves_the_schedule_as_it_was(tmp_path):
    """A file of another optimizer type is refused after the schedule's state was loaded (the
    schedule goes first): the schedule must be rolled back with everything else."""
    model = fnn.Sequential(fnn.Dense(3, 2))
    opt = fnn.optim.Adam(model, lr=0.1)
    sched = fnn.schedules.Step(opt, 1, 0.5)
    for _ in range(3):
        opt.step()
        sched.step()
    path = fnn.checkpoint.save(tmp_path / "c.npz", model, opt, sched)
    other = fnn.optim.SGD(model, lr=0.1)
    other_sched = fnn.schedules.Step(other, 1, 0.5)
    before = (other_sched.state_dict(), copy.deepcopy(other.param_groups))
    with pytest.raises(ValueError, match="expected a SGD state, got 'Adam'"):
        fnn.checkpoint.load(path, model, other, other_sched)
    assert (other_sched.state_dict(), other.param_groups) == before


def test_checkpoints_hold_the_data_position_and_step_count_across_a_resume(tmp_path, monkeypatch):
    """A short last batch (10 samples, batches of 4) counts its own samples, not a whole batch,
    and a resumed run numbers its steps on from the checkpoint's."""
    x = np.random.default_rng(0).standard_normal((10, 3))
    y = np.arange(10) % 2
    path = tmp_path / "c.npz"

    def make():
        fnn.manual_seed(0)
        model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
        return model, fnn.optim.SGD(model, lr=0.1)

    saved, save = [], fnn.checkpoint.save

    def spy(*args, **kwargs):
        saved.append((kwargs["step"], kwargs["extra"]["epoch"], kwargs["extra"]["sample"]))
        return save(*args, **kwargs)

    monkeypatch.setattr(fnn.checkpoint, "save", spy)
    fnn.train.fit(*make(), x, y, epochs=1, batch_size=4, checkpoint=path, checkpoint_every=2, progress=False)
    steps = []
    fnn.train.fit(*make(), x, y, epochs=2, batch_size=4, checkpoint=path, checkpoint_every=2, resume=True,
                  progress=False, on_step=lambda step, loss: steps.append(step))
    assert steps == [4, 5, 6]
    assert saved == [(2, 0, 8), (3, 1, 0), (4, 1, 4), (6, 1, 10), (6, 2, 0)], saved
    assert fnn.checkpoint.read_meta(path)["step"] == 6


def test_cli_seed_sets_the_initial_weights(tmp_path):
    """With lr 0 the checkpoint holds the initial weights: --seed 1 gives others than --seed 0,
    and the same again on a second run."""
    from fastnn.cli import main

    params = []
    for seed, name in (("0", "a"), ("1", "b"), ("1", "c")):
        ck = tmp_path / f"{name}.npz"
        assert main(["train", "--epochs", "1", "--lr", "0", "--seed", seed, "--no-progress", "--checkpoint", str(ck)]) == 0
        params.append(np.load(ck)["params"])
    assert not np.array_equal(params[0], params[1])
    np.testing.assert_array_equal(params[1], params[2])
