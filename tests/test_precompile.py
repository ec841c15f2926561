"""fastnn compile: the kernels a training run reaches are loaded from Numba's cache afterwards."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

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

    assert main(["compile", "--dtype", "float64", "--jobs", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[:2]] == [["float64", "dense"], ["float64", "spatial"]]
    assert out[2].startswith("kernels cached in ")


@pytest.mark.parametrize("dtypes, jobs, match", [(("float16",), None, "expected dtypes among"),
                                                 ((), None, "expected dtypes among"),
                                                 (("float32",), 0, "jobs: expected an int >= 1, got 0")])
def test_precompile_refuses_bad_arguments(dtypes, jobs, match):
    with pytest.raises(ValueError, match=match):
        precompile(dtypes, jobs)


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
