"""fastnn.memory: freed activations stay in the heap, measured as minor page faults of a
loop shaped like a training step (many MB-sized arrays allocated, touched, freed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from fastnn import memory, sysinfo
from fastnn.memory import OPT_OUT, allocator_status, glibc_version

glibc = pytest.mark.skipif(glibc_version() is None,
                           reason="mallopt thresholds are glibc's: under another C library fastnn leaves the "
                                  "allocator alone (test_other_libc_is_left_alone covers that)")
PAGES = 5 * (4 << 20) // os.sysconf("SC_PAGE_SIZE")     # what one round allocates

STEP_LOOP = """
import json, resource
import numpy as np
import fastnn
faults = []
for step in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(1 << 20, np.float32) for _ in range(5)]     # 5 x 4 MiB, written
    del arrays
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults[1:], "status": fastnn.memory.allocator_status()}))
"""


def step_faults(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in (OPT_OUT, "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", STEP_LOOP], capture_output=True, text=True, timeout=120,
                         env={**clean, **env}, check=True).stdout
    return json.loads(out.splitlines()[-1])


@glibc
def test_freed_arrays_are_reused_without_page_faults():
    kept = step_faults()
    default = step_faults(**{OPT_OUT: "0"})
    assert "freed memory kept" in kept["status"]
    assert max(kept["faults"]) < PAGES // 20, kept
    assert "defaults" in default["status"]
    assert min(default["faults"]) > PAGES // 4, default     # glibc's own policy: ~40 % faulted in each step


@glibc
@pytest.mark.parametrize("env", [{"MALLOC_TOP_PAD_": "0"}, {"MALLOC_ARENA_MAX": "2"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_user_malloc_settings_are_left_alone(env):
    user = step_faults(**env)      # any MALLOC_* variable or malloc tunable: fastnn does not call mallopt
    assert "the user's malloc settings" in user["status"]
    assert min(user["faults"]) > PAGES // 4, user


@pytest.mark.parametrize("value, off", [("0", True), ("false", True), (" Off ", True), ("no", True), ("1", False),
                                        ("", False)])
def test_the_opt_out_takes_what_users_write_for_off(value, off, monkeypatch):
    """Only "0" was read: FASTNN_KEEP_FREED_MEMORY=false kept the settings, silently."""
    monkeypatch.setattr(memory, "glibc_version", lambda: "2.39")
    def mallopt(*args):
        return 1

    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setitem(memory._state, "status", memory._state["status"])
    monkeypatch.setitem(memory._state, "applied", False)
    monkeypatch.setenv(OPT_OUT, value)
    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    assert memory.keep_freed_memory().startswith("glibc 2.39 defaults") is off


def test_an_opt_out_after_import_says_the_settings_stay(monkeypatch):
    """FASTNN_KEEP_FREED_MEMORY=0 set after import: the status said glibc's defaults while the
    32 MiB threshold set at import stayed (mallopt has no undo)."""
    monkeypatch.setattr(memory, "glibc_version", lambda: "2.39")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a: SimpleNamespace(mallopt=lambda *args: 1))
    monkeypatch.setitem(memory._state, "status", memory._state["status"])
    monkeypatch.setitem(memory._state, "applied", False)
    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(OPT_OUT, "1")
    assert memory.keep_freed_memory().startswith("glibc 2.39, freed memory kept")
    monkeypatch.setenv(OPT_OUT, "0")
    assert memory.keep_freed_memory().startswith("glibc 2.39, freed memory kept (mmap threshold 32 MiB, trim "
                                                 "threshold 256 MiB), set at import: FASTNN_KEEP_FREED_MEMORY=0")


def test_status_is_reported():
    assert allocator_status() in dict(sysinfo.report()).values()


def test_other_libc_is_left_alone(monkeypatch):
    monkeypatch.setattr(memory, "glibc_version", lambda: None)
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called off glibc"))
    monkeypatch.setitem(memory._state, "status", memory._state["status"])
    assert memory.keep_freed_memory() == "not glibc: allocator left as it is" == allocator_status()
