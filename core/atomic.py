"""Crash-safe file writes: temp file, fsync, rename, fsync the folder; and the writer lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

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
    """Hold the vault's writer lock: one writer at a time, readers never wait."""
    lock = FileLock(str(Path(folder) / ".lock"))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as e:
        raise VaultError(
            f"another process is writing to the vault {folder} (lock held for over {timeout:.0f} s); "
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
