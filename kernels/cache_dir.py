"""A writable place for Numba's kernel cache, also in a read-only install (POSIX).

Numba caches a ``cache=True`` kernel in ``NUMBA_CACHE_DIR`` when set, else in the
``__pycache__`` beside its source when that is writable, else in the user's cache directory
(``~/.cache/numba``). An install that is read-only for the user running it, with no writable
home (a container image run as another user is the usual case), has none of these, and
``import fastnn`` failed at its first kernel with Numba's "cannot cache function ...: no
locator available". Then fastnn points ``NUMBA_CACHE_DIR`` at a directory of this user's own
under the system's temporary directory (mode 0700, refused when another user owns it), so the
kernels compile once there and load from it after. This module defines no kernel:
fastnn/__init__.py calls it before the first @njit.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numba
from numba.misc.appdirs import AppDirs

#: the directory fastnn chose for Numba's cache when no other was writable, else None
FALLBACK: str | None = None


def writable(path: str | Path) -> bool:
    """Numba's own test: the directory can be made and a file written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def user_cache() -> str:
    """Numba's user-wide cache directory (``~/.cache/numba`` on Linux)."""
    return AppDirs(appname="numba", appauthor=False).user_cache_dir


def ensure_writable_cache(kernels: Path = Path(__file__).parent) -> str | None:
    """Set ``NUMBA_CACHE_DIR`` (here and for child processes) to a per-user directory under the
    temporary directory when the user left it unset and neither ``kernels/__pycache__`` nor
    Numba's user-wide cache directory is writable. Returns the directory chosen, or None."""
    global FALLBACK
    if os.environ.get("NUMBA_CACHE_DIR") or writable(kernels / "__pycache__") \
            or writable(user_cache()):
        return None
    path = Path(tempfile.gettempdir()) / f"fastnn-numba-cache-{os.getuid()}"
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None             # nothing writable at all: Numba's own error names the kernel
    # cached kernels are code this process will run: only a directory of this user's own that
    # nobody else can write (a shared /tmp lets anyone make that name first)
    if st.st_uid != os.getuid() or st.st_mode & 0o022 or not path.is_dir() or not writable(path):
        return None
    os.environ["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR = FALLBACK = str(path)
    return FALLBACK
