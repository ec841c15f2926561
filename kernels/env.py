"""What the process's environment says: on/off switches (FASTNN_PIN_THREADS,
FASTNN_KEEP_FREED_MEMORY) and whether Numba's OpenMP threads run already.

A switch is off for "0", "false", "no" or "off" (any case, spaces around ignored), as users
write them; only "0" was read before, and "false" silently left the setting on. This module
defines no kernel: fastnn/__init__.py asks it before the first @njit fixes Numba's CPU features.
"""
from __future__ import annotations

import os

import numba

OFF = ("0", "false", "no", "off")


def switched_off(name: str) -> bool:
    """True when the environment variable ``name`` is set to one of OFF."""
    return os.environ.get(name, "").strip().lower() in OFF


def openmp_started() -> bool:
    """True once Numba started its threads on GNU OpenMP (a parallel kernel ran, or
    numba.set_num_threads was called): libgomp has read its environment, and a process forked
    now must not start another parallel region."""
    try:
        return numba.threading_layer() == "omp"
    except ValueError:          # no threading layer started yet
        return False
