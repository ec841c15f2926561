"""Data parallelism under real MPI: pytest starts ``mpiexec -n K`` jobs in subprocesses with
timeouts and checks them against a single-process run of the same global batch."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import mpi4py  # noqa: F401 - fastnn[mpi], which make test installs
import numpy as np
import pytest

import fastnn as fnn

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
WORKER = Path(__file__).parent / "mpi" / "worker.py"
if not MPIEXEC.exists():
    raise RuntimeError(f"the MPI tests need mpiexec at {MPIEXEC}: pip install fastnn[mpi] (make test installs it)")


def _mapped_shared_memory() -> set[str]:
    """Paths under /dev/shm that some live process maps."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split(maxsplit=5)[5].strip() for line in maps.read_text().splitlines()
                          if "/dev/shm/" in line)
        except (OSError, IndexError):
            continue
    return mapped


@pytest.fixture(autouse=True)
def _no_leftover_shared_memory():
    """A job ended by MPI_Abort leaves MPICH's shared-memory segments (2 MB each) in /dev/shm;
    remove those this test's jobs left, once no live process maps them."""
    pattern = "/dev/shm/mpich_shm_*"
    before = set(glob.glob(pattern))
    yield
    new = set(glob.glob(pattern)) - before
    for path in new - _mapped_shared_memory() if new else ():
        Path(path).unlink(missing_ok=True)


def job(n: int, case: str, out: Path, *options: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, str(WORKER), case, str(out), *options]
    if n == 0:
        cmd = [sys.executable, str(WORKER), case, str(out), *options]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process (no mpiexec), global batch 24, 20 steps of Adam: the reference."""
    out = tmp_path_factory.mktemp("single") / "p.npy"
    r = job(0, "equivalence", out, "steps=20", "batch=24")
    assert r.returncode == 0, r.stderr
    return np.load(out)


@pytest.mark.parametrize("n,options", [
    (1, ()), (2, ()), (3, ("overlap=nonblocking",)), (4, ("overlap=none",)), (2, ("cap_mb=25",)),
    (3, ("deterministic=1",)), (2, ("accumulate=2", "batch=12", "steps=40")), (2, ("transport=mpi",)),
    (4, ("shard=0", "overlap=none")),
    (2, ("transport=mpi", "cap_mb=25", "first_mb=25")),     # one bucket over every layer, reduced when all are ready
    (2, ("rank_lr=1",)), (2, ("rank_lr=1", "transport=mpi")),   # rank 0's optimizer settings and state, everywhere
])
def test_n_ranks_equal_one_process_with_the_global_batch(n, options, single, tmp_path):
    out = tmp_path / "p.npy"
    r = job(n, "equivalence", out, "steps=20", "batch=24", *options)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), single, rtol=0, atol=1e-12)
    # on one machine "auto" sums in shared memory, sharding the optimizer, unless Iallreduce was asked for;
    # one rank reduces nothing
    auto = "auto" if n == 1 else "mpi" if "overlap=nonblocking" in options else "shm"
    want = next((o.split("=")[1] for o in options if o.startswith("transport=")), auto)
    if want == "shm" and "shard=0" not in options:
        want += "+shard"
    assert Path(f"{out}.transport").read_text() == want


@pytest.mark.parametrize("n,options", [
    (2, ()), (3, ("transport=mpi",)), (2, ("shard=0",)), (3, ("overlap=nonblocking",)), (3, ("deterministic=1",)),
    (2, ("accumulate=2", "steps=40")), (2, ("compression=fp16", "transport=mpi")),
])
def test_uneven_shares_of_the_global_batch_equal_one_process(n, options, tmp_path):
    """A global batch of 7 splits 4/3 or 3/2/2: each rank's mean gradient is weighed by its
    share of the samples, so the step is the mean over the global batch, as one process takes it
    (with fp16 compression: to its rounding)."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    extra = [o for o in options if o.startswith(("accumulate", "steps"))]
    r = job(0, "equivalence", ref, "steps=20", "batch=7", "opt=sgd", *extra)
    assert r.returncode == 0, r.stderr
    r = job(n, "equivalence", out, "steps=20", "batch=7", "opt=sgd", *options)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0,
                               atol=2e-3 if "compression=fp16" in options else 1e-12)


def test_join_with_an_unfinished_accumulated_step_equals_one_process(tmp_path):
    """5 micro-batches an epoch, 2 per step, a join block per epoch: the 5th micro-batch is
    stepped on when the block ends, on 1 rank and on 2, not dropped."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    for n, path in ((0, ref), (2, out)):
        r = job(n, "join_accumulate", path, "accumulate=2", "opt=sgd", timeout=60)
        assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-12)


@pytest.mark.parametrize("accumulate", ["1", "2"])
def test_fp16_compression_divides_before_the_sum(accumulate, tmp_path):
    """Micro-batch gradients of 4e4 on each of 2 ranks: fp16 sums of two of them (8e4) would
    overflow, their mean does not (DDP's fp16 hook divides by the ranks; with accumulation
    the 1/steps goes before the sum too): SGD moves every parameter by lr * 4e4."""
    r = job(2, "grad_range", tmp_path / "p.npy", "opt=sgd", "compression=fp16", "transport=mpi",
            f"accumulate={accumulate}", timeout=60)
    assert r.returncode == 0, r.stderr
    r0 = job(0, "grad_range", tmp_path / "one.npy", "opt=sgd", f"accumulate={accumulate}", timeout=60)
    assert r0.returncode == 0, r0.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), np.load(tmp_path / "one.npy"), rtol=0, atol=1e-9)


def test_fp16_overflow_on_the_wire_is_named_in_the_error(tmp_path):
    """A gradient of 1e6 on each rank is finite, its mean too, but not in float16: the step's
    error said only that the gradient had non-finite values."""
    r = job(2, "grad_range", tmp_path / "p.npy", "grad=1e6", "opt=sgd", "compression=fp16", "transport=mpi",
            timeout=60)
    assert r.returncode != 0
    assert "non-finite value(s)" in r.stderr and "with compression='fp16' a gradient over 65504" in r.stderr, r.stderr


def test_compression_with_join_blocks_keeps_gradients_finite(tmp_path):
    """A join round that counts no active rank reduces nothing into NaN: five epochs of join
    blocks with fp16 on the wire stay close to one process."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    r = job(0, "join_accumulate", ref, "opt=sgd", "epochs=5", timeout=60)
    assert r.returncode == 0, r.stderr
    r = job(2, "join_accumulate", out, "opt=sgd", "epochs=5", "compression=fp16", "transport=mpi", timeout=60)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-3)


