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
    rebuild_index,
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
    # about 48 entries per list (a power of two), a flat coarse quantizer, at most 16,384 lists up to 1M entries
    assert choose_index(20_001, 1024) == "IVF512,PQ512x4fs"
    assert choose_index(50_000, 1152) == "IVF1024,PQ576x4fs"
    assert choose_index(100_000, 768) == "IVF2048,PQ384x4fs"
    assert choose_index(500_000, 1024) == "IVF8192,PQ512x4fs"
    assert choose_index(1_000_000, 1024) == "IVF16384,PQ512x4fs"
    assert choose_index(10_000_000, 1280) == "IVF16384,PQ640x4fs"  # 16,384 lists at most (measured at 10M)


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


@pytest.mark.skipif(not _gpu(), reason="faiss has no GPU here (install faiss-gpu on a CUDA machine)")
@pytest.mark.parametrize("n", [3000, 30000], ids=["exact", "ivf"])
def test_gpu_search_never_returns_filtered_or_deleted_entries(tmp_path: Path, n: int) -> None:
    """On a GPU the index takes no selector: filtered-out and deleted entries must still never come back."""
    path = tmp_path / "v.vault"
    x = _build(path, n)
    delete_where(path, "checkpoint=c, quality>=0.5")
    v = Vault.open(path)
    assert get_index(v).describe()["gpu"]
    q = clustered(32, D, clusters=12, sample_seed=5)
    allowed = v.filter_mask("checkpoint=a")
    sims, ids = search_arrays(v, q, 5, filter="checkpoint=a")
    assert allowed[ids[ids >= 0]].all()
    want_s, _ = brute(x, q, 5, allowed)
    np.testing.assert_allclose(sims, want_s, atol=0.05)  # approximate ids, but no filtered entry and no miss
    live = v.live_mask()
    _, ids = search_arrays(v, q, 5)
    assert live[ids[ids >= 0]].all()


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


# ---- approximate search that never silently misses (issue 12) ------------------------------------

def _mixture(n_looks: int, prompts_per_look: int, d: int, seed: int, queries: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Many small clusters in random directions (the shape that defeated the HNSW coarse quantizer):
    looks -> prompts (look + noise of norm 0.55) -> 4 images each (prompt + noise of norm 0.35);
    queries are new images of stored prompts and of prompts never stored, half each."""
    rng = np.random.default_rng(seed)

    def noisy(c: np.ndarray, norm: float) -> np.ndarray:
        e = rng.standard_normal(c.shape).astype(np.float32)
        x = c + norm * e / np.linalg.norm(e, axis=1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    looks = noisy(np.zeros((n_looks, d), np.float32), 1.0)
    n_prompts = n_looks * prompts_per_look
    prompts = noisy(looks[np.arange(n_prompts + queries) % n_looks], 0.55)
    x = noisy(np.repeat(prompts[:n_prompts], 4, axis=0), 0.35)
    names = [f"prompt {i // 4}" for i in range(len(x))]
    pick = np.concatenate([rng.integers(0, n_prompts, queries // 2), n_prompts + np.arange(queries - queries // 2)])
    return x, names, noisy(prompts[pick], 0.35)


def test_gap_and_recall_by_hand() -> None:
    from luna_vault.vault.index import recall_per_query, similarity_gap

    exact = np.array([[0.9, 0.8], [0.5, 0.4], [0.7, -np.inf]], np.float32)
    got = np.array([[0.9, 0.7], [0.1, -np.inf], [0.7, -np.inf]], np.float32)
    # (0.9+0.8)/2-(0.9+0.7)/2 = 0.05; (0.5+0.4)/2-(0.1-1)/2 = 0.9 (a missing result counts as -1); one valid slot: 0
    np.testing.assert_allclose(similarity_gap(exact, got), [0.05, 0.9, 0.0], atol=1e-6)
    truth = np.array([[1, 2], [3, 4], [5, -1]])
    np.testing.assert_allclose(recall_per_query(np.array([[2, 9], [-1, -1], [5, -1]]), truth), [0.5, 0.0, 1.0])


def test_rerank_drops_candidates_outside_the_mask(tmp_path: Path) -> None:
    """Whatever an index returns (a GPU index takes no selector), masked-out ids never come back."""
    from luna_vault.vault.index import rerank

    x = _build(tmp_path / "v.vault", 200)
    v = Vault.open(tmp_path / "v.vault")
    allowed = np.arange(200) % 2 == 1
    cand = np.array([[0, 1, 2, 3, 4, 5, -1], [10, 12, 14, 16, 11, 13, 15]])
    sims, ids = rerank(v, x[[0, 10]], cand, 3, allowed)
    assert set(ids[0][ids[0] >= 0]) <= {1, 3, 5} and set(ids[1]) == {11, 13, 15}
    np.testing.assert_allclose(sims[1], np.sort(x[[11, 13, 15]] @ x[10])[::-1], atol=2e-3)


def test_masked_approximate_search_respects_filters_and_deletions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide filter goes through the IVF index with a selector (not exact search): still only allowed ids."""
    import luna_vault.vault.index.core as core

    path = tmp_path / "v.vault"
    x = _build(path, 3000, index="IVF16,PQ8x4fs")
    delete_where(path, "checkpoint=c")  # ids 2, 5, 8, ...
    v = Vault.open(path)
    monkeypatch.setattr(core, "EXACT_SUBSET_MAX", 0)  # force the approximate path for any mask
    idx = get_index(v)
    _, ids = search_arrays(v, x[:40], 8, "quality<0.5")
    quality = (np.arange(3000) % 10) / 10
    ok = (np.arange(3000) % 3 != 2) & (quality < 0.5)
    assert (ids >= 0).all() and ok[ids].all()
    _, want = brute(v.embeddings(np.arange(3000)), x[:40], 8, ok)
    assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(ids, want)]) >= 0.9
    assert idx.queries >= 40


