"""Tuning: the probing rule, k_factor and guard of an IVF index, chosen by measurement on queries that are not stored.

1. Every candidate probing rule (floor x drop, see coarse.ProbeRule) is scored from the coarse step
   alone, for all tuning queries at once: the share of each query's true top-5 inside the lists it
   would probe (its recall if scanning were exact), its expected miss rate (reach.miss_rate: how
   far the tuning queries' neighbourhoods reach, extended to 1 query in 100,000), and its cost
   (entries scanned, in fast-scan blocks of 32, plus LIST_COST per list). A rule whose miss rate is too
   high may also be tried with a far tier (`far_tiers`): a higher floor for the queries with the lowest
   best centroid scores, which are the ones whose neighbourhoods reach furthest (after an append from
   regions the partition never saw: 550k CLIP-shaped, old-region p50 2.33 -> 1.49 ms, 0 misses).
2. The cheapest rules whose miss rate is within REACH_RATE and whose recall meets the target are
   then searched for real, cheapest first, for the smallest k_factor whose recall (with PQ codes
   and the exact re-rank) meets the target, with a guard that sends every tuning query whose
   similarity gap exceeds TUNE_GAP to exact search, answering at most MAX_EXACT_SHARE of them so.
3. The k_factor then gets one step of headroom (`headroom`) when that step buys RECALL_STEP of recall:
   the smallest k_factor that passes sits at the edge for the tuning sample, and a few dozen more rows
   re-ranked exactly are the cheapest recall there is (500k anisotropic: k_factor 6 -> 8, recall@5
   0.995 -> 0.998 on the benchmark's queries, p50 +1.4%). Not where the stored vectors are too large
   to keep in memory (a 10M-entry vault): there each row re-ranked may be a read from disk.
Every choice rests on counts, never on timings, so two builds of the same data choose the same
setting; the time per query is measured afterwards and recorded.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import reach as reach_mod
from .coarse import RESCORE_EXTRA, ProbeRule, within_drop
from .exact import exact_search
from .guard import MAX_EXACT_SHARE, TUNE_GAP, Trial
from .measure import GAP_LIMIT, recall_per_query, similarity_gap
from .queries import TUNE_K, QuerySet, held_out, query_sets
from .state import ivf_of
from .train import untrained_mask

if TYPE_CHECKING:
    from .core import VaultIndex

log = logging.getLogger(__name__)

RECALL_TARGET = 0.98  # on all tuning queries together; the margin keeps unseen queries at >= 0.97
SET_RECALL_MARGIN = 0.01  # ... and each kind of tuning query (but "no cluster") on its own at most this below it
FACTORS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96)
FLOORS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
DROPS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3)
MAX_PROBE_SHARES = (16, 8, 4)  # a query probes at most this share of the lists (at least 64): bounds the slowest
LIST_COST = 16  # one more list probed costs about as much as 16 more entries scanned (measured: ~1 us vs ~60 ns)
BLOCK = 32  # fast-scan codes are scanned in blocks of 32: a list's last block costs as much as a full one
RULES_TRIED = 6
RECALL_STEP = 0.002  # the k_factor's step of headroom is taken when it raises the tuning recall by this much
DRIFT_QUERIES = 256  # appended entries whose neighbourhoods are measured at append time
FAR_SHARES = np.arange(1, 26) / 50  # a far tier widens the floor of 2%, 4%, ... 50% of the tuning queries


@dataclass
class RuleStats:
    """What the coarse step alone says of one probing rule on the tuning queries."""

    rule: ProbeRule
    cost: float = math.inf  # mean entries scanned (in fast-scan blocks) + LIST_COST per list
    recall: float = 1.0  # mean share of the true top-k inside the probed lists
    worst_set: float = 1.0  # the same, for the kind of tuning query where it is lowest
    miss_rate: float = 0.0  # expected share of queries whose neighbourhood the lists miss (reach.miss_rate)
    lists: float = 0.0  # mean lists probed


def probe_caps(nlist: int) -> list[int]:
    """The widest probes a rule may allow, smallest first."""
    return sorted({min(nlist, max(64, nlist // share)) for share in MAX_PROBE_SHARES})


def outcome(ix: "VaultIndex", index: Any, qs: QuerySet, rule: ProbeRule, kf: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: recall@k, similarity gap, best centroid score, at one setting (no guard)."""
    k = TUNE_K
    extra = 1 if qs.exclude is not None else 0
    sims, ids, top = ix.ann(index, qs.queries, k + extra, rule, kf, qs.allowed)
    if qs.exclude is not None:
        keep = ids != qs.exclude[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    return (recall_per_query(ids, qs.truth_ids), similarity_gap(qs.truth_sims, sims), top)


@dataclass
class PerQuery:
    """What the coarse step alone says of one probing rule, per tuning query."""

    slack: np.ndarray  # lists probed over lists needed (reach.py)
    recall: np.ndarray  # share of the true top-k inside the probed lists
    cost: np.ndarray  # entries scanned (in fast-scan blocks) + LIST_COST per list
    count: np.ndarray  # lists probed

    @staticmethod
    def of(count: np.ndarray, need: np.ndarray, tpos: np.ndarray, valid: np.ndarray, cum: np.ndarray) -> "PerQuery":
        """Probing `count` [B] lists: from each query's need [B] (>= 1), where its true top-k's lists stand in its
        order [B, k] (`valid`: which of them exist) and the cumulative cost along its order [B, W]."""
        recall = ((tpos < count[:, None]) & valid).sum(1) / np.maximum(valid.sum(1), 1)
        return PerQuery(count / need, recall, cum[np.arange(len(count)), count - 1], count)

    def where(self, far: np.ndarray, other: "PerQuery") -> "PerQuery":
        """`other`'s values for the queries in `far`, these for the rest."""
        return PerQuery(np.where(far, other.slack, self.slack), np.where(far, other.recall, self.recall),
                        np.where(far, other.cost, self.cost), np.where(far, other.count, self.count))


def summarise(rule: ProbeRule, p: PerQuery, kinds: list[tuple[int, int]]) -> RuleStats:
    """RuleStats of `rule` from its per-query outcome (`kinds`: the rows of each kind held to the target)."""
    per_set = [float(p.recall[a:b].mean()) for a, b in kinds] or [1.0]
    return RuleStats(rule, float(p.cost.mean()), float(p.recall.mean()), min(per_set), reach_mod.miss_rate(p.slack),
                     float(p.count.mean()))


def list_costs(faiss: Any, index: Any, n_entries: int) -> tuple[np.ndarray, np.ndarray]:
    """([n_entries] the list of each entry, -1: none; [nlist] what probing each list costs: its entries, in fast-scan
    blocks of BLOCK when the index scans so, + LIST_COST)."""
    ivf = ivf_of(faiss, index)
    list_of = reach_mod.list_of_entries(faiss, ivf, n_entries)
    sizes = np.bincount(list_of[list_of >= 0], minlength=ivf.nlist)
    fast_scan = "FastScan" in type(faiss.downcast_index(index)).__name__
    return list_of, (np.ceil(sizes / BLOCK) * BLOCK if fast_scan else sizes) + LIST_COST


def needs_in_order(ix: "VaultIndex", pooled: list[QuerySet], order: np.ndarray, list_of: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For the queries of `pooled` (stacked, with pools) and their lists in probe order `order` [B, W]: each query's
    need (reach.need; NEVER: not within the order) and where its true top-k's lists stand in the order [B, k]."""
    needs, truth_pos = [], []
    a = 0
    for qs in pooled:
        assert qs.pool is not None
        b = a + len(qs.queries)
        needs.append(reach_mod.need(qs, reach_mod.member_positions(order[a:b], qs.pool[1], list_of, ix.siblings, qs.allowed)))
        truth_pos.append(reach_mod.member_positions(order[a:b], qs.truth_ids, list_of, ix.siblings, qs.allowed))
        a = b
    return np.concatenate(needs), np.concatenate(truth_pos)


def analyse_rules(ix: "VaultIndex", index: Any, sets: list[QuerySet]) -> tuple[list[RuleStats], int]:
    """RuleStats of every candidate rule (see the module docstring; with far tiers, see `far_tiers`), and the reach:
    the smallest fixed nprobe (no drop) whose miss rate is within REACH_RATE, for comparison."""
    import faiss

    assert ix.coarse is not None
    ivf = ivf_of(faiss, index)
    list_of, step = list_costs(faiss, index, ix.vault.n_entries)
    caps = probe_caps(ivf.nlist)
    cap = caps[-1]
    pooled = [qs for qs in sets if qs.pool is not None]
    queries = np.concatenate([qs.queries for qs in pooled])
    bounds = np.cumsum([0] + [len(qs.queries) for qs in pooled])
    kinds = [(a, b) for qs, a, b in zip(pooled, bounds[:-1], bounds[1:]) if qs.own_recall_target]
    valid = np.concatenate([qs.truth_ids >= 0 for qs in pooled])
    per: dict[ProbeRule, PerQuery] = {}
    tops: dict[int, np.ndarray] = {}
    for floor in (f for f in FLOORS if f <= cap):  # the order's head is exact for 2 * floor + RESCORE_EXTRA lists
        scores, order = ix.coarse.scores(queries, cap, 2 * floor + RESCORE_EXTRA)
        cum = np.cumsum(step[np.maximum(order, 0)], axis=1)
        need, tpos = needs_in_order(ix, pooled, order, list_of)
        need = np.maximum(need, 1).astype(np.float64)
        tops[floor] = scores[:, 0]
        near = np.zeros(len(queries), bool)
        within = {drop: within_drop(scores, drop) for drop in DROPS if drop > 0}  # one per drop, shared by its caps
        for drop, widest in ((d, c) for d in DROPS for c in (caps if d > 0 else [floor])):
            if widest < floor or (drop > 0 and widest == floor):
                continue
            rule = ProbeRule(floor, drop, widest if drop > 0 else 0)
            count = rule.counts(scores, near, within.get(drop))
            per[rule] = PerQuery.of(count, need, tpos, valid, cum)
    stats = {rule: summarise(rule, p, kinds) for rule, p in per.items()}
    reach = next((r.floor for r, s in stats.items() if r.drop == 0 and s.miss_rate <= reach_mod.REACH_RATE), cap)
    return list(stats.values()) + far_tiers(per, stats, tops, kinds), reach


def far_tiers(per: dict[ProbeRule, PerQuery], stats: dict[ProbeRule, RuleStats], tops: dict[int, np.ndarray],
              kinds: list[tuple[int, int]]) -> list[RuleStats]:
    """Rules that give queries far from every centroid a higher floor than the rest.

    The tuning queries whose neighbourhoods reach furthest are mostly those whose best centroid score is low
    (entries appended from regions the partition never saw, thinly covered regions). For each rule whose miss
    rate is too high, the smallest higher floor that meets REACH_RATE on its own (same drop and cap) is given to
    the fewest queries, lowest best score first, in steps of FAR_SHARES, that bring the miss rate within it.
    """
    out = []
    for lo, p_lo in per.items():
        if stats[lo].miss_rate <= reach_mod.REACH_RATE:
            continue
        hi = min((r for r in per if r.floor > lo.floor and r.drop == lo.drop and r.cap == (lo.cap if lo.drop > 0 else 0)
                  and stats[r].miss_rate <= reach_mod.REACH_RATE), key=lambda r: r.floor, default=None)
        if hi is None:
            continue
        top, p_hi = tops[lo.floor], per[hi]
        cuts = np.quantile(top, FAR_SHARES)
        far = top[None, :] < cuts[:, None]  # [cut, query]
        if reach_mod.miss_rate(p_lo.where(far[-1], p_hi).slack) > reach_mod.REACH_RATE:
            continue
        a, b = 0, len(cuts) - 1  # the miss rate falls as the far share grows: the smallest share that meets it
        while a < b:
            mid = (a + b) // 2
            if reach_mod.miss_rate(p_lo.where(far[mid], p_hi).slack) <= reach_mod.REACH_RATE:
                b = mid
            else:
                a = mid + 1
        rule = ProbeRule(lo.floor, lo.drop, lo.cap, hi.floor, float(cuts[b]))
        out.append(summarise(rule, p_lo.where(far[b], p_hi), kinds))
    return out


def tune(ix: "VaultIndex", index: Any) -> None:
    """Choose (probing rule, k_factor, guard) by measurement on queries that are not stored vectors; sets ix.state.

    See the module docstring. When no rule meets the recall target (the widest rule is an eighth of
    the lists), the setting with the best recall is kept and the state says so.
    """
    import faiss

    st = ix.state
    assert st is not None
    vault = ix.vault
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    sets = query_sets(vault, untrained_mask(vault, st.train_share, st.trained_n), rng)
    guarded = isinstance(index, faiss.IndexIVF) and ix.coarse is not None and not ix.gpu
    ivf = ivf_of(faiss, index)
    reach = 0
    if guarded:
        stats, reach = analyse_rules(ix, index, sets)
        fit = sorted((s for s in stats if s.miss_rate <= reach_mod.REACH_RATE and s.recall >= ix.recall_target
                      and s.worst_set >= ix.recall_target - SET_RECALL_MARGIN), key=lambda s: (s.cost, -s.recall))
        tried = fit[:RULES_TRIED] or sorted(stats, key=lambda s: (-s.recall, s.cost))[:2]
    else:  # no centroid scores (other index types): fixed nprobe, widening
        widest = ivf.nlist if ivf is not None else 1
        tried = [RuleStats(ProbeRule(p)) for p in FLOORS if p <= widest] or [RuleStats(ProbeRule(1))]

    # queries from no cluster have many near-equal neighbours: a returned set a little below the exact one is
    # expected there, only a real miss must be avoided; the other kinds keep the margin (TUNE_GAP)
    limit = np.concatenate([np.full(len(qs.queries), TUNE_GAP if qs.own_recall_target else GAP_LIMIT) for qs in sets])

    def evaluate(rule: ProbeRule, kf: int) -> Trial:
        out = [outcome(ix, index, qs, rule, kf) for qs in sets]
        rec, gap, top = (np.concatenate(parts) for parts in zip(*out))
        if not guarded:  # no centroid scores: nothing for a guard to compare
            top = np.full(len(top), np.inf, np.float32)
        return Trial(rule, kf, rec, gap, top, limit)

    bounds = np.cumsum([0] + [len(qs.queries) for qs in sets])
    kinds = [(a, b) for qs, a, b in zip(sets, bounds[:-1], bounds[1:]) if qs.own_recall_target]

    def recall(t: Trial) -> tuple[float, float]:
        """(recall@k over all tuning queries, the lowest of the kinds held to the target on their own); exact answers
        count as exact."""
        rec = np.where(t.top < t.guard, 1.0, t.rec)
        return float(rec.mean()), min((float(rec[a:b].mean()) for a, b in kinds), default=1.0)

    def exact_share(t: Trial) -> float:
        """Share of the kinds held to the recall target that the guard answers exactly (queries from no cluster may
        go there as they need: what matters for them is that they are not missed)."""
        flagged = t.top < t.guard
        return float(np.mean(np.concatenate([flagged[a:b] for a, b in kinds]))) if kinds else float(flagged.mean())

    def acceptable(t: Trial) -> bool:
        pooled, worst = recall(t)
        return (pooled >= ix.recall_target and worst >= ix.recall_target - SET_RECALL_MARGIN
                and exact_share(t) <= MAX_EXACT_SHARE)

    chosen: tuple[RuleStats, Trial] | None = None
    best_seen: tuple[RuleStats, Trial] | None = None
    for s in tried:
        widest_trial = evaluate(s.rule, FACTORS[-1])
        if best_seen is None or recall(widest_trial)[0] > recall(best_seen[1])[0]:
            best_seen = (s, widest_trial)
        if not acceptable(widest_trial):
            continue
        lo, hi, found = 0, len(FACTORS) - 2, widest_trial
        while lo <= hi:  # recall grows with k_factor (more candidates, exact re-rank): smallest that passes
            mid = (lo + hi) // 2
            t = evaluate(s.rule, FACTORS[mid])
            if acceptable(t):
                found, hi = t, mid - 1
            else:
                lo = mid + 1
        step = FACTORS.index(found.k_factor) + 1
        if step < len(FACTORS) and ix.rows_in_memory:  # rows read from disk are not cheap recall
            up = widest_trial if step == len(FACTORS) - 1 else evaluate(s.rule, FACTORS[step])
            found = headroom(found, up) if acceptable(up) else found
        chosen = (s, found)
        break
    assert best_seen is not None
    stats_chosen, trial = chosen or best_seen
    rule = trial.setting
    assert isinstance(rule, ProbeRule)
    st.nprobe, st.drop, st.max_probe, st.k_factor, st.reach = rule.floor, rule.drop, rule.cap, trial.k_factor, reach
    st.far_floor, st.far_score = (rule.far_floor, rule.far_score) if rule.far_floor else (0, None)
    st.mean_probe = stats_chosen.lists
    st.guard = trial.guard if guarded and math.isfinite(trial.guard) else None
    st.recall, st.exact_share, st.gap_share = recall(trial)[0], trial.exact_share, trial.out_of_sample_misses()
    st.exact_ms = time_exact(vault, sets[0].queries[:3])
    timing = np.concatenate([qs.queries[:16] for qs in sets])
    ann_ms = time_ann(ix, index, timing, rule, trial.k_factor)
    st.tune_ms = (1 - trial.exact_share) * ann_ms + trial.exact_share * st.exact_ms
    st.tuned_n, st.tune_queries = index.ntotal, len(trial.top)
    st.target_met = chosen is not None
    pooled, worst = recall(trial)
    st.note = "" if chosen is not None else (
        f"no probing rule tried (up to {probe_caps(ivf.nlist)[-1] if ivf is not None else 1} lists per query) met the "
        f"targets (recall@{TUNE_K} >= {ix.recall_target:.2f} over all tuning queries and >= "
        f"{ix.recall_target - SET_RECALL_MARGIN:.2f} for each kind, at most {MAX_EXACT_SHARE:.0%} of them answered by "
        f"exact search): the one with the best recall has {pooled:.3f} (lowest kind {worst:.3f}) with "
        f"{exact_share(trial):.1%} answered exactly; it is used, at ~{st.tune_ms:.1f} ms per query")
    if st.note:
        log.warning("index %s on %s: %s", ix.spec, vault.path, st.note)
    a = 0
    for qs in sets:
        part = slice(a, a + len(qs.queries))
        a += len(qs.queries)
        log.info("  %s: recall@%d %.3f, %d of %d with a gap above %.3f", qs.name, TUNE_K, trial.rec[part].mean(),
                 int(trial.bad[part].sum()), len(qs.queries), float(limit[part][0]) if len(qs.queries) else TUNE_GAP)
    log.info("tuned %s in %.1f s: probe %s (mean %.1f, coarse recall %.3f; fixed reach %d), k_factor %d, guard %s: recall@%d "
             "%.3f, exact share %.4f, misses %.4f before the guard, %.4f after (out of sample)",
             ix.spec, time.perf_counter() - t0, rule.summary(), st.mean_probe, stats_chosen.recall, reach, trial.k_factor, st.guard,
             TUNE_K, st.recall, st.exact_share, trial.missed.mean(), st.gap_share)


def headroom(found: Trial, up: Trial) -> Trial:
    """`up` (the next k_factor above `found`, the smallest that meets the target) when it raises the tuning recall
    (exact answers counted as exact) by RECALL_STEP or more, else `found`."""
    return up if up.recall >= found.recall + RECALL_STEP else found


def drift(ix: "VaultIndex", index: Any, first_new: int) -> tuple[float, int, int]:
    """How the tuned rule serves entries appended since tuning (ids from `first_new`): (its expected miss rate on
    queries like them, see reach.miss_rate; how many were measured; the fixed nprobe they would need).

    Each sampled new entry is a query with itself hidden (a new image of a new prompt), its exact
    neighbours found in the whole vault. Entries from regions the partition has no lists for spread
    over many lists: their miss rate tells whether the index needs tuning again.
    """
    import faiss

    assert ix.coarse is not None and ix.state is not None
    live = ix.vault.live_mask()
    new = np.flatnonzero(live[first_new:]) + first_new
    if not len(new):
        return 0.0, 0, 0
    rng = np.random.default_rng(2)
    qids = np.sort(rng.choice(new, min(DRIFT_QUERIES, len(new)), replace=False))
    qs = held_out(ix.vault, qids, "appended")
    ivf = ivf_of(faiss, index)
    list_of = reach_mod.list_of_entries(faiss, ivf, ix.vault.n_entries)
    rule = ix.rule
    width = max(rule.widest, probe_caps(ivf.nlist)[-1])
    scores, order, far = ix.coarse.ranked(qs.queries, rule, width)
    assert qs.pool is not None
    need = reach_mod.need(qs, reach_mod.member_positions(order, qs.pool[1], list_of, ix.siblings, qs.allowed))
    count = rule.counts(scores, far)
    rate = reach_mod.miss_rate(count / np.maximum(need, 1).astype(np.float64))
    fixed, _ = reach_mod.reach_from_needs(need, [p for p in FLOORS if p <= width])
    log.info("appended entries (%d measured): the tuned rule misses an expected %.2g of their neighbourhoods "
             "(limit %.0e); a fixed nprobe would need %d", len(qids), rate, reach_mod.REACH_RATE, fixed)
    return rate, len(qids), fixed


def time_exact(vault: Any, queries: np.ndarray) -> float:
    """One exact search, in ms (best of a few after a warm-up pass that maps the vault's pages)."""
    exact_search(vault, queries[:1], TUNE_K, None)
    times = []
    for q in queries:
        t = time.perf_counter()
        exact_search(vault, q[None], TUNE_K, None)
        times.append((time.perf_counter() - t) * 1e3)
    return float(min(times))


def time_ann(ix: "VaultIndex", index: Any, queries: np.ndarray, rule: ProbeRule, kf: int) -> float:
    """ms per single query at one setting (mean)."""
    t = time.perf_counter()
    for q in queries:
        ix.ann(index, q[None], TUNE_K, rule, kf, None)
    return (time.perf_counter() - t) / len(queries) * 1e3
