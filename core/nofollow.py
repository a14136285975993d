"""Open a file of a folder from elsewhere (a vault) without following links: nothing outside the folder
is opened through a name inside it, and no pipe or device is opened at all.

The name is checked with lstat before anything is opened (so a link to /proc/self/environ, a FIFO
that would block, or a device is refused unopened), then opened with O_NOFOLLOW and O_NONBLOCK and
the opened descriptor checked again (a name swapped for a link or a pipe in between is refused too).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FLAGS |= getattr(os, "O_BINARY", 0)


class NotAPlainFile(OSError):
    """The name is a link, a folder, a pipe or a device, not a plain file: refused unopened."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a link (links are not followed out of the folder)"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a pipe, socket or device"


def open_plain(path: str | os.PathLike[str]) -> BinaryIO:
    """The regular file at `path` opened for reading, its last component not followed if it is a link.

    Raises FileNotFoundError when it is missing, NotAPlainFile (an OSError) when it is anything but a
    plain file. The caller names the folder: only the last component is protected.
    """
    path = Path(path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotAPlainFile(errno.EINVAL, f"{path.name} is {_kind(st.st_mode)}, not a plain file", str(path))
    try:
        fd = os.open(path, _FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:  # made a link after the lstat
            raise NotAPlainFile(errno.ELOOP, f"{path.name} is {_kind(stat.S_IFLNK)}", str(path)) from e
        raise
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):  # (replaced by another plain file in between is fine: atomic writes do that)
            raise NotAPlainFile(errno.EINVAL, f"{path.name} is {_kind(fst.st_mode)}, not a plain file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_plain_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` itself (not a link's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def sha256_plain(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of the plain file at `path` (opened by open_plain), read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open_plain(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