def test_fit_with_a_checkpoint_on_rank_0_only_and_uneven_shares(tmp_path):
    """Rank 0 decides on checkpoints for all (the gather is collective); with a global batch
    of 7 over 2 ranks, fit's per-epoch loss is the global batch's mean, as one process reports."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    common = ("opt=sgd", "samples=100", "batch=7", "epochs=2")
    r = job(0, "fit", ref, *common, timeout=60)
    assert r.returncode == 0, r.stderr
    r = job(2, "fit", out, *common, f"checkpoint={tmp_path / 'ck.npz'}", "checkpoint_rank0=1", timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ck.npz").exists()
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.load(f"{out}.loss.npy"), np.load(f"{ref}.loss.npy"), rtol=1e-12)
    # every rank's history counts every rank's samples, as one process does (it counted its own share)
    assert sorted(re.findall(r"samples (\d+)", r.stdout)) == ["200", "200"], r.stdout


def test_fit_with_a_minimal_batch_size_schedule_matches_one_process(tmp_path):
    """A schedule with only batch_size and advance (no samples_seen): fit still counts each
    global batch's samples and reports the global mean loss."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    common = ("opt=sgd", "samples=100", "grow=1", "epochs=2")
    r = job(0, "fit", ref, *common, timeout=60)
    assert r.returncode == 0, r.stderr
    r = job(2, "fit", out, *common, timeout=60)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.load(f"{out}.loss.npy"), np.load(f"{ref}.loss.npy"), rtol=1e-12)


def test_exception_inside_fit_ends_the_job_promptly_with_its_message(tmp_path):
    """fit runs inside join: a rank leaving it by an exception must not shadow the others'
    steps (that hid the message until the collective timeout, or mismatched collectives)."""
    for transport in ("shm", "mpi"):
        r = job(2, "fit", tmp_path / "p.npy", "raise_at=5", "timeout=60", f"transport={transport}", timeout=90)
        assert r.returncode != 0
        assert "deliberate failure on rank 1 at step 5" in r.stderr, r.stderr


def test_stall_after_the_last_step_of_fit_times_out(tmp_path):
    """Rank 1 stops after its last step; rank 0's next collective (join's count) is watched."""
    r = job(2, "fit", tmp_path / "p.npy", "epochs=1", "samples=64", "stall_at=2", "timeout=2", timeout=60)
    assert r.returncode != 0
    assert "[fastnn rank 0/2] collective timed out" in r.stderr, r.stderr


def test_resume_with_dropout_under_mpi_continues_every_ranks_stream(tmp_path):
    """Each rank's dropout generator is saved (gathered to rank 0) and restored on its rank:
    1 epoch + resume to 2 equals 2 epochs straight, on 2 ranks."""
    common = ("dropout=0.3", "opt=sgd", "samples=200")
    straight, ck = tmp_path / "a.npy", tmp_path / "run.npz"
    r = job(2, "fit", straight, *common, "epochs=2", timeout=90)
    assert r.returncode == 0, r.stderr
    r = job(2, "fit", tmp_path / "half.npy", *common, "epochs=1", f"checkpoint={ck}", timeout=90)
    assert r.returncode == 0, r.stderr
    # other initial weights and dropout seeds: only the checkpoint can give the straight run's result
    r = job(2, "fit", tmp_path / "b.npy", *common, "epochs=2", f"checkpoint={ck}", "resume=1", "init_seed=3",
            timeout=90)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.load(straight))
    assert (tmp_path / "b.npy.steps").read_text() == "7"      # epoch 2 only: ceil(200 / 32) steps


def test_wrapping_gives_each_rank_its_own_dropout_stream(tmp_path):
    """Every rank seeded alike (fnn.manual_seed(0) in each, as the docs' script does) drew the
    same dropout masks: equal shares of the global batch got identical masks."""
    out = tmp_path / "same.npy"
    r = job(3, "masks", out, "dropout=0.5", "rekey=0", timeout=60)
    assert r.returncode == 0, r.stderr
    assert not np.load(out).any()


def test_an_epoch_resumed_on_another_rank_count_reports_the_whole_epochs_loss(tmp_path):
    """The saved loss sums of the unfinished epoch were used only on as many ranks as saved
    them: resumed on one process, the epoch's loss left out every step before the checkpoint."""
    common = ("opt=sgd", "samples=300", "epochs=2")
    straight, ck = tmp_path / "a.npy", tmp_path / "run.npz"
    assert job(0, "fit", straight, *common, timeout=60).returncode == 0
    r = job(2, "fit", tmp_path / "cut.npy", *common, f"checkpoint={ck}", "every=4", "raise_at=18", timeout=90)
    assert r.returncode != 0 and "deliberate failure on rank 1 at step 18" in r.stderr, r.stderr
    r = job(0, "fit", tmp_path / "b.npy", *common, f"checkpoint={ck}", "resume=1", timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.npy.steps").read_text() == "4"       # steps 17..20: the checkpoint was step 16
    np.testing.assert_allclose(np.load(tmp_path / "b.npy.loss.npy")[-1], np.load(f"{straight}.loss.npy")[-1],
                               rtol=1e-12)


def test_shared_memory_sum_is_bitwise_the_gathered_rank_order_sum(tmp_path):
    """transport="shm" adds the ranks' gradients in rank order, like the deterministic MPI
    path (Allgather, then a NumPy sum over ranks): the two give the same bits."""
    runs = []
    for options in (("transport=mpi",), ("transport=shm", "shard=0"), ("transport=shm", "shard=1")):
        out = tmp_path / "p.npy"
        r = job(3, "equivalence", out, "steps=10", "batch=24", "deterministic=1", *options)
        assert r.returncode == 0, r.stderr
        runs.append(np.load(out))
    np.testing.assert_array_equal(runs[1], runs[0])
    np.testing.assert_array_equal(runs[2], runs[0])


@pytest.mark.parametrize("kind,atol", [("fp16", 1e-3), ("bf16", 5e-3)])
def test_compressed_allreduce_stays_close(kind, atol, tmp_path):
    """SGD with momentum, 20 steps: 16-bit gradients on the wire move parameters (|p| ~ 0.7)
    by at most about the 16-bit rounding of the gradients times the learning rate."""
    ref, out = tmp_path / "ref.npy", tmp_path / "p.npy"
    assert job(0, "equivalence", ref, "steps=20", "batch=24", "opt=sgd").returncode == 0
    r = job(2, "equivalence", out, "steps=20", "batch=24", "opt=sgd", f"compression={kind}")
    assert r.returncode == 0, r.stderr
    diff = np.abs(np.load(out) - np.load(ref)).max()
    assert 0 < diff < atol  # nonzero: the 16-bit wire format was really used


@pytest.mark.parametrize("n,options", [(3, ()), (2, ("shard=0", "accumulate=2", "batch=12"))])
def test_clipping_and_groups_equal_one_process(n, options, tmp_path):
    """SGD with momentum, global-norm clipping (the norm of the summed gradient: a sharded
    rank sees only its share, so the norm is combined over ranks) and a bias group without
    weight decay."""
    ref, out = tmp_path / "ref.npy", tmp_path / "p.npy"
    steps = "steps=40" if "accumulate=2" in options else "steps=20"
    assert job(0, "equivalence", ref, "steps=20", "batch=24", "opt=sgd_clip").returncode == 0
    r = job(n, "equivalence", out, steps, "batch=24", "opt=sgd_clip", *options)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-12)


