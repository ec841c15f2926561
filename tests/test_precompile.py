"""fastnn compile: the kernels a training run reaches are loaded from Numba's cache afterwards."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastnn
from fastnn.precompile import precompile

REPORT = """
import json, sys
import numba
from fastnn.precompile import _run
_run((sys.argv[1], sys.argv[2]))
stats = [(m.__name__ + "." + k, d.stats) for m in list(sys.modules.values()) if (getattr(m, "__name__", None) or "").startswith("fastnn")
         for k, d in vars(m).items() if isinstance(d, numba.core.dispatcher.Dispatcher)]
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for _, s in stats),
                  "compiled": sorted({n for n, s in stats if s.cache_misses})}))
"""


@pytest.mark.parametrize("part", ["dense", "spatial"])
def test_a_second_process_compiles_nothing(part):
    """The first process compiles what the part reaches (or loads it: make test runs
    fastnn compile first); a second one must load every kernel from the cache."""
    runs = [subprocess.run([sys.executable, "-c", REPORT, "float64", part], capture_output=True, text=True,
                           timeout=280) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    second = json.loads(runs[1].stdout)
    assert second["compiled"] == [] and second["hits"] > 10, second


def test_cli_compile_reports_each_task(capsys):
    from fastnn.cli import main

    assert main(["compile", "--dtype", "float64", "float64", "--jobs", "1"]) == 0     # each dtype once
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[:2]] == [["float64", "dense"], ["float64", "spatial"]]
    assert out[2].startswith("kernels cached in ")


@pytest.mark.parametrize("dtypes, jobs, match", [(("float16",), None, "expected dtypes among"),
                                                 ((), None, "expected dtypes among"),
                                                 (("float32",), 0, "jobs: expected an int >= 1, got 0")])
def test_precompile_refuses_bad_arguments(dtypes, jobs, match):
    with pytest.raises(ValueError, match=match):
        precompile(dtypes, jobs)
    with pytest.raises(TypeError, match="precompile: expected a dtype name or a tuple of them .* got NoneType"):
        precompile(None)


def test_a_failing_task_is_named():
    from fastnn.precompile import _results

    with pytest.raises(RuntimeError, match="compiling float32 nonexistent failed: KeyError"):
        list(_results([("float32", "nonexistent")], 1))


@pytest.mark.parametrize("jobs", [1.5, True, "2"])
def test_jobs_must_be_an_int(jobs):
    """A float or a bool was passed on to the worker pool (1.5 failed at the first result with
    Python's "'float' object cannot be interpreted as an integer"; True ran one worker)."""
    with pytest.raises(TypeError, match=f"precompile: jobs: expected an int >= 1, got {type(jobs).__name__}"):
        precompile(("float32",), jobs)


def test_one_dtype_name_is_one_dtype(monkeypatch):
    """precompile("float32") refused its own dtype letter by letter (['f', 'l', 'o', ...])."""
    import fastnn.precompile as pc

    monkeypatch.setattr(pc, "_results", lambda tasks, jobs: (tasks, jobs))
    assert precompile("float32", 4) == ([("float32", "dense"), ("float32", "spatial")], 2)


def test_a_spatial_part_waits_for_its_dtypes_dense_part_while_another_task_can_start():
    """Both parts compile the matmul kernels: side by side, a dtype's two parts compiled them
    twice (fastnn compile took 160 s on 2 cores, both dtypes)."""
    from fastnn.precompile import _next_task

    f32, f64 = [("float32", p) for p in ("dense", "spatial")], [("float64", p) for p in ("dense", "spatial")]
    assert _next_task(f32 + f64, []) == f32[0]
    assert _next_task(f32[1:] + f64, [f32[0]]) == f64[0]
    assert _next_task([f32[1], f64[1]], [f32[0]]) == f64[1]          # float64's dense part is over
    assert _next_task([f32[1]], [f64[1]]) == f32[1]
    assert _next_task([f32[1]], [f32[0]]) == f32[1]                  # nothing else to run: side by side


def _no_writable_cache(monkeypatch, tmp_path):
    """The install and Numba's user-wide directory read-only; the temporary directory tmp_path."""
    import numba

    from fastnn.kernels import cache_dir

    # set, then removed: monkeypatch then removes at teardown what ensure_writable_cache sets
    # (left behind, it sent every later subprocess of the suite to an empty cache: cold compiles)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setattr(cache_dir, "FALLBACK", None)
    monkeypatch.setattr(cache_dir.tempfile, "gettempdir", lambda: str(tmp_path))
    writable = cache_dir.writable
    monkeypatch.setattr(cache_dir, "writable", lambda p: str(p).startswith(str(tmp_path)) and writable(p))
    return cache_dir, tmp_path / f"fastnn-numba-cache-{os.getuid()}"


def test_a_read_only_install_caches_kernels_in_a_directory_of_the_users_own(monkeypatch, tmp_path):
    import numba

    from fastnn.sysinfo import report

    cache_dir, expected = _no_writable_cache(monkeypatch, tmp_path)
    assert cache_dir.ensure_writable_cache() == str(expected)
    assert os.environ["NUMBA_CACHE_DIR"] == numba.config.CACHE_DIR == str(expected)
    assert expected.stat().st_mode & 0o777 == 0o700
    assert dict(report())["kernel cache"].startswith(f"{expected} (set by fastnn: the install and the user's")


def test_a_cache_directory_another_user_could_write_is_refused(monkeypatch, tmp_path):
    cache_dir, expected = _no_writable_cache(monkeypatch, tmp_path)
    expected.mkdir(mode=0o777)
    expected.chmod(0o777)           # as another user of a shared /tmp could have made it first
    assert cache_dir.ensure_writable_cache() is None and "NUMBA_CACHE_DIR" not in os.environ


def test_a_cache_directory_left_to_the_user_is_kept(monkeypatch, tmp_path):
    import numba

    from fastnn.kernels import cache_dir

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    assert cache_dir.ensure_writable_cache() is None and cache_dir.FALLBACK is None
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert cache_dir.ensure_writable_cache() is None        # this checkout's kernels/__pycache__ is writable


def test_the_fallback_cache_directory_does_not_outlive_its_test():
    """Runs after the tests above (file order): they left NUMBA_CACHE_DIR set, and every later
    subprocess of the suite compiled its kernels afresh into an empty directory (a minute)."""
    assert "fastnn-numba-cache" not in os.environ.get("NUMBA_CACHE_DIR", "")


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs util-linux unshare for a read-only mount")
def test_import_and_a_kernel_run_from_a_read_only_install_with_a_read_only_home(tmp_path):
    """Numba refused every cache=True kernel there ("no locator available"), so import fastnn
    failed. A private mount namespace makes a copy of the package and a home read-only."""
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(fastnn.__file__).parent, site / "fastnn", ignore=ignore)
    shutil.rmtree(site / "fastnn" / "kernels", ignore_errors=True)
    shutil.copytree(Path(fastnn.kernels.__file__).parent, site / "fastnn" / "kernels", ignore=ignore)
    (tmp_path / "home").mkdir()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    probe = ("import fastnn, numpy as np; from fastnn.kernels.cache_dir import FALLBACK; "
             "from fastnn.kernels.reduce import add_column_sums; out = np.zeros(2); "
             "add_column_sums(np.ones((3, 2)), out); print(FALLBACK, out[0])")
    home = tmp_path / "home"
    script = (f"mount --bind {site} {site} && mount -o remount,ro,bind {site} && "
              f"mount --bind {home} {home} && mount -o remount,ro,bind {home} && {sys.executable} -c '{probe}'")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "GOMP_SPINCOUNT", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(site), TMPDIR=str(tmpdir))
    r = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], capture_output=True, text=True,
                       timeout=280, env=env, cwd=tmp_path)
    if "mount" in r.stderr and r.returncode != 0 and "Traceback" not in r.stderr:
        pytest.skip(f"no private read-only mount here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmpdir / f"fastnn-numba-cache-{os.getuid()}"), "3.0"], r.stdout


def test_the_spatial_part_reaches_batchnorms_threaded_kernels():
    """Its CNNs' BatchNorm saw too few values for the threaded kernels, so the first real one
    compiled them (5 s) in every process. Checked in a process of its own: in this one, earlier
    tests may have run the kernels already."""
    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: no threaded kernels to reach")
    probe = ("from fastnn.kernels import batchnorm; from fastnn.precompile import _run; "
             "_run(('float64', 'spatial')); "
             "print([len(k.signatures) for k in "
             "(batchnorm.two_sums_cpu, batchnorm.affine_cpu, batchnorm.affine2_cpu)])")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr
    assert all(n > 0 for n in json.loads(r.stdout)), r.stdout


@pytest.mark.timeout(120)
def test_a_stopped_compile_ends_its_workers_instead_of_waiting_for_them():
    """Ctrl-C during fastnn compile waited for the running compiles (over a minute) and left a
    traceback: the pool forgets its workers once shut down, so they were never ended."""
    import time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from fastnn.precompile import _ending_workers

    with pytest.raises(KeyboardInterrupt):
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool, _ending_workers(pool):
            pool.submit(time.sleep, 300)
            workers = list(pool._processes.values())
            raise KeyboardInterrupt
    for w in workers:
        w.join(30)
    assert workers and all(w.exitcode in (-15, -9) for w in workers), workers    # a signal: not a finished sleep