def test_queries_from_no_cluster_are_not_missed_and_the_guard_answers_exactly(tmp_path: Path) -> None:
    """A query unlike every centroid (here: from no cluster at all) still gets its true neighbourhood; and a
    query below the guard is answered by exact search, and counted."""
    from luna_vault.vault.index import GAP_LIMIT, similarity_gap

    path = tmp_path / "v.vault"
    x = _build(path, 4000, index="IVF32,PQ8x4fs")
    v = Vault.open(path)
    idx = get_index(v)
    far = np.random.default_rng(3).standard_normal((5, D)).astype(np.float32)
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    want_s, want_i = brute(v.embeddings(np.arange(4000)), far, 5)
    sims, _ = search_arrays(v, far, 5)
    assert (similarity_gap(want_s, sims) <= GAP_LIMIT).all()
    top = idx.coarse.scores(far, 1, 1)[0][:, 0]
    np.testing.assert_allclose(top, (far @ idx.coarse.centroids.T).max(axis=1), atol=1e-5)  # the best score is exact
    idx.state.guard = float(top.max()) + 1e-3  # these queries now sit below the guard
    before, asked = idx.exact_answers, idx.queries
    sims, ids = search_arrays(v, far, 5)
    np.testing.assert_array_equal(ids, want_i)  # answered exactly
    np.testing.assert_allclose(sims, want_s, atol=2e-3)
    assert idx.exact_answers == before + 5 and idx.describe()["exact_answers"] == before + 5
    search_arrays(v, x[:3], 5)  # stored points score above it: the index answers them
    assert idx.exact_answers == before + 5 and idx.queries == asked + 8