def test_nonfinite_gradient_on_one_rank_skips_the_step_everywhere(tmp_path):
    """Sharded: the NaN sits in one rank's share of the sum; the count is combined over ranks,
    so every rank skips the same step."""
    ref, out = tmp_path / "ref.npy", tmp_path / "p.npy"
    r = job(0, "nan", ref, "steps=8", "batch=24", "opt=sgd_clip", "nan_rank=0", timeout=60)
    assert r.returncode == 0 and "rank 0 skipped 1" in r.stdout, r.stderr
    r = job(3, "nan", out, "steps=8", "batch=24", "opt=sgd_clip", timeout=60)
    assert r.returncode == 0, r.stderr
    for k in range(3):
        assert f"rank {k} skipped 1" in r.stdout
        # against one process that skipped the same step (the ranks may share one copy in memory)
        np.testing.assert_allclose(np.load(f"{out}.rank{k}.npy"), np.load(f"{ref}.rank0.npy"), rtol=0, atol=1e-12)


def test_an_infinite_loss_on_one_rank_skips_or_raises_on_every_rank(tmp_path):
    """fit makes the gradient of a non-finite loss NaN, so the summed gradient tells every rank:
    all skip the same step, or all raise (none waits for the others in a collective)."""
    out = tmp_path / "p.npy"
    r = job(2, "fit", out, "opt=sgd_clip", "inf_loss_at=3", "samples=96", "batch=16", "epochs=1", timeout=90)
    assert r.returncode == 0, r.stderr
    assert "rank 0 skipped 1 of 6" in r.stdout and "rank 1 skipped 1 of 6" in r.stdout, r.stdout
    r = job(2, "fit", out, "inf_loss_at=3", "samples=96", "batch=16", "epochs=1", timeout=90)   # Adam: "raise"
    assert r.returncode != 0
    assert "fit: the loss is inf at step 3, expected a finite loss" in r.stderr, r.stderr


def test_deterministic_mode_is_bitwise_reproducible(tmp_path):
    """Over MPI, deterministic=True gathers each bucket and adds it in rank order (Allgather,
    never Allreduce on the gradients): the same bits run to run."""
    import json

    runs = []
    for k in range(2):
        out = tmp_path / f"{k}.npy"
        r = job(3, "equivalence", out, "steps=10", "batch=24", "deterministic=1", "transport=mpi", "shard=0")
        assert r.returncode == 0, r.stderr
        calls = json.loads(Path(f"{out}.calls.json").read_text())
        assert calls.get("Allgather", 0) >= 10, calls          # every step's buckets went the rank-order way
        runs.append(np.load(out))
    np.testing.assert_array_equal(runs[0], runs[1])
    r = job(3, "equivalence", tmp_path / "plain.npy", "steps=10", "batch=24", "transport=mpi", "shard=0")
    assert r.returncode == 0, r.stderr
    assert json.loads(Path(f"{tmp_path / 'plain.npy'}.calls.json").read_text()).get("Allgather", 0) == 0


