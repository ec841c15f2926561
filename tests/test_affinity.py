"""kernels/affinity.py: Numba's workers pinned each to a CPU, the calling thread never bound."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
    or os.environ.get("NUMBA_NUM_THREADS", "2") == "1" or os.environ.get("NUMBA_THREADING_LAYER", "omp") != "omp",
    reason="needs Linux, at least 2 CPUs and Numba's OpenMP layer with 2 threads")

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
p = affinity._current()
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
                                                           "KMP_AFFINITY", "FASTNN_PIN_THREADS")}
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
                                         ({"FASTNN_PIN_THREADS": " False"}, "FASTNN_PIN_THREADS= False"),   # pinned
                                         ({"FASTNN_PIN_THREADS": "off"}, "FASTNN_PIN_THREADS=off"),
                                         ({"OMP_PROC_BIND": "false"}, "OMP_PROC_BIND set (your binding")])
def test_pinning_is_off_when_asked_or_when_the_user_binds(env, reason):
    r = _probe(**env)
    assert r["cpus"] == [] and r["reason"].startswith(reason) and r["describe"].startswith("not pinned: " + reason)
    assert r["after"] == r["before"] and r["moved"] is None


def _run(code: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY",
                                                           "KMP_AFFINITY", "FASTNN_PIN_THREADS")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_one_thread_pins_nothing_and_more_threads_later_do():
    assert _run("""
from fastnn.kernels import affinity
a = affinity.pin(1).reason
affinity.keep_off(2)                     # more threads than were pinned for: pinned now
p = affinity._current()
print(a, p.threads, len(p.cpus))
""", NUMBA_NUM_THREADS="2") == "one thread 2 2"


def test_a_team_larger_than_the_cpus_keeps_the_pinning_it_has():
    n = len(os.sched_getaffinity(0))
    assert _run(f"""
import os, numpy as np
import fastnn
from fastnn.kernels import affinity
a = np.ones((200, 200), np.float32)
fastnn.matmul(a, a, threads=2)
fastnn.matmul(a, a, threads={n + 1})     # more threads than CPUs: nothing more to pin
p = affinity._current()
worker = open(f"/proc/self/task/{{p.tids[1]}}/status").read().split("Cpus_allowed_list:")[1].split()[0]
os.sched_setaffinity(0, {{p.cpus[1]}}); os.sched_setaffinity(0, affinity.os.sched_getaffinity(0) | set(range({n})))
affinity.keep_off(2)                     # the caller is still moved off the pinned worker
print(p.threads, worker == str(p.cpus[1]), affinity._getcpu() != p.cpus[1], affinity.describe().startswith("workers"))
""", NUMBA_NUM_THREADS=str(n + 1)) == "2 True True True"


def test_keep_off_restores_the_callers_mask_when_interrupted(monkeypatch):
    from fastnn.kernels import affinity

    p = affinity.Pinning(2, 2, [-1, 1], [0, 0], frozenset({0}), smallest=2)
    monkeypatch.setattr(affinity, "_current", lambda: p)
    monkeypatch.setattr(affinity, "_getcpu", lambda: 1)
    before = os.sched_getaffinity(0)
    real, calls = os.sched_setaffinity, []

    def interrupted(pid, cpus):          # Ctrl-C right after the caller was moved
        real(pid, cpus)
        calls.append(set(cpus))
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(affinity.os, "sched_setaffinity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        affinity.keep_off(2)
    assert calls == [{0}, before] and os.sched_getaffinity(0) == before


def test_keep_off_leaves_a_caller_you_bound_to_a_worker_cpu(monkeypatch):
    from fastnn.kernels import affinity

    p = affinity.Pinning(2, 2, [-1, 1], [0, 0], frozenset({0}), smallest=2)
    monkeypatch.setattr(affinity, "_current", lambda: p)
    monkeypatch.setattr(affinity, "_getcpu", lambda: 1)
    monkeypatch.setattr(affinity.os, "sched_getaffinity", lambda pid: {1})
    monkeypatch.setattr(affinity.os, "sched_setaffinity", lambda pid, cpus: pytest.fail("moved a bound caller"))
    affinity.keep_off(2)


@pytest.mark.parametrize("masks, me, threads, share", [
    ([(0, 1, 2, 3)] * 2, 1, 2, [2, 3]),          # two unbound ranks on 4 CPUs: the second half
    ([(0, 1, 2, 3)] * 2, 0, 2, [0, 1]),
    ([(0, 1)] * 2, 1, 1, [1]),                   # one thread each: one CPU each (nothing to pin)
    ([(0, 1)] * 2, 1, 2, []),                    # 4 threads on 2 CPUs: no pinning
    ([(0, 1), (2, 3), (4, 5), (6, 7)], 3, 2, [6, 7]),     # mpiexec -bind-to core/socket: its own
    ([(0, 1, 2, 3)] * 2 + [(4, 5, 6, 7)] * 2, 3, 2, [6, 7]),   # bound by socket, two ranks each
    ([(0, 1, 2, 3)] * 2, 1, 3, []),              # a cpuset shared by ranks: 6 threads on 4 CPUs
    ([(0, 1, 2), (2, 3)], 0, 1, []),             # overlapping, unequal sets: no pinning
])
def test_a_rank_pins_within_its_share(masks, me, threads, share):
    from fastnn.distributed import runtime

    assert runtime._share(masks, me, threads) == share


MASKS = """
def masks(threads):
    tids = np.zeros(threads, np.int64)
    affinity._worker_tids(tids)          # the workers a team of this size runs on now
    return [open(f"/proc/self/task/{t}/status").read().split("Cpus_allowed_list:")[1].split()[0]
            for t in tids[1:]]
