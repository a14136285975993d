"""Search: exact results against brute force, IVF recall, index cache, filters, deletions, auto-detect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import clustered
from luna_vault.vault import (
    DimensionError,
    EmptyVaultError,
    EncoderFingerprint,
    EncoderMismatchError,
    QueryError,
    Vault,
    append,
    build,
    choose_index,
    delete_where,
    detect_category,
    get_index,
    search,
)
from luna_vault.vault.query import search_arrays

D = 32
ENC = EncoderFingerprint("test-vit", D, "w1")


def brute(stored: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    s = q.astype(np.float32) @ stored.astype(np.float32).T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


def _build(path: Path, n: int, seed: int = 0, index: str = "auto", centre_seed: int = 0) -> np.ndarray:
    x = clustered(n, D, seed=seed, clusters=12) if centre_seed == 0 else _shifted(n, seed, centre_seed)
    metas = [{"checkpoint": ["a", "b", "c"][i % 3], "quality": (i % 10) / 10} for i in range(n)]
    build(path, x, [f"prompt {i}" for i in range(n)], metas, encoder=ENC, category=path.stem, index=index)
    return x


def _shifted(n: int, seed: int, centre_seed: int) -> np.ndarray:
    rng = np.random.default_rng(centre_seed)
    centre = rng.standard_normal(D).astype(np.float32) * 3
    x = clustered(n, D, seed=seed, clusters=4) + centre / np.linalg.norm(centre)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_choose_index_rule() -> None:
    assert choose_index(5_000, 1024) == "Flat"
    assert choose_index(20_000, 1024) == "Flat"
    assert choose_index(100_000, 768) == "IVF1024_HNSW32,PQ384x4fs"
    assert choose_index(500_000, 1024) == "IVF2048_HNSW32,PQ512x4fs"
    assert choose_index(5_000_000, 1280) == "IVF8192_HNSW32,PQ640x4fs"
    assert choose_index(50_000, 1152) == "IVF512_HNSW32,PQ576x4fs"


def test_exact_search_equals_brute_force(tmp_path: Path) -> None:
    _build(tmp_path / "v.vault", 500)
    v = Vault.open(tmp_path / "v.vault")
    stored = v.embeddings(np.arange(500))
    q = clustered(20, D, clusters=12, sample_seed=9)
    sims, ids = search_arrays(v, q, k=7)
    want_s, want_i = brute(stored, q, 7)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)
    assert get_index(v).exact


def test_results_carry_prompts_metadata_and_similarity(tmp_path: Path) -> None:
    x = _build(tmp_path / "v.vault", 100)
    v = Vault.open(tmp_path / "v.vault")
    [r] = search(v, x[17] * 5.0, k=3)  # unnormalised query is normalised
    m = r.matches[0]
    assert (m.id, m.prompt, m.prompt_id, m.vault) == (17, "prompt 17", 17, "v")
    assert m.metadata == {"category": "v", "checkpoint": "c", "quality": 0.7}
    assert m.similarity == pytest.approx(1.0, abs=2e-3)
    assert list(r.similarities) == sorted(r.similarities, reverse=True)
    assert r.to_json()["matches"][0]["prompt"] == "prompt 17"


def test_ivf_reaches_recall_target_and_is_cached(tmp_path: Path) -> None:
    path = tmp_path / "v.vault"
    _build(path, 4000, index="IVF32,PQ8x4fs")
    v = Vault.open(path)
    idx = get_index(v)
    assert not idx.exact and idx.state.recall >= 0.97
    q = clustered(100, D, clusters=12, sample_seed=5)  # unseen queries from the same distribution
    sims, ids = search_arrays(v, q, k=5)
    _, want = brute(v.embeddings(np.arange(4000)), q, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, want)])
    assert recall >= 0.95
    # similarities are exact (re-ranked on stored vectors), not PQ estimates
    np.testing.assert_allclose(sims, np.take_along_axis(q @ v.embeddings(np.arange(4000)).astype(np.float32).T, ids, 1), atol=1e-5)
    built_at = idx.state.built_at
    again = get_index(Vault.open(path))
    assert again.state.built_at == built_at  # loaded from this machine's cache, not rebuilt
    assert (again.folder / "index.faiss").is_file()
    # append: the cached index is extended with the new segment only
    y = clustered(300, D, clusters=12, sample_seed=77)
    append(path, y, [f"new {i}" for i in range(300)], encoder=ENC)
    v2 = Vault.open(path)
    extended = get_index(v2)
    assert extended.state.built_at == built_at and extended.index.ntotal == 4300
    [r] = search(v2, y[123], k=1)
    assert (r.matches[0].id, r.matches[0].prompt) == (4123, "new 123")


def test_filters_selective_and_wide_match_brute_force(tmp_path: Path) -> None:
    path = tmp_path / "v.vault"
    _build(path, 3000, index="IVF16,PQ8x4fs")
    v = Vault.open(path)
    stored = v.embeddings(np.arange(3000))
    q = clustered(10, D, clusters=12, sample_seed=3)
    checkpoint = np.array([["a", "b", "c"][i % 3] for i in range(3000)])
    quality = np.array([(i % 10) / 10 for i in range(3000)])
    selective = (checkpoint == "b") & (quality >= 0.9)  # 100 entries: exact path
    sims, ids = search_arrays(v, q, 5, "checkpoint=b, quality>=0.9")
    want_s, want_i = brute(stored, q, 5, selective)
    np.testing.assert_array_equal(ids, want_i)
    wide = checkpoint != "a"
    _, ids = search_arrays(v, q, 5, "checkpoint!=a")
    assert wide[ids].all()
    _, want_i = brute(stored, q, 5, wide)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, want_i)]) >= 0.9


def test_filter_with_no_match_and_fewer_than_k(tmp_path: Path) -> None:
    path = tmp_path / "v.vault"
    _build(path, 300)
    v = Vault.open(path)
    with pytest.raises(EmptyVaultError, match="passes the filter"):
        search(v, np.ones(D), k=3, filter="checkpoint=zzz")
    delete_where(path, "quality>=0.1")  # leaves the 30 entries with quality 0.0
    v = Vault.open(path)
    [r] = search(v, np.ones(D), k=5, filter="checkpoint=a")  # 10 live entries with checkpoint a
    assert len(r.matches) == 5
    [r] = search(v, np.ones(D), k=20, filter="checkpoint=a")
    assert len(r.matches) == 10 and all(m.metadata["checkpoint"] == "a" for m in r.matches)


def test_deleted_entries_are_never_returned(tmp_path: Path) -> None:
    path = tmp_path / "v.vault"
    x = _build(path, 2000, index="IVF16,PQ8x4fs")
    get_index(Vault.open(path))
    delete_where(path, "checkpoint=a")
    v = Vault.open(path)
    _, ids = search_arrays(v, x[:60], k=10)
    assert (ids % 3 != 0).all()  # checkpoint a = ids divisible by 3
    [r] = search(v, x[0], k=1)
    assert r.matches[0].id != 0


def test_query_errors(tmp_path: Path) -> None:
    path = tmp_path / "v.vault"
    _build(path, 20)
    v = Vault.open(path)
    with pytest.raises(QueryError, match="k=21 but vault 'v' holds only 20"):
        search(v, np.ones(D), k=21)
    with pytest.raises(QueryError, match="k must be"):
        search(v, np.ones(D), k=0)
    with pytest.raises(DimensionError, match=r"expected \[batch, 32\]"):
        search(v, np.ones(16), k=1)
    with pytest.raises(QueryError, match="all zeros"):
        search(v, np.zeros(D), k=1)
    with pytest.raises(QueryError, match="NaN"):
        search(v, np.full(D, np.nan), k=1)
    with pytest.raises(QueryError, match="empty batch"):
        search(v, np.zeros((0, D)), k=1)
    with pytest.raises(EncoderMismatchError, match="different model"):
        search(v, np.ones(D), k=1, encoder=EncoderFingerprint("other", D, "w2"))
    build(tmp_path / "empty.vault", np.ones((2, D)), ["", ""], encoder=ENC, category="x")  # both skipped
    with pytest.raises(EmptyVaultError, match="has no entries"):
        search(Vault.open(tmp_path / "empty.vault"), np.ones(D), k=1)


def test_auto_detect_picks_the_closest_vault_per_crop(tmp_path: Path) -> None:
    eyes = _build(tmp_path / "eyes.vault", 300, centre_seed=1)
    hands = _build(tmp_path / "hands.vault", 300, centre_seed=2)
    _build(tmp_path / "metal.vault", 300, centre_seed=3)
    build(tmp_path / "other.vault", clustered(10, 16), [f"p{i}" for i in range(10)],
          encoder=EncoderFingerprint("small", 16, "x"), category="other")
    vaults = [Vault.open(tmp_path / f"{n}.vault") for n in ("eyes", "hands", "metal", "other")]
    queries = np.stack([eyes[5], hands[7], eyes[9]])
    det, results = detect_category(vaults, queries, k=3)
    assert det.chosen == ["eyes", "hands", "eyes"]
    assert [r.vault for r in results] == det.chosen
    assert results[1].matches[0].id == 7 and results[1].matches[0].prompt == "prompt 7"
    assert set(det.scores) == {"eyes", "hands", "metal", "other"}
    assert np.isnan(det.scores["other"]).all() and "expected [batch, 16]" in det.skipped["other"]
    for b, name in enumerate(det.chosen):
        assert det.scores[name][b] == max(det.scores[n][b] for n in ("eyes", "hands", "metal"))
        assert results[b].scores[name] == pytest.approx(det.scores[name][b])
    with pytest.raises(QueryError, match="no vault can answer"):
        detect_category(vaults[3:], queries, k=3)


def _gpu() -> bool:
    from luna_vault.vault.index import gpu_available

    return gpu_available()


@pytest.mark.skipif(not _gpu(), reason="faiss has no GPU here (install faiss-gpu on a CUDA machine)")
def test_gpu_index_gives_the_cpu_answers(tmp_path: Path) -> None:
    path = tmp_path / "v.vault"
    _build(path, 3000)
    v = Vault.open(path)
    idx = get_index(v)
    assert idx.describe()["gpu"]
    q = clustered(16, D, clusters=12, sample_seed=4)
    sims, ids = search_arrays(v, q, 5)
    want_s, want_i = brute(v.embeddings(np.arange(3000)), q, 5)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-3)


def test_open_cached_reuses_until_the_manifest_changes(tmp_path: Path) -> None:
    from luna_vault.vault.cache import forget, open_cached

    path = tmp_path / "v.vault"
    _build(path, 50)
    a = open_cached(path)
    assert open_cached(path) is a
    append(path, clustered(5, D, clusters=12, sample_seed=8), [f"n{i}" for i in range(5)], encoder=ENC)
    b = open_cached(path)
    assert b is not a and len(b) == 55
    forget(path)
    assert open_cached(path) is not b
