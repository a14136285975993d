"""The single-query paths (the common detailer query): the re-rank (fp16 rows scored by a scratch faiss index),
the sibling expansion, the outlier pool's merge and the coarse step, against hand computations and against the
batch paths they must agree with."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import clustered
from luna_vault.vault import EncoderFingerprint, Vault, append, build
from luna_vault.vault.index import exact, outliers
from luna_vault.vault.index.coarse import Coarse, ProbeRule, fast_pass
from luna_vault.vault.index.siblings import Siblings

D = 48
ENC = EncoderFingerprint("test-vit", D, "w1")


def _two_segment_vault(path: Path) -> tuple[Vault, np.ndarray]:
    """300 + 200 entries in two segment files; entries 7 and 211 (one in each segment) are the same vector."""
    x = clustered(500, D, clusters=6, seed=3)
    x[211] = x[7]
    build(path, x[:300], [f"p{i}" for i in range(300)], encoder=ENC, category="t", index="Flat")
    append(path, x[300:], [f"q{i}" for i in range(200)], encoder=ENC)
    v = Vault.open(path)
    assert len(v.segments) == 2
    return v, v.embeddings(np.arange(500)).astype(np.float64)  # the stored (fp16) values, exactly


def _by_hand(stored: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = stored[ids] @ q.astype(np.float64)
    order = np.lexsort((ids, -s))[:k]  # best first, ties to the lower id
    return s[order], ids[order]


def test_single_query_rerank_is_exact_across_segments_and_agrees_with_the_batch_path(tmp_path: Path) -> None:
    v, stored = _two_segment_vault(tmp_path / "v.vault")
    rng = np.random.default_rng(0)
    for trial in range(20):
        q = stored[int(rng.integers(500))].astype(np.float32)[None] if trial % 4 == 0 else \
            clustered(1, D, clusters=6, seed=3, sample_seed=trial)
        cand = rng.choice(500, 120, replace=False)
        cand[:3] = [7, 211, -1]
        k = int(rng.integers(1, 12))
        sims, ids = exact.rerank(v, q, cand[None], k)
        want_s, want_i = _by_hand(stored, q[0], np.unique(cand[cand >= 0]), k)
        np.testing.assert_array_equal(ids[0], want_i)
        np.testing.assert_allclose(sims[0], want_s, rtol=0, atol=1e-6)
        batch_s, batch_i = exact.rerank(v, np.repeat(q, 2, axis=0), np.repeat(cand[None], 2, axis=0), k)
        np.testing.assert_array_equal(batch_i[0], ids[0])
        np.testing.assert_allclose(batch_s[0], sims[0], rtol=0, atol=1e-6)
    # the duplicated vector: both come back, the lower id first, as in a batch
    sims, ids = exact.rerank(v, stored[7].astype(np.float32)[None], np.array([[211, 5, 7, 9]]), 2)
    assert ids[0].tolist() == [7, 211] and sims[0, 0] == sims[0, 1]
    assert exact.rerank(v, stored[7].astype(np.float32)[None], np.array([[211, 5, 7, 9]]), 1)[1].tolist() == [[7]]


def test_sorted_unique_candidates_skip_the_unique_step_and_give_the_same_answer(tmp_path: Path) -> None:
    v, stored = _two_segment_vault(tmp_path / "v.vault")
    q = stored[42].astype(np.float32)[None]
    cand = np.array([[-1, 3, 42, 250, -1, 260, 499]])  # sorted where present, each once, -1s anywhere
    a = exact.rerank(v, q, cand, 4, sorted_unique=True)
    b = exact.rerank(v, q, cand[:, ::-1].copy(), 4)
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1][0, 0] == 42
    allowed = np.ones(500, bool)
    allowed[42] = False
    s, i = exact.rerank(v, q, cand, 6, allowed, sorted_unique=True)  # the mask turns ids into -1s in place
    assert set(i[0, :4].tolist()) == {3, 250, 260, 499}
    assert i[0, 4:].tolist() == [-1, -1] and np.isneginf(s[0, 4:]).all()


def test_the_scratch_index_is_reused_resized_and_kept_per_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v, stored = _two_segment_vault(tmp_path / "v.vault")
    q = stored[100].astype(np.float32)[None]
    for ids in (np.arange(0, 500, 1), np.arange(3, 9), np.arange(0, 500, 7)):  # grow, shrink, grow again
        s, i = exact._top_of_rows(v, q, ids, 5)
        want_s, want_i = _by_hand(stored, q[0], ids, 5)
        np.testing.assert_array_equal(i[0], want_i)
        np.testing.assert_allclose(s[0], want_s, atol=1e-6)
    kept = exact._scratch.flat
    # another dimension: a new scratch index, right answers
    y = clustered(40, 16, seed=1)
    build(tmp_path / "w.vault", y, [f"y{i}" for i in range(40)], encoder=EncoderFingerprint("t16", 16, "w"), category="w",
          index="Flat")
    w = Vault.open(tmp_path / "w.vault")
    s, i = exact._top_of_rows(w, y[:1], np.arange(40), 3)
    assert i[0, 0] == 0 and exact._scratch.flat.d == 16 and exact._scratch.flat is not kept
    # more rows than the scratch may keep: answered by a throwaway index, the kept one stays small
    monkeypatch.setattr(exact, "SCRATCH_MAX_BYTES", 100 * 2 * D)
    s, i = exact._top_of_rows(v, q, np.arange(500), 3)
    assert i[0].tolist() == _by_hand(stored, q[0], np.arange(500), 3)[1].tolist()
    assert exact._scratch.flat.d == 16  # not replaced by the large one
    # a second thread has its own scratch
    seen = []
    t = threading.Thread(target=lambda: seen.append((exact._top_of_rows(v, q, np.arange(50), 1)[1][0, 0],
                                                     getattr(exact._scratch, "flat", None))))
    t.start()
    t.join()
    assert seen[0][0] == _by_hand(stored, q[0], np.arange(50), 1)[1][0] and seen[0][1] is not exact._scratch.flat


def test_rows_of_into_a_buffer_checks_the_ids(tmp_path: Path) -> None:
    x = clustered(30, D, seed=2)
    build(tmp_path / "v.vault", x, [f"p{i}" for i in range(30)], encoder=ENC, category="t", index="Flat")
    v = Vault.open(tmp_path / "v.vault")
    out = np.empty((3, D), np.float16)
    np.testing.assert_array_equal(exact.rows_of(v, np.array([0, 4, 29]), out), v.embeddings(np.array([0, 4, 29])))
    with pytest.raises(IndexError, match="outside"):
        exact.rows_of(v, np.array([0, 4, 30]), out)


def test_rows_of_gathers_across_segments_at_their_edges(tmp_path: Path) -> None:
    x = clustered(90, D, seed=4)
    build(tmp_path / "v.vault", x[:40], [f"p{i}" for i in range(40)], encoder=ENC, category="t", index="Flat")
    append(tmp_path / "v.vault", x[40:70], [f"q{i}" for i in range(30)], encoder=ENC)
    append(tmp_path / "v.vault", x[70:], [f"r{i}" for i in range(20)], encoder=ENC)
    v = Vault.open(tmp_path / "v.vault")
    assert v.entry_bases.tolist() == [0, 40, 70, 90]
    stored = np.stack([v.embeddings(np.array([i]))[0] for i in range(90)])  # one id at a time
    for ids in ([0, 39, 40, 69, 70, 89], [39, 70], [41, 42, 68], [89], [], [0, 1, 2, 3]):  # edges; a segment skipped
        ids = np.array(ids, np.int64)
        out = np.full((len(ids), D), np.nan, np.float16)
        np.testing.assert_array_equal(exact.rows_of(v, ids, out), stored[ids])
        np.testing.assert_array_equal(out, stored[ids])
        np.testing.assert_array_equal(exact.rows_of(v, ids), stored[ids])
    for bad in ([0, 90], [-1, 5]):
        with pytest.raises(IndexError, match="outside the vault's 90 rows"):
            exact.rows_of(v, np.array(bad), np.empty((2, D), np.float16))


def test_one_query_sibling_expansion_equals_the_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 300))
        s = Siblings(rng.integers(0, max(1, n // int(rng.integers(1, 50))), n))
        cand = rng.integers(-1, n, (1, int(rng.integers(1, 60))))
        if trial % 7 == 0:
            cand[:] = -1
        best = int(rng.integers(1, 10))
        want = np.unique(np.concatenate([cand[0], s.table(cand[:, :best]).reshape(-1)]))
        got = s.expand(cand, best)
        assert got.shape[0] == 1
        np.testing.assert_array_equal(got[0], want[want >= 0])


def test_one_query_pool_merge_equals_the_batch_merge() -> None:
    """Ties (estimates rounded to 0.1), pool ids the lists already hold, -1 pads on both sides, short lists."""
    rng = np.random.default_rng(0)
    for trial in range(3000):
        kk = int(rng.integers(1, 40))
        valid = int(rng.integers(0, kk + 1))
        ids = rng.choice(200, kk + 30, replace=False)
        cand = np.full((1, kk), -1, np.int64)
        cand[0, :valid] = ids[:valid]
        dist = np.full((1, kk), -np.inf if trial % 2 else -3.4e38, np.float32)
        dist[0, :valid] = np.sort(np.round(rng.random(valid), 1))[::-1]
        p = int(rng.integers(1, 12))
        pool_ids = ids[kk : kk + p].copy()
        if valid:
            again = rng.random(p) < 0.3
            pool_ids[again] = rng.choice(cand[0, :valid], int(again.sum()))
        pool_ids = np.where(rng.random(p) < 0.1, -1, pool_ids).astype(np.int64)[None]
        pool_dist = np.sort(np.round(rng.random(p), 1))[::-1].astype(np.float32)[None]
        one = outliers.merge(dist, cand, pool_dist, pool_ids, kk)
        two = outliers.merge(*(np.repeat(a, 2, axis=0) for a in (dist, cand, pool_dist, pool_ids)), kk)
        np.testing.assert_array_equal(one[0], two[0])
        assert one.shape == (1, kk) and len(set(one[0][one[0] >= 0].tolist())) == int((one[0] >= 0).sum())
    # by hand: 7 enters between 0.9 and 0.5; 3 is held already; 8 is below the last candidate
    got = outliers.merge(np.array([[0.9, 0.5, 0.4]], np.float32), np.array([[1, 3, 2]]),
                         np.array([[0.6, 0.55, 0.3]], np.float32), np.array([[7, 3, 8]]), 3)
    assert got.tolist() == [[1, 7, 3]]


def test_one_query_probes_ask_the_fast_pass_for_the_whole_width_only_when_the_drop_may_reach_past_the_head(
        monkeypatch: pytest.MonkeyPatch) -> None:
    centroids = clustered(700, 32, clusters=30, seed=4)
    coarse = Coarse(centroids, fast_pass(centroids))
    assert coarse.fast is not None
    queries = clustered(200, 32, clusters=30, seed=4, sample_seed=9)
    calls: list[int] = []
    ranked = Coarse._ranked_one
    monkeypatch.setattr(Coarse, "_ranked_one", lambda self, q, width, n: calls.append(width) or ranked(self, q, width, n))
    for rule, widths in ((ProbeRule(4), {4}), (ProbeRule(2, 0.0, 64), {20}), (ProbeRule(4, 2.0, 64), {24, 64}),
                         (ProbeRule(4, 0.02, 256), None)):
        agree = 0
        batch = coarse.probes(queries, rule)
        for b, q in enumerate(queries):
            calls.clear()
            one = coarse.probes(q[None], rule)
            head = min(2 * rule.floor + 16, rule.widest)
            if widths is not None:
                assert set(calls) == widths
            else:  # the whole width only for the queries whose head is within the drop
                assert calls[0] == head and (len(calls) == 1 or (one.count[0] >= head and calls[1] == rule.widest))
            agree += one.count[0] == batch.count[b] and set(one.lists[0]) == set(batch.lists[b][: batch.count[b]])
            assert one.top[0] == pytest.approx(float(centroids[one.lists[0, 0]] @ q), abs=1e-6)
        assert agree >= 0.97 * len(queries)  # equal 4-bit estimates at the head's edge may swap one list
    big = ProbeRule(4, 2.0, 64)
    assert coarse.probes(queries[:1], big).count[0] == 64



def test_probe_rule_counts_with_a_far_tier() -> None:
    """Hand-computed: the floor is far_floor below far_score; the drop widens up to the cap; never below the floor."""
    scores = np.array([[0.9, 0.89, 0.85, 0.5], [0.6, 0.59, 0.585, 0.57], [0.6, 0.3, 0.2, 0.1]], np.float32)
    rule = ProbeRule(1, 0.02, 3, far_floor=2, far_score=0.7)
    far = rule.far(scores[:, 0])
    assert far.tolist() == [False, True, True] and rule.widest == 3 and rule.adaptive
    assert rule.counts(scores, far).tolist() == [2, 3, 2]  # within the drop: 2; 3 (4, capped); 1, raised to the floor
    fixed = ProbeRule(1, 0.0, 0, far_floor=3, far_score=0.7)
    assert fixed.widest == 3 and not fixed.adaptive and fixed.counts(scores, fixed.far(scores[:, 0])).tolist() == [1, 3, 3]
    assert not ProbeRule(4).far(scores[:, 0]).any() and not ProbeRule(4, far_floor=2, far_score=1.0).far(scores[:, 0]).any()


def test_far_queries_probe_the_far_floor_with_its_exact_head_in_one_query_and_in_a_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    centroids = clustered(700, 32, clusters=30, seed=4)
    coarse = Coarse(centroids, fast_pass(centroids))
    queries = clustered(200, 32, clusters=30, seed=4, sample_seed=9)
    top = (queries @ centroids.T).max(axis=1)
    rule = ProbeRule(2, 0.02, 256, far_floor=32, far_score=float(np.median(top)))
    calls: list[tuple[int, float]] = []
    ranked = Coarse._ranked_one

    def spy(self: Coarse, q: np.ndarray, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        s, i = ranked(self, q, width, n)
        calls.append((width, float(s[0])))
        return s, i

    monkeypatch.setattr(Coarse, "_ranked_one", spy)
    batch = coarse.probes(queries, rule)
    far = rule.far(batch.top)
    assert 0.4 < far.mean() < 0.6 and (batch.count[far] >= 32).all() and (batch.count[~far] < 32).mean() > 0.5
    agree = 0
    for b, q in enumerate(queries):
        calls.clear()
        one = coarse.probes(q[None], rule)
        if calls[0][1] < rule.far_score:  # far by the exact head of the near floor (2 * 2 + 16): the far floor's
            assert [w for w, _ in calls[:2]] == [20, 80] and one.count[0] >= 32  # head (2 * 32 + 16) is re-scored
        else:
            assert calls[0][0] == 20 and 80 not in [w for w, _ in calls]
        agree += one.count[0] == batch.count[b] and set(one.lists[0]) == set(batch.lists[b][: batch.count[b]])
    assert agree >= 0.97 * len(queries)

def test_unique_ids_equals_numpy_unique() -> None:
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 3, 17, 280):
        ids = rng.integers(-1, 40, n)
        np.testing.assert_array_equal(exact.unique_ids(ids), np.unique(ids))
    assert exact.unique_ids(np.array([5, 5, 5])).tolist() == [5]


def test_siblings_are_kept_only_where_enough_entries_share_a_prompt(tmp_path: Path) -> None:
    x = clustered(40, D, seed=5)
    build(tmp_path / "own.vault", x, [f"p{i}" for i in range(40)], encoder=ENC, category="t", index="Flat")
    assert Siblings.of_vault(Vault.open(tmp_path / "own.vault")) is None  # every entry its own prompt
    # 37 prompts for 40 entries: more than 0.9 x 40 distinct, so none; 36 prompts: siblings
    for distinct, kept in ((37, False), (36, True)):
        prompts = [f"p{i % distinct}" for i in range(40)]
        build(tmp_path / f"{distinct}.vault", x, prompts, encoder=ENC, category="t", index="Flat")
        v = Vault.open(tmp_path / f"{distinct}.vault")
        s = Siblings.of_vault(v)
        assert (s is not None) == kept
        if kept:  # entry 3 shares prompt p3 with entry 39 (3 + 36)
            assert sorted(x for x in s.table(np.array([3]))[0].tolist() if x >= 0) == [3, 39]