@pytest.mark.parametrize("options", [(), ("shard=0",), ("transport=mpi", "schedule=1")])
def test_uneven_data_equals_one_process_stepping_on_the_ranks_still_training(options, tmp_path):
    """Rank k takes 12 - 3k steps inside join(): steps 1-6 average all three ranks' shares of
    the global batch, 7-9 ranks 0 and 1, 10-12 rank 0 alone; one process stepping on those
    samples is the reference. Every rank ends with it (its own copy, or one shared copy when
    sharded). With an LR schedule passed to join, the ranks that ran out step it with the others."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    schedule = [o for o in options if o.startswith("schedule")]
    r = job(0, "uneven_reference", ref, "steps=12", "batch=24", "ranks=3", *schedule)
    assert r.returncode == 0, r.stderr
    r = job(3, "uneven", out, "steps=12", "batch=24", *options, timeout=60)
    assert r.returncode == 0, r.stderr
    assert Path(f"{out}.transport").read_text().endswith("+shard") == (options == ())
    for k in range(3):
        np.testing.assert_allclose(np.load(f"{out}.rank{k}.npy"), np.load(ref), rtol=0, atol=1e-12)


def test_exception_on_one_rank_ends_the_job_with_its_message(tmp_path):
    before = set(glob.glob("/dev/shm/mpich_shm_*"))
    r = job(2, "raise", tmp_path / "p.npy", "steps=50", timeout=60)
    assert r.returncode != 0
    assert "deliberate failure on rank 1 at step 3" in r.stderr
    assert "[fastnn rank 1/2]" in r.stderr
    assert set(glob.glob("/dev/shm/mpich_shm_*")) <= before      # MPICH removes them at Finalize only


def test_different_models_fail_at_wrap_time_naming_ranks(tmp_path):
    r = job(2, "mismatch", tmp_path / "p.npy", timeout=60)
    assert r.returncode != 0
    assert "ranks [1] differ from rank 0: parameter 0 is 0.weight (64, 32) on rank 0 " \
           "but 0.weight (64, 33) on rank 1" in r.stderr


def test_different_bucket_boundaries_fail_at_wrap_time(tmp_path):
    """Two buckets on both ranks, cut at different offsets: refused before any gradient moves."""
    r = job(2, "settings_mismatch", tmp_path / "p.npy", "mismatch=first_mb", "cap_mb=1", "transport=mpi",
            timeout=60)
    assert r.returncode != 0
    assert "ranks [1] differ from rank 0: the gradient buckets (start, stop) are [(" in r.stderr
    assert "(bucket_cap_mb or first_bucket_mb differ)" in r.stderr


def test_different_reduction_settings_fail_at_wrap_time(tmp_path):
    r = job(2, "settings_mismatch", tmp_path / "p.npy", timeout=60)
    assert r.returncode != 0
    assert "ranks [1] differ from rank 0: the DataParallel settings are" in r.stderr
    assert "'compression': None" in r.stderr and "'compression': 'fp16'" in r.stderr


@pytest.mark.parametrize("mismatch, rank0, rank1", [
    ("amsgrad", "'amsgrad': False}", "'amsgrad': True}"),
    ("clip", "{'max_grad_norm': None}", "{'max_grad_norm': 1.0}"),
    ("nonfinite", "{'nonfinite': 'raise'}", "{'nonfinite': 'skip'}"),
    # rank 1's biases in a group of their own: it refused only at the broadcast of the state, on rank 1,
    # in a checkpoint's words, after rank 1's parameters were overwritten
    ("groups", "'0.bias', '1.weight', '1.bias', '2.weight', '2.bias']]}", "'2.weight', '2.bias'], ['0.bias']]}")])
def test_different_optimizer_options_fail_at_wrap_time(tmp_path, mismatch, rank0, rank1):
    """amsgrad's extra state buffer, clipping's norm or the non-finite check on one rank only
    would leave the other rank waiting in a collective: refused at wrap time, naming both values."""
    r = job(2, "optimizer_mismatch", tmp_path / "p.npy", f"mismatch={mismatch}", timeout=60)
    assert r.returncode != 0
    assert "ranks [1] differ from rank 0: the optimizer has {" in r.stderr, r.stderr
    assert f"{rank0} on rank 0 but {{" in r.stderr and f"{rank1} on rank 1" in r.stderr, r.stderr


@pytest.mark.parametrize("n,options", [(1, ()), (2, ()), (2, ("transport=mpi",))])
def test_finished_steps_sum_is_not_added_to_or_reduced_again(tmp_path, n, options):
    """After step() the buffer holds the ranks' sum: a backward or a second step() before
    zero_grad() would not equal one process, so both are refused on every rank, nothing written,
    and training goes on after model.zero_grad()."""
    r = job(n, "stale", tmp_path / "p.npy", *options, timeout=60)
    assert r.returncode == 0, r.stderr
    for rank in range(n):
        for what in ("backward() after step()", "step() again"):
            assert f"rank {rank}: DataParallel: {what} without zero_grad()" in r.stdout, r.stdout


def test_allreduce_mean_with_counts_that_differ_is_refused_on_every_rank(tmp_path):
    """Rank 0 used to return while rank 1 waited for the 300 s watchdog."""
    r = job(2, "metrics_mismatch", tmp_path / "p.npy", timeout=60)
    assert r.returncode == 0, r.stderr
    for rank, n in ((0, 1), (1, 2)):
        assert f"rank {rank}: allreduce_mean: every rank must pass as many values; got {n} here" in r.stdout


def test_allreduce_mean_over_a_sub_communicator_divides_by_its_size(tmp_path):
    """init() on all 3 ranks, then a metric averaged over ranks 0-1 only: (0 + 1) / 2."""
    r = job(3, "metrics_subcomm", tmp_path / "p.npy", timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(re.findall(r"rank (\d): mean ([0-9.]+)", r.stdout)) == [("0", "0.5"), ("1", "0.5")], r.stdout


def test_a_nonfinite_gradient_on_one_rank_is_named_as_one_process_names_it(tmp_path):
    """The sharded step agrees on the first non-finite element over the ranks (the smallest
    index): the parameter named is the one a single process names."""
    for n, extra in ((0, ("nan_rank=0",)), (2, ())):
        r = job(n, "nan", tmp_path / "p.npy", "steps=8", "batch=24", *extra, timeout=90)
        assert r.returncode != 0
        assert "non-finite value(s) (NaN or Inf), first in '0.weight'; expected all finite" in r.stderr, r.stderr


def test_fit_over_a_sub_communicator_reduces_its_metrics_there(tmp_path):
    """Ranks 0-1 wrap with comm=Split(...), rank 2 trains alone: fit's metrics used COMM_WORLD
    and the job hung until the watchdog. All three now end with the same epoch loss (two ranks
    with the global batch equal one process)."""
    r = job(3, "fit_subcomm", tmp_path / "p.npy", timeout=90)
    assert r.returncode == 0, r.stderr
    losses = [float(v) for v in re.findall(r"rank \d: loss ([\d.]+)", r.stdout)]
    assert len(losses) == 3 and max(losses) - min(losses) < 1e-6, r.stdout


def test_exit_on_one_rank_under_mpi4py_runner_aborts_the_job_with_its_code(tmp_path):
    """sys.exit(3) on rank 1 is no exception (no hook sees it): launched through
    `python -m mpi4py`, as docs/distributed.md says, it aborts the job with code 3 at once instead
    of rank 0 waiting for its 60 s watchdog."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
    r = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", str(WORKER), "exit",
                        str(tmp_path / "p.npy"), "steps=50", "timeout=60"],
                       capture_output=True, text=True, timeout=50, env=env)
    assert r.returncode == 3, r.stderr
    assert "timed out" not in r.stderr


def test_a_rank_that_fails_before_init_does_not_leave_the_others_waiting(tmp_path, monkeypatch):
    """MPI_Init waits for every rank holding the GIL, out of the Python watchdog's reach: rank 0
    waited for ever for a rank 1 that had raised before init(). MPICH's mpiexec lets rank 0 wait,
    so fastnn's start-up watchdog must end it; Open MPI's mpiexec aborts the job itself when a rank
    exits non-zero (seen on the lent GPU host), before any watchdog can fire."""
    monkeypatch.setenv("FASTNN_STARTUP_TIMEOUT", "3")          # rather than 120 s
    r = job(2, "fail_before_init", tmp_path / "p.npy", timeout=60)
    assert r.returncode != 0
    assert "deliberate failure on rank 1 before init" in r.stderr, r.stderr
    launcher = subprocess.run([str(MPIEXEC), "--version"], capture_output=True, text=True, timeout=30).stdout
    if "open-mpi" in launcher.lower():
        assert "exited with non-zero status" in r.stderr, r.stderr
    else:
        assert "Timeout (0:00:03)!" in r.stderr and "_start_mpi" in r.stderr, r.stderr


