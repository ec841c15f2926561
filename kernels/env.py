"""On/off switches read from the environment (FASTNN_PIN_THREADS, FASTNN_KEEP_FREED_MEMORY).

A switch is off for "0", "false", "no" or "off" (any case, spaces around ignored), as users
write them; only "0" was read before, and "false" silently left the setting on.
"""
from __future__ import annotations

import os

OFF = ("0", "false", "no", "off")


def switched_off(name: str) -> bool:
    """True when the environment variable ``name`` is set to one of OFF."""
    return os.environ.get(name, "").strip().lower() in OFF
