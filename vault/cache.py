"""Opened vaults kept in memory across queries until their manifest changes (for ComfyUI and services)."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.filecache import FileCache
from .manifest import MANIFEST
from .store import Vault

_open: FileCache[Vault] = FileCache(16)


def open_cached(path: str | os.PathLike[str]) -> Vault:
    """The vault at `path`, reusing the opened one (and its search index) while its manifest is unchanged.

    Every write replaces the manifest, so an append, delete or rebuild is picked up on the next call.
    """
    p = Path(path).resolve()
    return _open.get(p, p / MANIFEST, Vault.open)


def forget(path: str | os.PathLike[str] | None = None) -> None:
    """Drop one cached vault (or all of them)."""
    _open.forget(None if path is None else Path(path).resolve())