@pytest.mark.parametrize("value, limit", [(None, 120.0), ("", 120.0), ("600", 600.0), (" 7.5 ", 7.5), ("0", None),
                                          ("-1", None), ("inf", None), ("nan", None), ("2m", None)])
def test_the_start_up_limit_is_read_from_the_environment(value, limit, monkeypatch):
    """Ranks that work longer than 120 s before init() (a large data set loaded first) had the
    others ended by the start-up watchdog, with no way to wait longer."""
    from fastnn.distributed import runtime

    if value is None:
        monkeypatch.delenv("FASTNN_STARTUP_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("FASTNN_STARTUP_TIMEOUT", value)
    if limit is None:
        with pytest.raises(ValueError, match=f"FASTNN_STARTUP_TIMEOUT: expected a number of seconds > 0, got "
                                             f"{value.strip()!r}"):
            runtime.startup_limit()
    else:
        assert runtime.startup_limit() == limit


def test_stuck_collective_aborts_naming_rank_and_step(tmp_path):
    r = job(2, "stall", tmp_path / "p.npy", "steps=50", "timeout=2", timeout=60)
    assert r.returncode != 0
    assert "[fastnn rank 0/2] collective timed out" in r.stderr
    assert "at step 4 did not complete within 2 s" in r.stderr


def test_killed_rank_ends_the_job_and_checkpoint_resumes(tmp_path):
    out = tmp_path / "p.npy"
    r = job(2, "kill", out, "steps=50", timeout=60)
    assert r.returncode != 0
    fnn.manual_seed(0)
    model = fnn.Sequential(fnn.Dense(64, 32, activation="relu", dtype=np.float64),
                           fnn.Dense(32, 32, activation="tanh", dtype=np.float64), fnn.Dense(32, 10, dtype=np.float64))
    opt = fnn.optim.Adam(model, lr=1e-2)
    ckpt = f"{out}.ckpt.npz"
    info = fnn.checkpoint.load(ckpt, model, opt)
    step = info["step"]
    assert step >= 4 and opt.step_count == step
    # intact: the parameters one process has after the same steps (global batch 32)
    ref = tmp_path / "ref.npy"
    assert job(0, "equivalence", ref, f"steps={step}").returncode == 0
    np.testing.assert_allclose(model.flat.data, np.load(ref), rtol=0, atol=1e-12)
    # resumable: continuing from it to step 12 equals 12 uninterrupted steps
    full, resumed = tmp_path / "full.npy", tmp_path / "resumed.npy"
    assert job(0, "equivalence", full, "steps=12").returncode == 0
    r = job(0, "equivalence", resumed, "steps=12", f"resume_from={ckpt}")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(resumed), np.load(full), rtol=0, atol=1e-12)


def test_timeline_records_overlapped_buckets_or_the_sharded_step(tmp_path):
    import json

    for shard in ("0", "1"):
        trace = tmp_path / f"trace{shard}.json"
        r = job(2, "equivalence", tmp_path / "p.npy", "steps=5", "batch=24", f"timeline={trace}", f"shard={shard}")
        assert r.returncode == 0, r.stderr
        events = json.loads(trace.read_text())["traceEvents"]
        name = "allreduce bucket" if shard == "0" else "sum + update own share"
        spans = [e for e in events if e["name"].startswith(name)]
        assert {e["args"]["step"] for e in spans} == {1, 2, 3, 4, 5}
        if shard == "0":
            assert len({e["name"] for e in spans}) >= 2  # several buckets per step


@pytest.mark.parametrize("options", [("overlap=none", "transport=mpi"), ("shard=1",), ("overlap=thread",)])
def test_overlap_fraction_measures_each_reduction_against_its_own_step(options, tmp_path):
    """Each reduction was measured against the next step() mark at or after its start, which for
    one run inside step() is the following step's: overlap="none" and the sharded step, which
    hide nothing, reported 1.0."""
    import json

    trace, out = tmp_path / "trace.json", tmp_path / "p.npy"
    r = job(2, "equivalence", out, "steps=5", "batch=24", f"timeline={trace}", *options)
    assert r.returncode == 0, r.stderr
    fraction = float((tmp_path / "p.npy.overlap").read_text())
    events = json.loads(trace.read_text())["traceEvents"]
    called = {e["args"]["step"]: e["ts"] for e in events if e["name"] == "step() called"}
    spans = [e for e in events if e["ph"] == "X" and not e["name"].endswith("(wait)")]
    assert spans and {e["args"]["step"] for e in spans} <= set(called)
    hidden = sum(np.clip(called[e["args"]["step"]] - e["ts"], 0, e["dur"]) for e in spans)
    assert fraction == pytest.approx(hidden / sum(e["dur"] for e in spans), abs=1e-12)
    if "thread" not in options[0]:
        assert fraction == 0.0


def test_a_users_collective_between_backward_and_step_does_not_meet_the_buckets(single, tmp_path):
    """The communication thread reduced buckets on the user's communicator: a loss logged with
    allreduce_mean between backward and step was matched against a bucket's allreduce, and
    MPI stopped the job ("message truncated")."""
    out = tmp_path / "p.npy"
    r = job(2, "equivalence", out, "steps=20", "batch=24", "overlap=thread", "transport=mpi", "log_loss=1")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), single, rtol=0, atol=1e-12)


@pytest.mark.parametrize("overlap", ["thread", "none"])
def test_second_backward_before_step_is_refused(overlap, tmp_path):
    """As Horovod does: in every overlap mode (thread mode used to reduce the first backward's
    buckets while the second one wrote into them: the ranks' parameters differed)."""
    r = job(2, "twice", tmp_path / "p.npy", f"overlap={overlap}", "transport=mpi", timeout=60)
    assert r.returncode != 0
    assert "backward() ran again before step()" in r.stderr, r.stderr


