"""Entries no list represents (vault/index/outliers.py): which they are, and that a query finds them anyway."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from helpers import clustered
from luna_vault.vault import EncoderFingerprint, Vault, append, build, get_index
from luna_vault.vault.index import outliers as outliers_mod
from luna_vault.vault.index.coarse import ProbeRule
from luna_vault.vault.index.outliers import POOL_SHARE, merge
from luna_vault.vault.index.reach import list_of_entries
from luna_vault.vault.index.state import ivf_of

D = 32
ENC = EncoderFingerprint("test-vit", D, "w1")


def _vault(path: Path, n: int = 4000) -> np.ndarray:
    x = clustered(n, D, seed=3, clusters=12)
    build(path, x, [f"prompt {i}" for i in range(n)], [{} for _ in range(n)], encoder=ENC, category="o",
          index="IVF32,PQ8x4fs")
    return x


def _centroid_similarity(ix) -> np.ndarray:  # noqa: ANN001 - by hand: each entry against its own list's centroid
    ivf = ivf_of(faiss, ix.index)
    list_of = list_of_entries(faiss, ivf, ix.vault.n_entries)
    x = ix.vault.embeddings(np.arange(ix.vault.n_entries)).astype(np.float32)
    return np.einsum("ij,ij->i", x, ix.coarse.centroids[list_of])


def test_merge_keeps_the_best_estimates_each_id_once() -> None:
    dist = np.array([[0.9, 0.5, 0.4, -np.inf], [0.3, 0.2, 0.1, 0.0]], np.float32)
    cand = np.array([[7, 3, 5, -1], [1, 2, 3, 4]])
    pool_d = np.array([[0.95, 0.5, 0.45], [0.8, 0.7, 0.1]], np.float32)
    pool_i = np.array([[11, 3, 12], [9, -1, 3]])
    got = merge(dist, cand, pool_d, pool_i, 4)
    # row 0: 11 (0.95), 7 (0.9), 3 once (0.5), 12 (0.45); row 1: 9 (0.8) then the lists' 1, 2, 3 (3 once)
    np.testing.assert_array_equal(got, [[11, 7, 3, 12], [9, 1, 2, 3]])
    for r in range(2):  # one query alone (its own path): the same rows
        np.testing.assert_array_equal(merge(dist[r:r + 1], cand[r:r + 1], pool_d[r:r + 1], pool_i[r:r + 1], 4), got[r:r + 1])
    # nothing in the pool beats the lists' last candidate: the lists' candidates as they are
    same = merge(dist[1:], cand[1:], np.array([[-0.5, 0.0]], np.float32), np.array([[8, 9]]), 4)
    np.testing.assert_array_equal(same, [[1, 2, 3, 4]])


def test_the_pool_holds_the_entries_least_like_their_centroid_and_survives_reopening(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "o.vault"
    _vault(path)
    ix = get_index(Vault.open(path))
    sims = _centroid_similarity(ix)
    m = int(round(POOL_SHARE * 4000))
    want = np.sort(np.argsort(sims, kind="stable")[:m])
    assert m == 8 and ix.state.outliers == want.tolist()
    assert ix.outliers is not None and ix.outliers.ntotal == m
    q = clustered(50, D, seed=3, clusters=12, sample_seed=8)
    want_d, want_i = ix.outliers.search(q, 4)
    with monkeypatch.context() as mp:  # from this machine's cache: the same pool, read from outliers.faiss
        mp.setattr(outliers_mod, "pool_index", lambda *a: pytest.fail("the pool was coded again"))
        again = get_index(Vault.open(path))
    assert again.state.built_at == ix.state.built_at and again.state.outliers == want.tolist()
    got_d, got_i = again.outliers.search(q, 4)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d)
    # a damaged outliers.faiss, or one written for other entries, is coded again from the vectors
    for damage in (b"not a faiss file", None):
        if damage is None:  # a well-formed pool of other entries (ids shifted by one)
            other = outliers_mod.pool_index(faiss, ix.index, ix.vault, want + 1)
            faiss.write_index(other, str(ix.folder / "outliers.faiss"))
        else:
            (ix.folder / "outliers.faiss").write_bytes(damage)
        mended = get_index(Vault.open(path))
        assert mended.state.built_at == ix.state.built_at
        np.testing.assert_array_equal(faiss.vector_to_array(mended.outliers.id_map), want)
        np.testing.assert_array_equal(mended.outliers.search(q, 4)[1], want_i)
        with monkeypatch.context() as mp:  # ... and written again for the next open
            mp.setattr(outliers_mod, "pool_index", lambda *a: pytest.fail("the pool was coded again"))
            assert get_index(Vault.open(path)).outliers.ntotal == m
    # an append chooses them again over all entries
    y = clustered(1000, D, seed=4, clusters=12, sample_seed=9)
    append(path, y, [f"new {i}" for i in range(1000)], encoder=ENC)
    grown = get_index(Vault.open(path))
    assert len(grown.state.outliers) == 10
    np.testing.assert_array_equal(grown.state.outliers, np.sort(np.argsort(_centroid_similarity(grown), kind="stable")[:10]))


def test_a_small_look_no_list_represents_is_found_when_its_lists_are_not_probed(tmp_path: Path) -> None:
    """Six images of a look far from every cluster (the 200k failure, scaled down): they land in lists made for
    other things; a new image of the look probing one list finds all six only through the pool."""
    rng = np.random.default_rng(5)
    centre = rng.standard_normal(D).astype(np.float32)
    look = centre / np.linalg.norm(centre) + 0.6 * rng.standard_normal((7, D)).astype(np.float32) / np.sqrt(D)
    look = (look / np.linalg.norm(look, axis=1, keepdims=True)).astype(np.float32)
    x = np.concatenate([clustered(4000, D, seed=3, clusters=12), look[:6]])
    n = len(x)
    path = tmp_path / "o.vault"
    build(path, x, [f"prompt {i}" for i in range(n)], [{} for _ in range(n)], encoder=ENC, category="o",
          index="IVF32,PQ8x4fs")
    ix = get_index(Vault.open(path))
    members = np.arange(4000, n)
    assert set(members) <= set(ix.state.outliers)  # the least like their lists' centroids of all 4,006
    list_of = list_of_entries(faiss, ivf_of(faiss, ix.index), n)
    q = look[6:]  # a new image of the look
    rule = ProbeRule(1)
    probed = ix.coarse.probes(q, rule).lists[0]
    assert not np.isin(list_of[members], probed).all()  # some of the look sit in lists this query does not probe
    cand, _, _ = ix.candidates(ix.index, q, 20, rule, None)
    pool, ix.outliers = ix.outliers, None
    without, _, _ = ix.candidates(ix.index, q, 20, rule, None)
    ix.outliers = pool
    assert np.isin(members, cand[0]).all()
    assert not np.isin(members, without[0]).all()
    _, ids = ix.search(q, 5)  # the exact top-5 (the look's six are the nearest)
    np.testing.assert_array_equal(np.sort(ids[0]), np.sort(np.argsort(-(x @ q[0]), kind="stable")[:5]))


def test_a_cached_index_from_before_the_pool_gets_one_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "o.vault"
    _vault(path)
    ix = get_index(Vault.open(path))
    want = ix.state.outliers
    state_file = ix.folder / "index.json"
    old = json.loads(state_file.read_text())
    del old["outliers"]  # as an index cached by an earlier version wrote it
    state_file.write_text(json.dumps(old))
    again = get_index(Vault.open(path))
    assert again.state.built_at == ix.state.built_at  # loaded, not rebuilt
    assert again.state.outliers == want and again.outliers.ntotal == len(want)
    assert json.loads(state_file.read_text())["outliers"] == want  # recorded for the next open
