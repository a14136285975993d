"""Two-pass indexes (vault/index/refine.py): the fused 8-bit scoring of 4-bit codes, the finer pass, and a vault
searched, cached and appended to through `IVF..,PQ..x4fs,Refine(PQ..x4)`."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from helpers import clustered
from luna_vault.core.errors import VaultFormatError
from luna_vault.vault import EncoderFingerprint, Vault, append, build, get_index
from luna_vault.vault.index import outliers
from luna_vault.vault.index.refine import FIRST_FACTOR, FinerCodes, first_pass_k, fused
from luna_vault.vault.manifest import check_index_spec
from luna_vault.vault.query import search_arrays

D = 32
ENC = EncoderFingerprint("test-vit", D, "w1")
SPEC = "IVF32,PQ8x4fs,Refine(PQ16x4)"


def _trained_pq(m: int, seed: int = 0) -> tuple[faiss.ProductQuantizer, np.ndarray]:
    x = clustered(3000, D, seed=seed)
    pq = faiss.ProductQuantizer(D, m, 4)
    pq.train(x)
    return pq, x


def test_fused_pairs_score_4_bit_codes_exactly_as_decoded() -> None:
    pq, x = _trained_pq(16)
    eight = fused(faiss, pq)
    assert (eight.M, eight.nbits, eight.dsub) == (8, 8, 4)
    codes = pq.compute_codes(x[:500])
    q = clustered(3, D, sample_seed=4)
    # the hand computation: each query against the decoded vectors
    want = q @ pq.decode(codes).T
    for b in range(3):
        dist, pos = np.empty(50, np.float32), np.empty(50, np.int64)
        heap = faiss.float_minheap_array_t()
        heap.nh, heap.k, heap.val, heap.ids = 1, 50, faiss.swig_ptr(dist), faiss.swig_ptr(pos)
        eight.search_ip(faiss.swig_ptr(np.ascontiguousarray(q[b : b + 1])), 1, faiss.swig_ptr(codes), 500, heap, True)
        np.testing.assert_allclose(dist, want[b, pos], atol=1e-5)
        np.testing.assert_allclose(dist, np.sort(want[b])[::-1][:50], atol=1e-5)


def test_fused_keeps_codes_that_do_not_pair() -> None:
    pq, _ = _trained_pq(8)
    odd = faiss.ProductQuantizer(D * 7 // 8, 7, 4)  # 7 sub-quantizers: no byte holds a pair
    assert fused(faiss, odd) is odd
    eight_bit = faiss.ProductQuantizer(D, 4, 8)
    assert fused(faiss, eight_bit) is eight_bit
    assert fused(faiss, pq) is not pq


def test_finer_pass_keeps_the_best_candidates_by_the_finer_code() -> None:
    x = clustered(2000, D, seed=1)
    index = faiss.index_factory(D, "IVF8,PQ8x4fs,Refine(PQ16x4)", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    finer = FinerCodes(faiss, index)
    assert finer.codes().shape == (2000, 8)
    refine = faiss.downcast_index(index.refine_index)
    decoded = refine.pq.decode(finer.codes())
    q = clustered(2, D, seed=1, sample_seed=3)
    cand = np.array([[5, 17, -1, 900, 1999, 3, 44, 1200],
                     [-1, -1, 7, -1, -1, -1, -1, -1]])
    got = finer.rescore(q, cand, 4)
    assert got.shape == (2, 4)
    ids = cand[0][cand[0] >= 0]
    want = ids[np.argsort(-(decoded[ids] @ q[0]), kind="stable")[:4]]
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[1], [7, -1, -1, -1])  # one candidate: the rest padded
    assert first_pass_k(10, 10_000) == 10 * FIRST_FACTOR and first_pass_k(10, 50) == 50


def test_refine_spec_is_checked() -> None:
    assert check_index_spec(SPEC, D) == SPEC
    with pytest.raises(VaultFormatError, match="PQ5 does not divide"):
        check_index_spec("IVF32,PQ8x4fs,Refine(PQ5x4)", D)
    with pytest.raises(VaultFormatError, match="not a known index family"):
        check_index_spec("IVF32,PQ8x4fs,Refine(Flat)", D)


def test_two_pass_vault_searches_caches_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "v.vault"
    x = clustered(4000, D, clusters=12)
    build(path, x, [f"prompt {i}" for i in range(4000)], encoder=ENC, category="v", index=SPEC)
    v = Vault.open(path)
    ix = get_index(v)
    assert isinstance(ix.index, faiss.IndexRefine) and ix.state.recall >= 0.97 and ix.finer is not None
    assert outliers.supported(faiss, ix.index)  # the pool shares the first pass's codebook
    q = clustered(100, D, clusters=12, sample_seed=5)
    sims, ids = search_arrays(v, q, k=5)
    stored = v.embeddings(np.arange(4000)).astype(np.float32)
    exact = q @ stored.T
    want = np.argsort(-exact, axis=1)[:, :5]
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, want)]) >= 0.95
    np.testing.assert_allclose(sims, np.take_along_axis(exact, ids, 1), atol=1e-5)  # exact, not code estimates
    built_at = ix.state.built_at
    again = get_index(Vault.open(path))
    assert again.state.built_at == built_at and isinstance(again.index, faiss.IndexRefine)
    y = clustered(300, D, clusters=12, sample_seed=77)
    append(path, y, [f"new {i}" for i in range(300)], encoder=ENC)
    v2 = Vault.open(path)
    grown = get_index(v2)
    assert grown.state.built_at == built_at
    assert grown.index.ntotal == faiss.downcast_index(grown.index.refine_index).ntotal == 4300
    _, got = search_arrays(v2, y[[0, 123, 299]], k=1)
    np.testing.assert_array_equal(got[:, 0], [4000, 4123, 4299])