@pytest.mark.slow
def test_auto_index_misses_no_neighbourhood_of_many_small_clusters(tmp_path: Path) -> None:
    """The failure issue 12 reported, scaled down: 1,500 clusters of 24 images in 64-d, auto index (IVF),
    2,000 unseen queries. No query may come back with a similarity gap over 0.05; recall stays high."""
    from luna_vault.vault.index import GAP_LIMIT, recall_per_query, similarity_gap

    x, names, q = _mixture(n_looks=1500, prompts_per_look=6, d=64, seed=1, queries=2000)
    path = tmp_path / "mix.vault"
    build(path, x, names, encoder=EncoderFingerprint("t", 64, "w"), category="mix")
    v = Vault.open(path)
    idx = get_index(v)
    assert idx.spec == choose_index(len(x), 64) != "Flat"
    st = idx.state
    assert st.tune_queries == 2048 and st.target_met and st.recall >= 0.98
    from luna_vault.vault.index.train import untrained_mask

    assert abs(untrained_mask(v, st.train_share, st.trained_n).mean() - 0.1) < 0.03  # a tenth of the prompts never trained the partition
    sims, ids = search_arrays(v, q, 5)
    want_s, want_i = brute(v.embeddings(np.arange(len(x))), q, 5)
    gap = similarity_gap(want_s, sims)
    assert (gap > GAP_LIMIT).sum() == 0, f"{(gap > GAP_LIMIT).sum()} queries missed (worst gap {gap.max():.3f})"
    assert recall_per_query(ids, want_i).mean() >= 0.95
    info = idx.describe()
    assert info["queries"] == 2000 and 0 <= info["exact_answers"] <= 60


@pytest.mark.parametrize("n_new", [600, 1200])  # 15% more; 30%, past the quarter that re-tunes anyway
def test_append_from_unseen_clusters_is_measured_and_retuned(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             n_new: int) -> None:
    """Entries appended from clusters the partition never saw: at append time their neighbourhoods are measured
    under the tuned rule; when it would miss them the index is tuned again, and queries there are not missed."""
    from luna_vault.vault.index import GAP_LIMIT, similarity_gap
    from luna_vault.vault.index.reach import REACH_RATE

    path = tmp_path / "v.vault"
    _build(path, 4000, index="IVF64,PQ8x4fs")
    first = get_index(Vault.open(path)).state
    new = clustered(n_new, D, seed=99, clusters=6)  # from six clusters in other directions
    append(path, new, [f"new {i}" for i in range(n_new)], encoder=ENC)
    v = Vault.open(path)
    idx = get_index(v)
    st = idx.state
    assert st.built_at == first.built_at and idx.index.ntotal == 4000 + n_new  # extended, not rebuilt
    assert st.drift_rate is not None and st.drift_rate > REACH_RATE  # the old rule would miss them ...
    assert st.tuned_n == 4000 + n_new  # ... so it was tuned again
    q = clustered(200, D, seed=99, clusters=6, sample_seed=5)
    sims, _ = search_arrays(v, q, 5)
    want_s, _ = brute(v.embeddings(np.arange(4000 + n_new)), q, 5)
    assert (similarity_gap(want_s, sims) <= GAP_LIMIT).all()
    # the re-tune keeps answers right, not fast: the index says a new partition would serve them better
    assert first.drift_rate is None and idx.advice.startswith(f"{n_new:,} entries appended since the partition was trained (on 4,000) spread")
    assert "luna-vault rebuild" in idx.advice and idx.describe()["advice"] == idx.advice
    from luna_vault.vault.retrieval import index_summary

    assert index_summary(v)["advice"] == idx.advice  # the Vault Query node's report carries it
    from luna_vault.cli import main

    assert main(["info", str(path)]) == 0 and f"advice    {idx.advice}" in capsys.readouterr().out
    # a later append from the old clusters is served by the re-tuned rule: no new tune, and the advice stays
    advice = idx.advice
    append(path, clustered(100, D, seed=0, clusters=12, sample_seed=7), [f"more {i}" for i in range(100)], encoder=ENC)
    later = get_index(Vault.open(path))
    assert later.index.ntotal == 4100 + n_new and later.state.tuned_n == 4000 + n_new
    assert later.advice == advice.replace(f"{n_new:,} entries", f"{n_new + 100:,} entries")
    assert rebuild_index(path).advice == ""