@pytest.mark.parametrize("transport", ["mpi", "auto"])
def test_wrapping_a_model_again_retires_the_first_wrapper(transport, tmp_path):
    """The first wrapper's backward hook used to stay: with thread overlap both reduced the
    gradients, and the ranks' parameters differed from each other and from one process."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    r = job(0, "rewrap", ref, "opt=sgd", "batch=24", timeout=60)
    assert r.returncode == 0, r.stderr
    r = job(2, "rewrap", out, "opt=sgd", "overlap=thread", f"transport={transport}", "batch=24", timeout=90)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-12)


@pytest.mark.parametrize("again", ["mpi", "unsharded"])
def test_an_unsharded_wrapper_after_a_sharded_one_updates_each_ranks_own_parameters(again, tmp_path):
    """A sharded wrapper leaves the parameters one copy in shared memory for the machine: a
    second wrapper with an unsharded step (transport="mpi", or shard_optimizer=False) applied
    every rank's update to that copy, once per rank. The first wrapper's own optimizer, which
    updates only its rank's share, is refused in it (the ranks' parameters diverged)."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    r = job(0, "rewrap", ref, "opt=sgd", "batch=24", timeout=60)
    assert r.returncode == 0, r.stderr
    r = job(2, "rewrap", out, "opt=sgd", "overlap=none", "batch=24", f"again={again}", timeout=90)
    assert r.returncode == 0, r.stderr
    for rank in range(2):
        assert f"rank {rank}: DataParallel: this optimizer was sharded by an earlier DataParallel" in r.stdout, r.stdout
    assert Path(f"{out}.transport").read_text() == ("mpi" if again == "mpi" else "shm")
    np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-12)


def test_a_step_that_raised_on_a_nonfinite_gradient_is_over(tmp_path):
    """With accumulate_steps, a FloatingPointError left the step half-counted on several ranks:
    zero_grad kept the sum and every later step raised again (one process went on)."""
    ref, out = tmp_path / "one.npy", tmp_path / "p.npy"
    common = ("opt=sgd", "accumulate=2")
    r = job(0, "nan_accumulate", ref, *common, timeout=60)
    assert r.returncode == 0, r.stderr
    for transport in ("mpi", "shm"):
        r = job(2, "nan_accumulate", out, *common, f"transport={transport}", timeout=90)
        assert r.returncode == 0, r.stderr
        np.testing.assert_allclose(np.load(out), np.load(ref), rtol=0, atol=1e-12)


def test_cli_usage_errors_print_once_under_mpiexec(tmp_path):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    for argv in (["--batch-size", "0"], ["--grow-batch", "8"], ["--batch-size", "1"]):     # 1: fewer than ranks
        r = subprocess.run([str(MPIEXEC), "-n", "2", str(BIN / "fastnn"), "train", *argv], capture_output=True,
                           text=True, timeout=120, env=env, cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.count("fastnn train: error: argument") == 1, r.stderr       # rank 0's, not every rank's


def test_cli_refuses_fewer_training_samples_than_ranks_under_mpiexec(tmp_path):
    """One training image on 2 ranks: every batch was dropped, and the run took no step, exited 0
    and claimed that the checkpoint had trained --epochs epochs."""
    for prefix in ("train", "t10k"):
        fnn.data.write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((1, 4, 4), np.uint8))
        fnn.data.write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.zeros(1, np.uint8))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    r = subprocess.run([str(MPIEXEC), "-n", "2", str(BIN / "fastnn"), "train", "--data", str(tmp_path),
                        "--checkpoint", str(tmp_path / "c.npz"), "--no-progress"], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    # one line from rank 0 (Open MPI's mpiexec adds its own report of the exit status below it)
    assert r.stderr.count("fastnn train:") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "expected at least one training sample per rank (2 ranks), got 1\n" in r.stderr
    assert not (tmp_path / "c.npz").exists()


def test_an_error_of_one_rank_inside_the_sharded_step_ends_the_job_at_once(tmp_path):
    """Rank 1's step() refused its lr before the step's collectives, then waited in the fence
    after the update while rank 0 waited in the norm's allreduce: the job ended at the timeout
    (60 s here), and only with the two timeouts' messages, never the ValueError."""
    import time

    began = time.perf_counter()
    r = job(2, "local_error_in_sharded_step", tmp_path / "p.npy", timeout=90)
    assert r.returncode != 0
    assert "ValueError: param_groups[0]: lr: expected a finite number >= 0, got -1.0" in r.stderr, r.stderr
    assert "timed out" not in r.stderr and time.perf_counter() - began < 45, r.stderr


def test_a_communicator_given_without_init_sets_up_the_runtime(tmp_path):
    r = job(2, "comm_arg", tmp_path / "p.npy", timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(re.findall(r"rank \d of \d", r.stdout)) == ["rank 0 of 2", "rank 1 of 2"]   # ranks' lines interleave


def test_rank_before_init_and_init_with_another_communicator_are_refused(tmp_path):
    """Under mpiexec, rank() and size() before init() said 0 and 1 on every rank (each rank
    then took itself for rank 0), and init(other) after init() returned the first communicator."""
    r = job(2, "before_init", tmp_path / "p.npy", timeout=60)
    assert r.returncode == 0, r.stderr
    for what in ("rank", "size"):
        assert r.stdout.count(f"refused: fastnn.distributed.{what}(): launched under mpiexec, but init() has not "
                              "run yet") == 2, r.stdout
    assert r.stdout.count("refused: init: already initialized with a communicator of 2 ranks, got another "
                          "(1 ranks)") == 2, r.stdout
    # not per line: the two ranks' prints interleave ("rank 0 of 2rank 1 of 2\n\n" in one CI run)
    assert sorted(re.findall(r"rank \d of 2", r.stdout)) == ["rank 0 of 2", "rank 1 of 2"], r.stdout   # not "of 1"


@pytest.mark.parametrize("var", ["PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"])
def test_the_launchers_rank_is_read_from_mpich_pmix_or_open_mpi(var, monkeypatch):
    """The rank before MPI starts (usage errors printed once, the worker's failing rank):
    Open MPI sets only OMPI_COMM_WORLD_RANK, and the MPICH-only reading ran rank 1's case on no rank."""
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert fnn.distributed.launched_rank() == 0
    monkeypatch.setenv(var, "3")
    assert fnn.distributed.launched_rank() == 3


def test_a_wrapped_model_copies_and_pickles_without_its_wrapper():
    """The wrapper's gradient hook went into every copy: deepcopy failed ('Sequential' object has no
    attribute '_flat'), and under mpiexec pickle met the communicator."""
    import copy
    import pickle

    model = fnn.Sequential(fnn.Dense(4, 3, dtype=np.float64), fnn.Dense(3, 2, dtype=np.float64))
    fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=0.1))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(clone.flat.data, model.flat.data)
        assert clone._grad_hooks == [] and not np.shares_memory(clone.flat.data, model.flat.data)
        clone(np.ones((2, 4)))
        clone.backward(np.ones((2, 2)))
        assert clone.flat.grad.any() and not model.flat.grad.any()
    assert len(model._grad_hooks) == 1                      # the original stays wrapped


