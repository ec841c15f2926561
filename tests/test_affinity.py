"""kernels/affinity.py: Numba's workers pinned each to a CPU, the calling thread never bound."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux and at least 2 CPUs")

PROBE = r"""
import json, os, subprocess, sys
import numpy as np
import fastnn
from fastnn.kernels import affinity

def mask(tid):
    with open(f"/proc/self/task/{tid}/status") as f:
        line = next(l for l in f if l.startswith("Cpus_allowed_list"))
    return line.split()[1]

before = sorted(os.sched_getaffinity(0))
a = np.random.default_rng(0).random((300, 300), np.float32)
np.testing.assert_allclose(fastnn.matmul(a, a, threads=2), a @ a, rtol=1e-4)
p = affinity._state["pinning"]
moved = None
if p.cpus:
    # put this thread on the worker's CPU, allow it everything again: keep_off must move it
    os.sched_setaffinity(0, {p.cpus[1]})
    os.sched_setaffinity(0, set(before))
    on_worker = affinity._getcpu() == p.cpus[1]
    affinity.keep_off(2)
    moved = [on_worker, affinity._getcpu() in p.caller_cpus]
child = subprocess.run([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps(dict(before=before, after=sorted(os.sched_getaffinity(0)), cpus=p.cpus, reason=p.reason,
                      workers={t: mask(tid) for t, tid in enumerate(p.tids) if t},
                      caller=sorted(p.caller_cpus), moved=moved, child=int(child),
                      describe=affinity.describe())))
"""


def _probe(**env):
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY",
                                                           "FASTNN_PIN_THREADS")}
    e.update(NUMBA_NUM_THREADS="2", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=e, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_worker_is_pinned_and_the_calling_thread_is_not():
    r = _probe()
    assert r["reason"] == "" and r["cpus"] == [-1, r["before"][1]]
    assert r["workers"] == {"1": str(r["before"][1])}            # the worker's own mask: one CPU
    assert r["after"] == r["before"]                             # the caller's mask untouched
    assert r["child"] == len(r["before"])                        # so a process it starts has every CPU
    assert r["caller"] == [r["before"][0]] + r["before"][2:]
    on_worker, moved_off = r["moved"]
    if on_worker:                                                # the scheduler left it there: keep_off moves it
        assert moved_off
    assert "workers pinned (1 -> CPU" in r["describe"]


@pytest.mark.parametrize("env, reason", [({"FASTNN_PIN_THREADS": "0"}, "FASTNN_PIN_THREADS=0"),
                                         ({"OMP_PROC_BIND": "false"}, "OMP_PROC_BIND set (your binding")])
def test_pinning_is_off_when_asked_or_when_the_user_binds(env, reason):
    r = _probe(**env)
    assert r["cpus"] == [] and r["reason"].startswith(reason) and r["describe"].startswith("not pinned: " + reason)
    assert r["after"] == r["before"] and r["moved"] is None


def test_one_thread_pins_nothing_and_more_threads_later_do(monkeypatch):
    from fastnn.kernels import affinity

    monkeypatch.delenv("FASTNN_PIN_THREADS", raising=False)
    for k in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setitem(affinity._state, "pinning", None)
    monkeypatch.setitem(affinity._state, "share", None)
    assert affinity.pin(1).reason == "one thread"
    affinity.keep_off(2)                       # more threads than were pinned for: pinned now
    assert affinity._state["pinning"].threads == 2 and len(affinity._state["pinning"].cpus) == 2


@pytest.mark.parametrize("mask, cpu_count, rank, ranks, threads, share", [
    ([0, 1, 2, 3], 4, 1, 2, 2, [2, 3]),       # two ranks on 4 CPUs: the second half
    ([0, 1, 2, 3], 4, 0, 2, 2, [0, 1]),
    ([0, 1], 2, 1, 2, 1, [1]),                 # one thread each: one CPU each (nothing to pin)
    ([0, 1], 2, 1, 2, 2, []),                  # 4 threads on 2 CPUs: no pinning
    ([6, 7], 8, 3, 4, 2, [6, 7]),              # the launcher bound this rank (mpiexec -bind-to)
    ([6], 8, 3, 4, 2, []),
])
def test_a_rank_pins_within_its_share(monkeypatch, mask, cpu_count, rank, ranks, threads, share):
    from fastnn.distributed import runtime

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(mask))
    monkeypatch.setattr(os, "cpu_count", lambda: cpu_count)
    assert runtime._share(rank, ranks, threads) == share
