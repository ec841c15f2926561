"""Atomic file writes: a fresh temporary file in the target's folder, fsync, then rename.

A reader sees the old file or the whole new one, never a torn one, and concurrent writers
never share a temporary file (each gets its own name, opened with O_EXCL).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a new binary file and move it to ``path`` in one step; returns the path.

    The file gets mode 0666 less the umask, as any file the user writes (mkstemp gives 0600).
    On any error the temporary file is removed and ``path`` is left as it was; once the
    rename is done, syncing the folder is best effort (it may not be readable).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:                            # make the rename durable; best effort (a folder may not be readable)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def check_writable(folder: str | os.PathLike, what: str, hint: str = "") -> None:
    """Create ``folder`` if needed and raise OSError, naming ``what`` and the folder, unless
    a file can be written there: for long jobs to fail before their work, not after."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}.{secrets.token_hex(6)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write {what} in {folder} ({e.strerror or e}){hint}") from e


def check_file_target(path: str | os.PathLike, what: str) -> None:
    """Raise OSError, naming ``what`` and ``path``, unless ``path`` can be written as a file:
    not a folder, in a folder where a file can be written (created if needed)."""
    if not str(path):
        raise OSError(f"cannot write {what}: expected a file path, got ''")
    if Path(path).is_dir():
        raise IsADirectoryError(f"cannot write {what} to {path}: it is a folder, expected a file path")
    check_writable(Path(path).parent, what)
