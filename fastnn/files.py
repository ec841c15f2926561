"""Atomic file writes: a fresh temporary file in the target's folder, fsync, then rename.

A reader sees the old file or the whole new one, never a torn one, and concurrent writers
never share a temporary file (each gets its own name, opened with O_EXCL). Only a regular
file is ever replaced: a device, FIFO or socket at the path is refused (so is a path ending in
a separator, a folder's), and a symbolic link is followed (its target is replaced, the link
stays).
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a new binary file and move it to ``path`` in one step; returns the path.

    The file gets mode 0666 less the umask, as any file the user writes (mkstemp gives 0600); a
    file it replaces keeps its permission bits (a checkpoint made private stays private).
    A symbolic link at ``path`` is followed: the file it points to is replaced (the temporary
    file goes into that file's folder) and the link stays. An existing ``path`` that is not a
    regular file (a folder, a device such as /dev/null, a FIFO, a socket), or a path ending in
    a separator, raises OSError before anything is written. On any error the temporary file is removed and ``path`` is
    left as it was; once the rename is done, syncing the folder is best effort (it may not be
    readable).
    """
    _check_regular_or_absent(path)
    given = Path(path)
    path = Path(os.path.realpath(given))
    # the name cut short (48 characters, at most 192 bytes): one near the 255-byte limit left no room
    tmp = path.parent / f".{path.name[:48]}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        kept = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:                 # none there (or no folder: creating the file names why below)
        kept = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:            # named for the path asked for, not the temporary file's
        raise OSError(e.errno, f"cannot write {given} in {path.parent} ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            if kept is not None:
                try:
                    os.fchmod(fd, kept)
                except OSError:     # a file system without modes (vfat, some CIFS mounts): its default
                    pass
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
        return given
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return given


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
    """Raise OSError, naming ``what`` and ``path``, unless ``atomic_write`` can write ``path``:
    a regular file or nothing yet (a symbolic link: what it points to), in a folder where a
    file can be written (created if needed)."""
    if not str(path):
        raise OSError(f"cannot write {what}: expected a file path, got ''")
    _check_regular_or_absent(path, what)
    check_writable(Path(os.path.realpath(path)).parent, what)


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _check_regular_or_absent(path: str | os.PathLike, what: str | None = None) -> None:
    """Raise OSError unless ``path`` (symbolic links followed) is a regular file or does not
    exist: replacing it would turn a device, FIFO or socket into a plain file. A path ending
    in a separator, a folder's, is refused too: pathlib drops the separator, and the file
    written there was one that ``os.path.exists`` of the same path (a resume's test) never found."""
    target = f"cannot write {what} to {path}" if what else f"cannot write {path}"
    text = os.fspath(path)
    if text.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise IsADirectoryError(f"{target}: it ends in {text[-1]!r}, a folder's path, expected a file path")
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):     # nothing there (a dangling link: its target)
        return
    except OSError as e:
        raise OSError(f"{target} ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{target}: it is a folder, expected a file path")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise OSError(f"{target}: it is {kind}, expected a regular file or a new path")
