"""Adding entries through a graph over the centroids (vault/index/assign.py) when exact assignment would take hours."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from helpers import clustered
from luna_vault.vault import EncoderFingerprint, Vault, append, build, get_index, search
from luna_vault.vault.index import assign as assign_mod
from luna_vault.vault.index.reach import list_of_entries
from luna_vault.vault.index.state import ivf_of

D = 32


def test_the_graph_is_used_only_above_the_work_limit() -> None:
    assert not assign_mod.uses_graph(1_000_000, 16384)  # 1M entries into 16,384 lists: exact (~4 min)
    assert assign_mod.uses_graph(10_000_000, 65536)  # 10M into 65,536: the graph (exact would take ~3 h)
    assert not assign_mod.uses_graph(100, 65536)  # a small append to a huge vault: exact


def test_graph_assignment_puts_entries_in_their_best_list_or_a_near_one_and_search_still_finds_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 16000
    x = clustered(n, D, seed=3, clusters=200)
    path = tmp_path / "g.vault"
    build(path, x, [f"p{i}" for i in range(n)], encoder=EncoderFingerprint("t", D, "w"), category="c",
          index="IVF256,PQ16x4fs")
    made = []
    real = faiss.IndexHNSWFlat
    monkeypatch.setattr(assign_mod, "GRAPH_MIN_WORK", 1)
    monkeypatch.setattr(faiss, "IndexHNSWFlat", lambda *a: made.append(a) or real(*a))
    ix = get_index(Vault.open(path))
    assert len(made) == 1 and made[0][0] == D
    ivf = ivf_of(faiss, ix.index)
    assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat)  # the flat quantizer is back after adding
    list_of = list_of_entries(faiss, ivf, n)
    assert (list_of >= 0).all()
    centroids = ix.coarse.centroids
    own = np.einsum("nd,nd->n", x, centroids[list_of])
    best = (x @ centroids.T).max(axis=1)
    assert np.mean(list_of == (x @ centroids.T).argmax(axis=1)) > 0.95
    assert (best - own).max() < 0.2  # never far from the best list
    res = search(Vault.open(path), x[:50], k=1)
    assert [r.ids[0] for r in res] == list(range(50))
    # a small append to the same index is assigned exactly
    extra = clustered(100, D, seed=4, clusters=200)
    monkeypatch.setattr(assign_mod, "GRAPH_MIN_WORK", 10**9)
    append(path, extra, [f"e{i}" for i in range(100)])
    ix2 = get_index(Vault.open(path))
    assert len(made) == 1 and ix2.index.ntotal == n + 100
    lo = list_of_entries(faiss, ivf_of(faiss, ix2.index), n + 100)[n:]
    np.testing.assert_array_equal(lo, (extra @ ix2.coarse.centroids.T).argmax(axis=1))
