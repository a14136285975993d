"""Tuning: pick (nprobe, k_factor, guard) by measurement on queries that are not stored vectors."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from . import reach as reach_mod
from .exact import exact_search
from .guard import FLOOR_MAX_SHARE, MAX_EXACT_SHARE, NULL_QUERIES, Trial, structureless_floor
from .measure import recall_per_query, similarity_gap
from .queries import TUNE_K, QuerySet, data_gaussian, query_sets
from .state import ivf_of
from .train import untrained_mask

if TYPE_CHECKING:
    from .core import VaultIndex

log = logging.getLogger(__name__)

RECALL_TARGET = 0.98  # on the tuning queries; the margin keeps unseen queries at >= 0.97
LATENCY_BUDGET_MS = 2.0  # when the recall target cannot be reached: best recall within this time
FACTORS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96)
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def outcome(ix: "VaultIndex", index: Any, qs: QuerySet, nprobe: int, kf: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: recall@k, similarity gap, best centroid score, at one setting (no guard)."""
    k = TUNE_K
    extra = 1 if qs.exclude is not None else 0
    sims, ids, top = ix.ann(index, qs.queries, k + extra, nprobe, kf, qs.allowed)
    if qs.exclude is not None:
        keep = ids != qs.exclude[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    return (recall_per_query(ids, qs.truth_ids), similarity_gap(qs.truth_sims, sims), top)


def tune(ix: "VaultIndex", index: Any) -> None:
    """Pick (nprobe, k_factor, guard) by measurement on queries that are not stored vectors; sets ix.state.

    For each setting the guard threshold is the smallest that sends every tuning query whose
    similarity gap exceeds TUNE_GAP to exact search, and never below the structureless floor
    (see guard.structureless_floor). TUNE_GAP is half of GAP_LIMIT: a few hundred tuning queries
    cannot show a one-in-ten-thousand miss, but they do show the tail of gaps it comes from. A
    setting is acceptable when recall@5 (exact answers count as exact) meets the target and the
    guard sends at most MAX_EXACT_SHARE of the queries to exact search beyond those below the floor
    (which go there whatever the setting). The cheapest acceptable setting wins, counting exact
    answers at their cost. When none is acceptable: the best recall within the latency budget, and
    the state says so. The recorded miss share is measured out of sample: the guard fitted on half
    of the tuning queries, counted on the other half, both ways.
    """
    import faiss

    st = ix.state
    assert st is not None
    vault = ix.vault
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    sets = query_sets(vault, untrained_mask(vault, st.train_share, st.trained_n), rng)
    guarded = isinstance(index, faiss.IndexIVF) and not ix.gpu
    tops = np.concatenate([ix.coarse(index, qs.queries, 1)[0][:, 0] for qs in sets]) if guarded else None
    floor = -math.inf
    if tops is not None:  # where data looks like its own Gaussian the null says nothing: then no floor
        mean, spread = data_gaussian(vault, rng, NULL_QUERIES)
        null = structureless_floor(lambda q: ix.coarse(index, q, 1)[0][:, 0], mean, spread)
        floor = null if null <= float(np.quantile(tops, FLOOR_MAX_SHARE)) else -math.inf
    exact_ms = time_exact(vault, sets[0].queries[:3])
    timing_queries = sets[-1].queries  # between stored vectors: not stored vectors

    def evaluate(nprobe: int, kf: int) -> Trial:
        out = [outcome(ix, index, qs, nprobe, kf) for qs in sets]
        rec, gap, top = (np.concatenate(parts) for parts in zip(*out))
        if not guarded:  # no centroid scores: nothing for a guard to compare (custom index types)
            top = np.full(len(top), np.inf, np.float32)
        return Trial(nprobe, kf, rec, gap, top, floor)

    # queries below the floor go to exact search whatever the setting: only the rest is the setting's doing
    floor_share = float(np.mean(tops < floor)) if tops is not None else 0.0

    def acceptable(t: Trial) -> bool:
        return t.recall >= ix.recall_target and t.exact_share <= floor_share + MAX_EXACT_SHARE

    def cost(t: Trial) -> tuple[float, float]:
        """(ms per single query of the approximate search alone, expected ms with the exact answers at their cost)."""
        ann_ms = time_ann(ix, index, timing_queries[:64], t.nprobe, t.k_factor)
        return ann_ms, (1 - t.exact_share) * ann_ms + t.exact_share * exact_ms

    ivf = ivf_of(faiss, index)
    nprobes = [p for p in NPROBES if p <= ivf.nlist] if ivf is not None else [0]
    reach = 0
    if guarded and ivf is not None:
        reach = reach_mod.reach(sets, ix.coarse_centroids(index), reach_mod.list_of_entries(faiss, ivf, vault.n_entries),
                                nprobes)
    nprobes = [p for p in nprobes if p >= reach] or nprobes[-1:]
    best: tuple[float, Trial] | None = None
    fallback: tuple[float, Trial] | None = None  # best recall within the latency budget
    cheapest: tuple[float, Trial] | None = None  # when nothing fits the budget
    for nprobe in nprobes:
        widest = evaluate(nprobe, FACTORS[-1])
        if not acceptable(widest):  # no smaller candidate pool does better: remember it, probe wider
            ann_ms, c = cost(widest)
            if c <= ix.latency_budget_ms and (fallback is None or widest.recall > fallback[1].recall):
                fallback = (c, widest)
            if cheapest is None or c < cheapest[0]:
                cheapest = (c, widest)
            if ann_ms > 4 * ix.latency_budget_ms:
                break  # probing wider only gets slower
            continue
        lo, hi, found = 0, len(FACTORS) - 2, widest
        while lo <= hi:  # recall grows with k_factor (more candidates, exact re-rank): smallest that passes
            mid = (lo + hi) // 2
            t = evaluate(nprobe, FACTORS[mid])
            if acceptable(t):
                found, hi = t, mid - 1
            else:
                lo = mid + 1
        c = cost(found)[1]
        if best is None or c < best[0]:
            best = (c, found)
        elif c > 2 * best[0]:
            break  # probing wider only costs more from here on
    if best is not None:
        chosen_cost, chosen = best
        st.target_met, st.note = True, ""
    else:
        assert cheapest is not None
        chosen_cost, chosen = fallback or cheapest
        st.target_met = False
        st.note = (f"recall@{TUNE_K} reaches {chosen.recall:.3f} at most within {ix.latency_budget_ms:g} ms per "
                   f"query (target {ix.recall_target:.2f}); chose the best setting within that budget")
        log.warning("index %s on %s: %s", ix.spec, vault.path, st.note)
    st.nprobe, st.k_factor, st.reach = chosen.nprobe, chosen.k_factor, reach
    st.guard = chosen.guard if guarded and math.isfinite(chosen.guard) else None
    st.recall, st.exact_share, st.gap_share = chosen.recall, chosen.exact_share, chosen.out_of_sample_misses()
    st.tune_ms, st.exact_ms = chosen_cost, exact_ms
    st.tuned_n, st.tune_queries = index.ntotal, len(chosen.top)
    log.info("tuned %s in %.1f s: nprobe=%d (reach %d) k_factor=%d guard=%s recall@%d=%.3f exact share %.4f, "
             "misses %.4f before the guard, %.4f after (out of sample)", ix.spec, time.perf_counter() - t0,
             st.nprobe, reach, st.k_factor, st.guard, TUNE_K, st.recall, st.exact_share, chosen.missed.mean(),
             st.gap_share)


def time_exact(vault: Any, queries: np.ndarray) -> float:
    """One exact search, in ms (best of a few after a warm-up pass that maps the vault's pages)."""
    exact_search(vault, queries[:1], TUNE_K, None)
    times = []
    for q in queries:
        t = time.perf_counter()
        exact_search(vault, q[None], TUNE_K, None)
        times.append((time.perf_counter() - t) * 1e3)
    return float(min(times))


def time_ann(ix: "VaultIndex", index: Any, queries: np.ndarray, nprobe: int, kf: int) -> float:
    """ms per single query at one setting."""
    t = time.perf_counter()
    for q in queries:
        ix.ann(index, q[None], TUNE_K, nprobe, kf, None)
    return (time.perf_counter() - t) / len(queries) * 1e3
