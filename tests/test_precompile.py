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
                                                 (("float32",), 0, "expected jobs >= 1, got 0")])
def test_precompile_refuses_bad_arguments(dtypes, jobs, match):
    with pytest.raises(ValueError, match=match):
        precompile(dtypes, jobs)


def test_a_failing_task_is_named():
    from fastnn.precompile import _results

    with pytest.raises(RuntimeError, match="compiling float32 nonexistent failed: KeyError"):
        list(_results([("float32", "nonexistent")], 1))
