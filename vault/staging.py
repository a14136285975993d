"""Temporary folders and files beside a vault or package being written (install, pack): held locked while
their writer runs, removed by the next run once that writer is gone (kill -9 included), and swapped
into place atomically.

A writer holds an flock on its staging item for as long as it lives; the kernel drops it when the
process dies, however it dies. So a leftover is exactly a staging item that can be locked by someone
else: the next install or pack of the same name removes those, and never one still being written.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers are not recognised there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK = ".lock"
UNLOCKED_GRACE_S = 600.0  # a staging folder without a lock file is a leftover once this old (an older version's)


def staging_pattern(name: str, kinds: tuple[str, ...]) -> re.Pattern[str]:
    """Names of the staging items for `name`: `.NAME.KIND-...` (KIND e.g. installing, replaced, tmp)."""
    return re.compile(r"^\." + re.escape(name) + r"\.(?:" + "|".join(map(re.escape, kinds)) + r")-[A-Za-z0-9_.-]+$")


def lock_held(path: Path) -> bool:
    """Whether a live process holds the flock on `path` (a staging file, or a staging folder's lock file).

    Opened without following links; a missing or unlockable-because-odd file counts as not held."""
    if fcntl is None:
        return True  # cannot tell: keep it
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock


def hold(fd: int) -> None:
    """Take the flock that marks a staging file as being written (released when the process ends)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_leftovers(folder: Path, pattern: re.Pattern[str]) -> list[str]:
    """Remove the staging items in `folder` matching `pattern` whose writer is gone; returns their names.

    A folder counts as abandoned when its lock file can be locked, or it has none and is empty (its writer
    died before making it) or older than UNLOCKED_GRACE_S; a file when it can be locked itself. Links are
    never followed nor removed.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not pattern.match(e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        path = Path(e.path)
        if stat.S_ISDIR(st.st_mode):
            lock = path / LOCK
            if os.path.lexists(lock):
                if lock_held(lock):
                    continue
                shutil.rmtree(path, ignore_errors=True)
            else:  # killed before its lock file existed (empty), or left by a version that locked nothing (old)
                try:
                    os.rmdir(path)
                except OSError:
                    if time.time() - st.st_mtime < UNLOCKED_GRACE_S:
                        continue
                    shutil.rmtree(path, ignore_errors=True)
        elif stat.S_ISREG(st.st_mode):
            if lock_held(path):
                continue
            try:
                path.unlink()
            except OSError:
                continue
        else:
            continue
        log.info("removed %s, left by an interrupted run", path)
        removed.append(e.name)
    return removed


def _renameat2() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): True when done, False where the
    system or file system cannot (the caller then renames in two steps)."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:  # type: ignore[operator]
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot swap {a.name} and {b.name}: {os.strerror(err)}")
