"""Opened vaults kept in memory across queries until their manifest changes (for ComfyUI and services)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from .manifest import MANIFEST
from .store import Vault

_MAX_OPEN = 16
_open: OrderedDict[str, tuple[tuple[int, int], Vault]] = OrderedDict()
_lock = threading.Lock()


def _stamp(path: Path) -> tuple[int, int]:
    st = (path / MANIFEST).stat()
    return st.st_mtime_ns, st.st_size


def open_cached(path: str | os.PathLike[str]) -> Vault:
    """The vault at `path`, reusing the opened one (and its search index) while its manifest is unchanged.

    Every write replaces the manifest, so an append, delete or rebuild is picked up on the next call.
    """
    p = Path(path).resolve()
    try:
        stamp = _stamp(p)
    except FileNotFoundError:
        return Vault.open(p)  # raises the helpful "no vault here" error
    key = str(p)
    with _lock:
        hit = _open.get(key)
        if hit is not None and hit[0] == stamp:
            _open.move_to_end(key)
            return hit[1]
    vault = Vault.open(p)
    with _lock:
        _open[key] = (stamp, vault)
        _open.move_to_end(key)
        while len(_open) > _MAX_OPEN:
            _open.popitem(last=False)
    return vault


def forget(path: str | os.PathLike[str] | None = None) -> None:
    """Drop one cached vault (or all of them)."""
    with _lock:
        if path is None:
            _open.clear()
        else:
            _open.pop(str(Path(path).resolve()), None)