def test_single_process_without_mpiexec_is_a_pass_through():
    model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    opt = fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=0.1), accumulate_steps=2)
    model.flat.grad[:] = 1.0
    before = model.flat.data.copy()
    assert opt.step() is False
    opt.zero_grad()  # between micro-batches: keeps the accumulated gradient
    model.flat.grad[:] += 3.0
    assert opt.step() is True
    real = np.zeros(model.flat.data.size, bool)
    for s in model.flat.slots.values():
        real[s.start:s.start + s.size] = True
    np.testing.assert_allclose(model.flat.data[real], before[real] - 0.1 * 2.0)


def test_single_process_wrapper_forwards_writes_and_refuses_what_many_ranks_refuse():
    model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    plain, wrapped = fnn.optim.SGD(model, lr=1.0), None
    wrapped = fnn.distributed.DataParallel(model, plain)
    wrapped.max_grad_norm = 0.01                       # set on the wrapped optimizer, as reading reads it there
    assert plain.max_grad_norm == 0.01
    before = model.flat.data.copy()
    model.flat.grad[:] = 10.0
    wrapped.step()
    assert np.abs(model.flat.data - before).max() <= 0.01 + 1e-12
    x = np.ones((4, 3))
    with pytest.raises(RuntimeError, match="backward\\(\\) after step\\(\\) without zero_grad"):
        model.backward(model(x))
    assert (model.flat.grad == 10.0).all()            # refused before it wrote anything
    wrapped.zero_grad()
    model.backward(model(x))
    with pytest.raises(RuntimeError, match="backward\\(\\) ran again before step\\(\\)"):
        model.backward(model(x))
    wrapped.step()
    newer = fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=0.5))
    with pytest.raises(RuntimeError, match="replaced by a newer DataParallel"):
        wrapped.step()
    model.backward(model(x))
    assert newer.step() is True


def test_schedule_on_an_accumulating_wrapper_counts_optimizer_steps():
    model = fnn.Sequential(fnn.Dense(3, 2, dtype=np.float64))
    opt = fnn.distributed.DataParallel(model, fnn.optim.SGD(model, lr=1.0), accumulate_steps=4)
    sched = fnn.schedules.Step(opt, step_size=1, gamma=0.5)
    for _ in range(8):
        model.flat.grad[:] = 1.0
        opt.step()
        sched.step()
        opt.zero_grad()
    assert opt.step_count == 2 and sched.t == 2 and opt.param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize("kw,error,match", [
    ({"bucket_cap_mb": "25"}, TypeError, "bucket_cap_mb: expected a finite number of megabytes > 0, got str '25'"),
    ({"timeline": 5}, TypeError, "timeline: expected a file path or None, got int 5"),
    ({"first_bucket_mb": float("inf")}, ValueError,
     "first_bucket_mb: expected a finite number of megabytes > 0, got inf"),
    ({"first_bucket_mb": None}, TypeError, "first_bucket_mb: .* got NoneType None"),
    ({"bucket_cap_mb": 0}, ValueError, "bucket_cap_mb: expected a finite number of megabytes > 0, got 0"),
    ({"timeout": "10"}, TypeError, "DataParallel timeout: expected a number of seconds > 0 or None, got str '10'"),
    ({"comm": "world"}, TypeError, "comm: expected an MPI communicator"),
    ({"deterministic": "no"}, TypeError, "deterministic: expected a bool, got str 'no'"),
    ({"shard_optimizer": "yes"}, TypeError, "shard_optimizer: expected True, False or None, got str 'yes'"),
    ({"accumulate_steps": 2.5}, TypeError, "accumulate_steps: expected an int >= 1, got float 2.5"),
    ({"shard_optimizer": True, "compression": "fp16"}, ValueError, "shard_optimizer=True needs the shared-memory"),
    ({"shard_optimizer": True, "transport": "mpi"}, ValueError, "shard_optimizer=True needs the shared-memory"),
    ({"model": "net"}, TypeError, "DataParallel: expected a fastnn model .a Module. to wrap, got str 'net'"),
    # None said "the optimizer must be built on this model", naming nothing
    ({"optimizer": None}, TypeError, r"DataParallel: expected a fastnn optimizer \(fnn.optim.X\(model, ...\)\), got "
                                     "NoneType None"),
])
def test_bad_argument_types(kw, error, match):
    model = fnn.Sequential(fnn.Dense(3, 2))
    opt = fnn.optim.SGD(model)
    with pytest.raises(error, match=match):     # a str model said: 'str' object has no attribute 'flat'
        fnn.distributed.DataParallel(kw.pop("model", model), kw.pop("optimizer", opt), **kw)


def test_a_wrapper_is_refused_as_the_optimizer_and_tiny_buckets_hold_one_parameter_each():
    """Wrapping a DataParallel again failed only at step() (a TypeError about grad_scale); a
    bucket size under one byte (1e-7 MB) was cut to 0 bytes and refused as not positive."""
    model = fnn.Sequential(fnn.Dense(3, 2), fnn.Dense(2, 2))
    wrapped = fnn.distributed.DataParallel(model, fnn.optim.SGD(model))
    with pytest.raises(TypeError, match="expected a fastnn optimizer, got a DataParallel"):
        fnn.distributed.DataParallel(model, wrapped)
    tiny = fnn.distributed.DataParallel(model, fnn.optim.SGD(model), bucket_cap_mb=1e-7, first_bucket_mb=1e-7)
    assert [b.names for b in tiny.buckets] == [("1.bias",), ("1.weight",), ("0.bias",), ("0.weight",)]


def test_allreduce_mean_refuses_a_ragged_sequence_by_name():
    """A ragged list raised NumPy's "inhomogeneous shape" ValueError, naming no function."""
    with pytest.raises(TypeError, match="allreduce_mean: expected a number or a 1-D sequence of numbers, got list"):
        fnn.distributed.allreduce_mean([1.0, [2.0, 3.0]])


