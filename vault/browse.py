"""Looking through a vault and curating it: pages of entries, text search over prompts, "more like
this" from a stored embedding, and deletions (with undo until compaction) that refuse a stale view.

What the vault browser in ComfyUI's sidebar serves (nodes/routes.py); no ComfyUI here. Pages are
bounded and computed from the opened snapshot, so a 500k-entry vault is never sent whole.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import QueryError, VaultError
from .manifest import vault_name
from .ops import _copy_from
from .query import get_index, search_arrays
from .store import Vault, VaultWriter

MAX_PAGE = 200
MAX_TEXT = 200
MAX_IDS = 10_000  # entries one request may delete, restore or export
PROMPT_CHARS = 300  # a page carries prompts cut to this length; the entry route gives the whole one


class StaleViewError(VaultError):
    """The vault changed since the client looked at it; reload before changing it."""


def generation(vault: Vault) -> int:
    """The manifest version a client saw: every commit increments it."""
    return vault.manifest.generation


def summary(vault: Vault) -> dict[str, Any]:
    """One line of the vault list."""
    info = vault.info()
    return {"name": vault.name, "entries": len(vault), "prompts": vault.n_prompts, "category": vault.category,
            "encoder": vault.encoder.name, "dim": vault.dim, "mode": info["mode"],
            "text_family": vault.text.family if vault.text else None, "bytes": info["bytes"]["total"],
            "thumbnails": vault.has_thumbnails, "deleted": vault.manifest.deleted_count, "generation": generation(vault),
            "tuned": info.get("tuned")}


class _PromptIndex:
    """Lower-cased prompts of one snapshot and, per prompt id, its live entries: text search without a scan
    of the entries (built once per snapshot, on the first text search)."""

    def __init__(self, vault: Vault) -> None:
        self.lower = [vault.prompt(p).lower() for p in range(vault.n_prompts)]
        live = np.flatnonzero(vault.live_mask())
        pids = vault.prompt_ids(live) if len(live) else np.zeros(0, np.int64)
        order = np.argsort(pids, kind="stable")
        self.entries_sorted, self.pids_sorted = live[order], pids[order]

    def entries(self, text: str) -> np.ndarray:
        needle = text.lower()
        hits = np.fromiter((p for p, s in enumerate(self.lower) if needle in s), np.int64)
        if not len(hits):
            return np.zeros(0, np.int64)
        lo = np.searchsorted(self.pids_sorted, hits, "left")
        hi = np.searchsorted(self.pids_sorted, hits, "right")
        return np.sort(np.concatenate([self.entries_sorted[a:b] for a, b in zip(lo, hi)]))


_prompt_indexes: OrderedDict[tuple[str, str, int], _PromptIndex] = OrderedDict()
_lock = threading.Lock()


def _prompt_index(vault: Vault) -> _PromptIndex:
    key = (str(vault.path), vault.manifest.vault_id, generation(vault))  # one snapshot (every commit moves it on)
    with _lock:
        hit = _prompt_indexes.get(key)
    if hit is None:
        hit = _PromptIndex(vault)
        with _lock:
            _prompt_indexes[key] = hit
            while len(_prompt_indexes) > 4:
                _prompt_indexes.popitem(last=False)
    return hit


def _entry(vault: Vault, i: int, prompt_chars: int = PROMPT_CHARS) -> dict[str, Any]:
    pid = int(vault.prompt_ids([i])[0])
    prompt = vault.prompt(pid)
    return {"id": int(i), "prompt": prompt[:prompt_chars], "truncated": len(prompt) > prompt_chars,
            "prompt_id": pid, "metadata": vault.metadata(int(i)), "thumbnail": bool(vault.thumbnail(int(i)))}


def matching(vault: Vault, text: str = "", filter: str = "") -> np.ndarray:
    """Ids of the live entries whose prompt contains `text` (case-insensitive) and that pass `filter`."""
    if len(text) > MAX_TEXT:
        raise QueryError(f"search text is {len(text)} characters; at most {MAX_TEXT}")
    ids = _prompt_index(vault).entries(text) if text.strip() else np.flatnonzero(vault.live_mask())
    if filter.strip():
        ids = ids[vault.filter_mask(filter)[ids]]
    return ids


def page(vault: Vault, offset: int = 0, limit: int = 60, text: str = "", filter: str = "") -> dict[str, Any]:
    """One page of entries (id order), with the total that match and the manifest version seen."""
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError(f"limit must be 1..{MAX_PAGE}, got {limit}")
    if offset < 0:
        raise QueryError(f"offset must be >= 0, got {offset}")
    ids = matching(vault, text, filter)
    return {"vault": vault.name, "generation": generation(vault), "total": int(len(ids)), "offset": offset,
            "entries": [_entry(vault, int(i)) for i in ids[offset: offset + limit]]}


def entry(vault: Vault, entry_id: int) -> dict[str, Any]:
    """One entry, with its whole prompt; deleted entries are shown as such (they can be restored)."""
    _check_ids(vault, [entry_id])
    out = _entry(vault, entry_id, prompt_chars=1 << 20)
    out["deleted"] = not bool(vault.live_mask()[entry_id])
    return out


def similar(vault: Vault, entry_id: int, k: int = 24) -> dict[str, Any]:
    """"More like this": the k live entries nearest to one entry's stored embedding (no encoder needed)."""
    _check_ids(vault, [entry_id])
    if not 1 <= k <= MAX_PAGE:
        raise QueryError(f"k must be 1..{MAX_PAGE}, got {k}")
    get_index(vault)
    kk = min(k + 1, len(vault))
    sims, ids = search_arrays(vault, vault.embeddings([entry_id]).astype(np.float32), kk)
    rows = [(int(i), float(s)) for i, s in zip(ids[0], sims[0]) if i >= 0 and i != entry_id][:k]
    return {"vault": vault.name, "generation": generation(vault), "of": int(entry_id),
            "entries": [{**_entry(vault, i), "similarity": round(s, 6)} for i, s in rows]}