def test_tuning_guard_covers_gaps_above_half_the_limit_but_counts_only_real_misses():
    """The guard is fitted with a margin (TUNE_GAP); the reported miss share uses GAP_LIMIT."""
    from luna_vault.vault.index import GAP_LIMIT
    from luna_vault.vault.index.guard import TUNE_GAP, Trial

    assert TUNE_GAP == GAP_LIMIT / 2
    gap = np.array([0.0, 0.03, 0.0, 0.2], np.float32)  # query 1 is near (inside the margin), query 3 a miss
    top = np.array([0.9, 0.6, 0.8, 0.5], np.float32)
    trial = Trial("rule", 4, np.ones(4), gap, top)
    assert trial.bad.tolist() == [False, True, False, True]
    assert trial.missed.tolist() == [False, False, False, True]
    assert trial.guard == pytest.approx(0.6 + 1e-6)  # the near query decides the threshold, not the miss
    assert trial.exact_share == 0.5
    # out of sample: the guard fitted on the even rows (nothing bad there: no guard) lets query 3 through;
    # fitted on the odd rows, it covers the even rows, which hold no miss
    assert trial.out_of_sample_misses() == pytest.approx(0.25)
    assert Trial("rule", 4, np.ones(2), np.zeros(2), np.ones(2)).guard == -np.inf  # nothing to guard



def test_a_second_build_of_the_same_data_chooses_the_same_setting_far_tier_included(tmp_path: Path) -> None:
    """Every choice rests on counts: a rebuild tunes to the same rule, k_factor and guard (here a rule with a far tier)."""
    path = tmp_path / "v.vault"
    _build(path, 4000, index="IVF64,PQ8x4fs")
    keys = ("nprobe", "drop", "max_probe", "far_floor", "far_score", "k_factor", "guard")
    first = {k: get_index(Vault.open(path)).describe()[k] for k in keys}
    assert first["far_floor"] > first["nprobe"] and first["far_score"] is not None
    assert {k: rebuild_index(path).describe()[k] for k in keys} == first

def test_far_tier_gives_the_smallest_passing_floor_to_the_fewest_queries_lowest_best_score_first() -> None:
    """Hand-made: the 50 of 1,000 tuning queries with the lowest best centroid score miss under floor 4 and floor 16;
    floor 64 reaches them. The far tier gives floor 64 to the 6% lowest (4% would leave ten of them missed)."""
    from luna_vault.vault.index.coarse import ProbeRule
    from luna_vault.vault.index.tune import PerQuery, far_tiers, summarise

    n = 1000
    top = np.linspace(0.5, 0.9, n)
    missed = np.where(np.arange(n) < 50, 0.5, 100.0)

    def outcome(slack: np.ndarray, lists: int, cost: float) -> PerQuery:
        return PerQuery(slack, np.ones(n), np.full(n, cost), np.full(n, lists))

    per = {ProbeRule(4): outcome(missed, 4, 10.0), ProbeRule(16): outcome(missed, 16, 30.0),
           ProbeRule(64): outcome(np.full(n, 100.0), 64, 100.0)}
    kinds = [(0, n)]
    stats = {rule: summarise(rule, p, kinds) for rule, p in per.items()}
    assert [s.miss_rate for s in stats.values()] == [0.05, 0.05, 0.0]
    tiers = far_tiers(per, stats, {r.floor: top for r in per}, kinds)
    assert [t.rule for t in tiers] == [ProbeRule(4, far_floor=64, far_score=float(np.quantile(top, 0.06))),
                                       ProbeRule(16, far_floor=64, far_score=float(np.quantile(top, 0.06)))]
    assert tiers[0].miss_rate == 0.0 and tiers[0].cost == pytest.approx((60 * 100 + 940 * 10) / n)
    assert tiers[0].lists == pytest.approx((60 * 64 + 940 * 4) / n) and tiers[0].recall == 1.0
    per[ProbeRule(64)] = outcome(missed, 64, 100.0)  # no higher floor reaches them: no far tier
    assert far_tiers(per, {rule: summarise(rule, p, kinds) for rule, p in per.items()}, {r.floor: top for r in per}, kinds) == []


