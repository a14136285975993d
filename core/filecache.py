"""Objects loaded from files, kept in memory until the file that stamps them changes (the nodes reuse
opened vaults and projectors across queries; every write replaces the stamping file)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def file_stamp(path: Path) -> tuple[int, int]:
    """(mtime in ns, size): changes whenever an atomic write replaces the file."""
    st = path.stat()
    return st.st_mtime_ns, st.st_size


class FileCache(Generic[T]):
    """Least-recently-used cache of up to `size` loaded objects, keyed by path and the stamp of a file."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[tuple[int, int], T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, stamp_file: Path, load: Callable[[Path], T]) -> T:
        """The object loaded from `path`, reloaded when `stamp_file` changed since; `load` raises for a missing file."""
        try:
            stamp = file_stamp(stamp_file)
        except FileNotFoundError:
            return load(path)  # the loader's own helpful error
        key = str(path)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1]
        obj = load(path)
        with self._lock:
            self._items[key] = (stamp, obj)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return obj

    def forget(self, path: Path | None = None) -> None:
        """Drop one cached object (or all of them)."""
        with self._lock:
            if path is None:
                self._items.clear()
            else:
                self._items.pop(str(path), None)