def _check_ids(vault: Vault, ids: Sequence[int]) -> np.ndarray:
    """The ids as int64, each checked against the vault before any conversion (an id past 64 bits included)."""
    ids = list(ids)
    if len(ids) > MAX_IDS:
        raise QueryError(f"{len(ids)} entries in one request; at most {MAX_IDS}")
    n = vault.n_entries
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n:
            raise QueryError(f"entry ids must lie in 0..{n - 1}, got {str(i)[:30]}")
    return np.asarray(ids, dtype=np.int64)


def _writer(path: Path, seen: int) -> VaultWriter:
    w = VaultWriter.open(path)
    if w.base.generation != seen:
        w.abort()
        raise StaleViewError(f"vault '{vault_name(path)}' changed since you looked at it (version {seen}, now "
                             f"{w.base.generation}); reload it, then choose again")
    return w


def _change(path: str | os.PathLike[str], ids: Sequence[int], seen: int, action: str) -> dict[str, Any]:
    path = Path(path)
    arr = _check_ids(Vault.open(path), ids)
    with _writer(path, seen) as w:
        n = w.delete_ids(arr) if action == "deleted" else w.restore_ids(arr)
    v = Vault.open(path)
    return {action: n, "entries": len(v), "generation": generation(v)}


def delete(path: str | os.PathLike[str], ids: Sequence[int], seen: int) -> dict[str, Any]:
    """Delete entries, if the vault is still at version `seen`. Undo with restore() until a compaction."""
    return _change(path, ids, seen, "deleted")


def restore(path: str | os.PathLike[str], ids: Sequence[int], seen: int) -> dict[str, Any]:
    """Bring deleted entries back (possible until the vault is compacted), if the vault is still at `seen`."""
    return _change(path, ids, seen, "restored")


def export(path: str | os.PathLike[str], ids: Sequence[int], out: str | os.PathLike[str]) -> dict[str, Any]:
    """A new vault at `out` holding the given live entries (same encoder, baked conditioning kept)."""
    src = Vault.open(path)
    arr = _check_ids(src, ids)
    arr = np.unique(arr[src.live_mask()[arr]])
    if not len(arr):
        raise QueryError("nothing to export: none of the chosen entries is live")
    keep = np.zeros(src.n_entries, bool)
    keep[arr] = True
    with VaultWriter.create(out, src.encoder, src.category, text=src.text) as w:
        _copy_from(w, src, keep=keep)
    v = Vault.open(out)
    return {"vault": v.name, "entries": len(v), "generation": generation(v)}
