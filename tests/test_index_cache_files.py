"""The cached index's side files (vault/index/state.py): reopening reuses them instead of making them again."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from helpers import clustered
from luna_vault.vault import EncoderFingerprint, Vault, build, get_index
from luna_vault.vault.index import coarse as coarse_mod
from luna_vault.vault.index.state import centroid_digest

D = 32


def test_the_centroid_digest_is_of_the_centroids_as_saved_even_on_fp16_ties() -> None:
    """index.faiss keeps the centroids as fp16, rounded by faiss (ties away from zero), where numpy rounds ties to
    even: the digest made at build must equal the one of the centroids read back."""
    lo, hi = np.float16(0.0300903), np.nextafter(np.float16(0.0300903), np.float16(1))
    tie = np.float32((np.float32(lo) + np.float32(hi)) / 2)  # exactly between two fp16 values
    centroids = np.full((4, D), tie, np.float32)
    assert np.float32(lo) < tie < np.float32(hi)
    sq = faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_fp16)
    sq.add(centroids)
    read_back = sq.reconstruct_n(0, 4)  # what loading index.faiss gives
    assert not np.array_equal(read_back.astype(np.float16), centroids.astype(np.float16))  # the two roundings differ
    assert centroid_digest(read_back) == centroid_digest(centroids)
    assert centroid_digest(read_back) != centroid_digest(read_back + np.float32(0.01))


def test_reopening_reads_the_coarse_fast_pass_instead_of_training_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 16000
    x = clustered(n, D, seed=3, clusters=200)
    path = tmp_path / "c.vault"
    build(path, x, [f"p{i}" for i in range(n)], [{} for _ in range(n)], encoder=EncoderFingerprint("t", D, "w"),
          category="c", index="IVF256,PQ16x4fs")
    ix = get_index(Vault.open(path))
    assert ix.coarse.fast is not None and ix.coarse.fast.ntotal == 256
    q = clustered(20, D, seed=3, clusters=200, sample_seed=5)
    want = ix.coarse.fast.search(q, 8)
    with monkeypatch.context() as mp:
        mp.setattr(coarse_mod, "fast_pass", lambda c: pytest.fail("the fast pass was trained again"))
        again = get_index(Vault.open(path))
    assert again.state.built_at == ix.state.built_at
    got = again.coarse.fast.search(q, 8)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    # a cache whose digest does not match (as earlier versions wrote it): made again once, then kept
    state_file = ix.folder / "index.json"
    old = json.loads(state_file.read_text())
    old["coarse_digest"] = "made by numpy's rounding"
    state_file.write_text(json.dumps(old))
    made = []
    real = coarse_mod.fast_pass
    with monkeypatch.context() as mp:
        mp.setattr(coarse_mod, "fast_pass", lambda c: made.append(len(c)) or real(c))
        get_index(Vault.open(path))
        assert made == [256]
        third = get_index(Vault.open(path))
        assert made == [256] and third.state.built_at == ix.state.built_at
    assert json.loads(state_file.read_text())["coarse_digest"] == centroid_digest(third.coarse.centroids)