def test_far_tier_takes_the_smallest_passing_floor_whatever_order_the_rules_come_in() -> None:
    """The same 50 hard queries; floors 256 and 64 both reach them, given widest first: the tier's floor is 64."""
    from luna_vault.vault.index.coarse import ProbeRule
    from luna_vault.vault.index.tune import PerQuery, far_tiers, summarise

    n = 1000
    top = np.linspace(0.5, 0.9, n)

    def outcome(slack: np.ndarray, lists: int) -> PerQuery:
        return PerQuery(slack, np.ones(n), np.full(n, float(lists)), np.full(n, lists))

    wide = np.full(n, 100.0)
    per = {ProbeRule(256): outcome(wide, 256), ProbeRule(64): outcome(wide, 64),
           ProbeRule(4): outcome(np.where(np.arange(n) < 50, 0.5, 100.0), 4)}
    kinds = [(0, n)]
    stats = {rule: summarise(rule, p, kinds) for rule, p in per.items()}
    tiers = far_tiers(per, stats, {r.floor: top for r in per}, kinds)
    assert [(t.rule.floor, t.rule.far_floor) for t in tiers] == [(4, 64)]


def test_list_costs_count_fast_scan_blocks_and_the_cost_of_a_list() -> None:
    """Lists of 1, 32, 33 and 0 entries in a fast-scan index cost 32, 32, 64 and 0 entries, each + LIST_COST; the
    list of every entry is where it was added."""
    import faiss

    from luna_vault.vault.index.tune import BLOCK, LIST_COST, list_costs

    d, rng = 16, np.random.default_rng(0)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQFastScan(quantizer, d, 4, 4, 4, faiss.METRIC_INNER_PRODUCT)
    index.train(rng.standard_normal((256, d)).astype(np.float32))
    sizes = [1, 32, 33, 0]
    lists = np.repeat(np.arange(4), sizes)
    x = rng.standard_normal((len(lists), d)).astype(np.float32)
    index.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(lists.astype(np.int64)))  # each entry into its list
    list_of, step = list_costs(faiss, index, len(lists) + 2)
    assert list(list_of) == list(lists) + [-1, -1]
    assert list(step) == [BLOCK + LIST_COST, BLOCK + LIST_COST, 2 * BLOCK + LIST_COST, LIST_COST]


def test_k_factor_headroom_is_taken_only_when_it_buys_the_recall_step() -> None:
    """One k_factor step above the smallest that passes is kept when its tuning recall (exact answers counting as
    exact) is RECALL_STEP higher or more."""
    from luna_vault.vault.index.guard import Trial
    from luna_vault.vault.index.tune import RECALL_STEP, headroom

    def trial(kf: int, rec: list[float], gap: list[float], top: list[float]) -> Trial:
        return Trial("rule", kf, np.array(rec), np.array(gap, np.float32), np.array(top, np.float32))

    found = trial(6, [1.0, 0.8, 1.0, 0.8], [0, 0, 0, 0], [0.9, 0.9, 0.9, 0.9])  # recall 0.9
    assert headroom(found, trial(8, [1.0, 1.0, 1.0, 0.8], [0, 0, 0, 0], [0.9] * 4)).k_factor == 8  # 0.95
    assert headroom(found, trial(8, [1.0, 0.8, 1.0, 0.8 + 4 * RECALL_STEP - 1e-3], [0] * 4, [0.9] * 4)) is found
    # a guarded query counts as answered exactly: query 1's gap sends it to exact search, so the step's recall is 1.0
    guarded = trial(8, [1.0, 0.8, 1.0, 1.0], [0, 0.2, 0, 0], [0.9, 0.5, 0.9, 0.9])
    assert guarded.recall == pytest.approx(1.0) and headroom(found, guarded) is guarded


