"""Crash-safe file writes: temp file, fsync, rename, fsync the folder; and the writer lock."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from .errors import UnsafeNameError, VaultError

_UMASK = os.umask(0)
os.umask(_UMASK)
FOLDER_MODE = 0o777 & ~_UMASK  # what mkdir gives a folder; tempfile.mkdtemp's are private (0700) until set to this
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+\-]{0,199}$")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync the result, then rename it over `path`.

    A crash at any point leaves either the old `path` or the new one, never a partial file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # writers that use private temp files (safetensors) leave 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def writer_lock(folder: Path, timeout: float = 30.0) -> Iterator[None]:
    """Hold the vault's writer lock (`folder/.lock`): one writer at a time, readers never wait.

    The lock file is never followed if it is a link (a stranger's vault could link it to one of your files,
    which opening would create or truncate), and the lock counts only if the file locked is still the one
    at `folder/.lock` once held: an install that swapped the folder in meanwhile sends the waiter round again,
    to lock the new vault's file.
    """
    path = Path(folder) / ".lock"
    if fcntl is None:  # no flock (Windows): filelock's lock, same file
        yield from _filelock(path, timeout)
        return
    deadline = time.monotonic() + timeout
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise VaultError(
                    f"another process is writing to the vault {folder} (lock held for over {timeout:.0f} s); "
                    "wait for it to finish, then try again") from None
            time.sleep(0.02)
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            st, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
            same = (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the folder was replaced while we waited: lock what is there now
    try:
        yield
    finally:
        os.close(fd)  # releases the flock


def _open_lock_file(path: Path) -> int:
    """The lock file's descriptor, created if missing; VaultError when the name is a link or not a plain file."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise VaultError(f"{path} is not a plain file (a link, folder or device): a vault's writer lock is a "
                             "plain file; the vault folder was tampered with, restore it from a good copy")
    except FileNotFoundError:
        pass
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                       | getattr(os, "O_NONBLOCK", 0), 0o666 & ~_UMASK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VaultError(f"{path} is a link: a vault's writer lock is a plain file; the vault folder was "
                             "tampered with, restore it from a good copy") from e
        raise


def _filelock(path: Path, timeout: float) -> Iterator[None]:
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as e:
        raise VaultError(
            f"another process is writing to the vault {path.parent} (lock held for over {timeout:.0f} s); "
            "wait for it to finish, or remove the stale .lock file if no writer is running"
        ) from e
    try:
        yield
    finally:
        lock.release()


def check_name(name: str, what: str = "name") -> str:
    """Refuse names that could leave their folder: `..`, absolute paths, separators, odd characters."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise UnsafeNameError(
            f"{what} {name!r} is not a plain name: use letters, digits, spaces, '.', '_', '+', '-' only, "
            "no path separators and no '..'"
        )
    return name