def test_bf16_encoding_keeps_every_nan_a_nan():
    """Round-to-nearest carried a NaN's full payload into the exponent and sign: 0x7FFFFFFF
    became -0.0 and 0xFFFFFFFF +0.0, so a NaN gradient reached the optimizer as zero."""
    from fastnn.distributed.compression import from_bf16, to_bf16

    x = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0x3F808000], np.uint32).view(np.float32)
    bits, back = np.empty(4, np.uint16), np.empty(4, np.float32)
    to_bf16(x, bits)
    from_bf16(bits, back)
    assert np.isnan(back[:3]).all() and back[3] == np.float32(1.0)   # 1 + 2**-8: a tie, to even


def test_timeouts_and_init_are_checked_before_anything_changes():
    from mpi4py import MPI

    from fastnn.distributed import runtime

    for bad, error in (("5", TypeError), (0, ValueError), (-1, ValueError), (True, TypeError)):
        for call in (lambda: runtime.barrier(timeout=bad), lambda: runtime.allreduce_mean(1.0, timeout=bad)):
            with pytest.raises(error, match="timeout: expected a number of seconds > 0 or None"):
                call()
    hooks = sys.excepthook
    for threads, error in ((-1, ValueError), (0, ValueError), ("2", TypeError)):
        with pytest.raises(error, match="init: threads_per_rank: expected an int >= 1"):
            fnn.distributed.init(MPI.COMM_SELF, threads_per_rank=threads)
    with pytest.raises(TypeError, match="init: expected an MPI communicator or None, got str"):
        fnn.distributed.init("world")
    assert not fnn.distributed.is_initialized() and sys.excepthook is hooks


@pytest.mark.parametrize("kw,match", [({"overlap": "later"}, "overlap"), ({"compression": "int8"}, "compression"),
    ({"deterministic": True, "compression": "fp16"}, "expected one of them"),
                                      ({"accumulate_steps": 0}, "accumulate_steps"), ({"timeout": 0}, "timeout"),
                                      ({"timeout": -1.0}, "timeout"),
                                      ({"transport": "tcp"}, "transport: expected one of"),
                                      ({"transport": "shm", "compression": "fp16"}, "takes neither compression")])
def test_bad_arguments(kw, match):
    model = fnn.Sequential(fnn.Dense(3, 2))
    with pytest.raises(ValueError, match=match):
        fnn.distributed.DataParallel(model, fnn.optim.SGD(model), **kw)
    with pytest.raises(ValueError, match="built on this model"):
        fnn.distributed.DataParallel(model, fnn.optim.SGD(fnn.Sequential(fnn.Dense(3, 2))))


def test_batchnorm_running_statistics_start_as_rank_0s(tmp_path):
    """Wrapping broadcasts rank 0's buffers with its parameters (each rank set its own values
    first); afterwards each rank tracks its own batches, as DDP with broadcast_buffers=False."""
    r = job(2, "bn_buffers", tmp_path / "p.npy", timeout=90)
    assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        assert f"rank {rank} wrapped mean 1.0 count 1" in r.stdout and f"rank {rank} count 6" in r.stdout, r.stdout


def test_a_rank_without_batchnorm_statistics_is_refused_at_wrap_time(tmp_path):
    r = job(2, "bn_buffers", tmp_path / "p.npy", "untracked_rank=1", timeout=60)
    assert r.returncode != 0
    assert "ranks [1] differ from rank 0: the buffers (name, shape, dtype) are [('1.running_mean', [32], 'float64')" \
        in r.stderr, r.stderr


def test_cli_ctrl_c_under_mpiexec_ends_the_job_with_the_resume_hint(tmp_path):
    """SIGINT to mpiexec (Ctrl-C) printed a KeyboardInterrupt traceback from every rank and no
    word on where to go on from."""
    import signal
    import time

    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    ck = tmp_path / "c.npz"
    p = subprocess.Popen([str(MPIEXEC), "-n", "2", str(BIN / "fastnn"), "train", "--epochs", "1000",
                          "--checkpoint", str(ck), "--checkpoint-every", "5", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not ck.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ck.exists(), "no checkpoint was written"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode != 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert re.search(rf"\] fastnn train: interrupted; {re.escape(str(ck))} holds step \d+: go on from there with "
                     r"--resume", err), err


def test_cli_start_up_error_on_one_rank_stops_every_rank(tmp_path):
    """--data missing on one machine only: that rank returned alone (printing nothing, as only
    rank 0 printed) and the others waited in a collective until the 300 s watchdog."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    args = ["train", "--epochs", "1", "--no-progress", "--checkpoint", str(tmp_path / "c.npz")]
    r = subprocess.run([str(MPIEXEC), "-n", "1", str(BIN / "fastnn"), *args, ":", "-n", "1", str(BIN / "fastnn"),
                        *args, "--data", str(tmp_path / "absent")], capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and f"fastnn train: --data {tmp_path / 'absent'}: no MNIST file found" in r.stderr
    assert r.stderr.endswith("(on rank 1; 1 of 2 ranks failed)\n"), r.stderr


def test_a_wrapper_no_longer_referenced_is_collected_with_its_thread(tmp_path):
    """The registry of live wrappers held each wrapper (and so its model) for ever, and each
    communication thread held its wrapper: a sweep that wrapped a model per trial grew without end."""
    r = job(2, "collected", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    lines = re.findall(r"rank (\d) models (\d+) threads (\d+)", r.stdout)     # (the ranks' lines may run together)
    assert sorted(lines) == [("0", "0", "0"), ("1", "0", "0")], r.stdout


def test_fit_refuses_a_shard_per_rank_and_warns_of_an_unwrapped_optimizer(tmp_path):
    """Each rank passing its own shard (as Horovod scripts load data) trained every rank on its
    share of its own shard, 1/K of the data, in silence; an optimizer left unwrapped trained K
    separate models that all wrote one checkpoint, in silence too."""
    r = job(2, "fit_misuse", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        assert f"rank {rank} refused: fit: expected the same x and y on every rank" in r.stdout, r.stdout
        assert f"rank {rank} warned: ['fit: 2 MPI ranks, but the optimizer is not a fastnn.distributed.DataParallel" \
               in r.stdout, r.stdout
        assert f"rank {rank} without targets: 1 steps" in r.stdout and f"rank {rank} object targets: 1 steps" \
               in r.stdout, r.stdout