"""


def test_workers_that_libgomp_replaced_are_pinned_again():
    assert _run("""
import numba, numpy as np
from fastnn.kernels import affinity
""" + MASKS + """
affinity.configure([0, 1, 0, 1])         # a 4-CPU share, on a machine of 2 or more CPUs
affinity.keep_off(4)
first = masks(4)
affinity.keep_off(2); numba.set_num_threads(2); masks(2)    # a smaller team: libgomp ends workers 2, 3
numba.set_num_threads(4); affinity.keep_off(4)
print(first, masks(4))
""", NUMBA_NUM_THREADS="4") == "['1', '0', '1'] ['1', '0', '1']"


def test_each_calling_thread_has_its_workers_pinned():
    assert _run("""
import threading, numba, numpy as np
from fastnn.kernels import affinity
""" + MASKS + """
helper = threading.Thread(target=lambda: affinity.keep_off(2))
helper.start(); helper.join()            # the helper's own OpenMP workers, now gone with it
affinity.keep_off(2)                     # the main thread's workers: pinned too
print(masks(2))
""", NUMBA_NUM_THREADS="2") == "['1']"


FORK_CHILD = r"""
import json, multiprocessing as mp, numba, numpy as np, fastnn

def work(q):
    a = np.random.default_rng(0).random((300, 300), np.float32)
    q.put((float(np.abs(fastnn.matmul(a, a) - a.astype(np.float64) @ a).max()), numba.get_num_threads()))

if __name__ == "__main__":
    a = np.random.default_rng(0).random((300, 300), np.float32)
    fastnn.matmul(a, a, threads=2)                 # a parallel region in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=work, args=(q,))
    p.start()
    p.join(60)
    print(json.dumps({"exit": p.exitcode, "child": None if q.empty() else q.get(), "parent": numba.get_num_threads()}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform (Windows): there is no forked child to check")
def test_a_forked_child_computes_after_the_parent_ran_threads():
    """On GNU OpenMP a forked child's first parallel region killed it ("Terminating: fork()
    called from a process already using GNU OpenMP"): the child now runs one thread."""
    r = subprocess.run([sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["exit"] == 0 and "Terminating" not in r.stderr, r.stdout + r.stderr
    error, child_threads = got["child"]
    assert error < 1e-3 and child_threads == 1, got
    assert got["parent"] == 2, got                                   # the parent keeps its threads


@pytest.mark.parametrize("before, kept", [("pass", True), ("numba.set_num_threads(1)", False)])
def test_the_spin_count_is_set_only_while_openmp_has_not_read_its_environment(before, kept):
    """Once Numba's OpenMP threads ran (set_num_threads or a parallel kernel before import
    fastnn), libgomp had read its environment: fastnn info still said it set GOMP_SPINCOUNT."""
    code = f"""
import json, os, numba
{before}
import fastnn
from fastnn import sysinfo
print(json.dumps([fastnn.SPINCOUNT_SET, os.environ.get("GOMP_SPINCOUNT"), sysinfo._omp_wait_status()]))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}   # pytest's import
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got[:2] == ([True, "20000"] if kept else [False, None]), got
    assert ("set by fastnn" if kept else "started before import fastnn, too late") in got[2], got