def test_k_factor_headroom_is_tried_only_while_the_stored_rows_are_in_memory(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows re-ranked from disk are not cheap recall: a vault too large to map ahead gets no k_factor headroom."""
    import luna_vault.vault.index.core as core_mod
    import luna_vault.vault.index.tune as tune_mod

    calls = []
    real = tune_mod.headroom
    monkeypatch.setattr(tune_mod, "headroom", lambda found, up: calls.append(up.k_factor) or real(found, up))
    for name, share in (("mem", core_mod.PREFETCH_SHARE), ("disk", 0.0)):
        monkeypatch.setattr(core_mod, "PREFETCH_SHARE", share)
        calls.clear()
        _build(tmp_path / f"{name}.vault", 4000, index="IVF64,PQ8x4fs")
        idx = get_index(Vault.open(tmp_path / f"{name}.vault"))
        assert idx.rows_in_memory is (share > 0) and idx.state.target_met
        assert len(calls) == (1 if share > 0 else 0), calls
        assert share == 0 or idx.state.k_factor in (calls[0], tune_mod.FACTORS[tune_mod.FACTORS.index(calls[0]) - 1])


def test_tuned_rule_misses_within_the_reach_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuner picks a probing rule whose extrapolated miss rate on the tuning queries is within REACH_RATE."""
    import luna_vault.vault.index.tune as tune_mod
    from luna_vault.vault.index.reach import REACH_RATE

    path = tmp_path / "v.vault"
    _build(path, 4000, index="IVF64,PQ8x4fs")
    seen = {}
    real = tune_mod.analyse_rules

    def spy(ix, index, sets):  # noqa: ANN001, ANN202
        seen["stats"], seen["reach"] = real(ix, index, sets)
        return seen["stats"], seen["reach"]

    monkeypatch.setattr(tune_mod, "analyse_rules", spy)
    idx = get_index(Vault.open(path))
    d = idx.describe()
    chosen = next(s for s in seen["stats"] if s.rule == idx.rule)
    assert idx.state.target_met and chosen.miss_rate <= REACH_RATE and chosen.recall >= 0.98
    assert d["reach"] == seen["reach"] >= 1 and d["nprobe"] == idx.rule.floor >= 1


def test_miss_rate_is_extended_from_the_tail_per_doubling() -> None:
    from luna_vault.vault.index.reach import miss_rate, reach_from_needs

    ps = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    geometric = np.repeat([1, 2, 4, 8, 16], [512, 160, 64, 24, 8])  # a third needs > 1, then / ~3 per doubling
    reach, survival = reach_from_needs(geometric, ps, rate=1e-4)
    np.testing.assert_allclose(survival[:5], [256 / 768, 96 / 768, 32 / 768, 8 / 768, 0])
    # at nprobe 128 the 8 queries needing 16 have a slack of 8 (< 2^4): shares below 2^4, 2^5, 2^6 are
    # 8, 32 and 96 of 768; the line through them on a log scale, at t = 0: ~7.6e-5 <= 1e-4
    t = np.array([4, 5, 6])
    slope, icpt = np.polyfit(t, np.log(np.array([8, 32, 96]) / 768), 1)
    assert miss_rate(128 / geometric) == pytest.approx(np.exp(icpt)) and np.exp(icpt) < 1e-4
    assert miss_rate(64 / geometric) > 1e-4  # one doubling less: ~2.6e-4
    assert reach == 128  # 8 times the widest need seen (16)
    assert miss_rate(256 / geometric) == pytest.approx(np.exp(icpt - slope))  # ~2.1e-5: above the default 1e-5,
    assert reach_from_needs(geometric, ps)[0] == 256  # so by default the widest
    assert reach_from_needs(np.ones(768, np.int64), ps)[0] == 2  # nothing to fit: one doubling beyond
    rare = np.ones(768, np.int64)
    rare[:2] = 4
    assert reach_from_needs(rare, ps)[0] == 8  # two queries: nothing to fit, so one doubling beyond them
    assert miss_rate(np.array([0.5, 4, 4])) == pytest.approx(1 / 3)  # an observed miss counts as it is
    never = rare.copy()
    never[0] = np.iinfo(np.int64).max  # a query no setting reaches
    assert reach_from_needs(never, ps)[0] == 256
