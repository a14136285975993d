"""How far the probing rule is from what each query needs, and whether the need can be predicted.

For a vault and its index (the cached one, or built), this draws the tuner's four kinds of tuning
query twice (two seeds: one to fit on, one to check on), finds each query's *need* (reach.py: the
fewest of its best-scoring lists that bring its top-5 within the tuner's gap) and compares, in
entries scanned per query (fast-scan blocks + LIST_COST per list, as the tuner counts them):

- the tuned rule (floor, drop, cap, far tier) as the index has it;
- a perfect predictor: every query probes 4x its need, or the lists that hold all of its true
  top-5 when they are more (no rule can know either; the floor any rule that keeps the targets
  could approach);
- an oracle that knows which 10% of queries the perfect predictor gives the most lists and gives
  them its count or the tuned rule's, whichever is more, and the rest the cheapest
  floor/drop/cap rule that keeps the miss rate and recall targets;
- a learned count: log(need) fitted by least squares on the query's centroid-score profile (its
  best score, how many lists lie within 0.005 .. 0.15 of it, its drop to the 2nd .. 256th list),
  times a margin chosen on the first seed to keep the targets, checked on the second.

No timings: cost is counted as the tuner counts it. The targets kept are the expected miss rate
(REACH_RATE) and the recall of all tuning queries together; the tuner also holds each kind to the
recall target less 0.01, which this bench does not check. Used for issue 29 (10M p50): whether a
smarter per-query count could scan fewer codes than the drop rule at the same expected miss rate.

    python bench/bench_probe_need.py --vault /work/huge1/clip-1000000/huge.vault \
        --cache /work/huge1/clip-1000000/cache

`--recall-targets 0.98,0.97,0` adds, per target, the cheapest floor/drop/cap rule over every query
that keeps it (0: the miss-rate limit alone): how much of the probing the recall target costs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURE_DROPS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15)
FEATURE_RANKS = (1, 3, 7, 15, 31, 63, 127, 255)
PERFECT_SLACK = 4  # the perfect predictor probes this many times each query's need
ORACLE_SHARE = 0.1  # the oracle's share of queries (the perfect predictor's largest counts) given what they need
MARGINS = np.arange(0.0, 8.0, 0.05)  # the learned count's margins tried, in log(lists)
EXACT_HEAD = 2 * 64 + 16  # lists re-scored exactly at the head of each query's order


def profile(ix: Any, seed: int, nlist: int, list_of: np.ndarray, step: np.ndarray) -> dict[str, np.ndarray]:
    """One seed's tuning queries: centroid scores and list order (as wide as the widest cap), need, where the true
    top-k's lists stand, validity of the truth, cumulative cost along the order, kind (`list_of`, `step`: from
    tune.list_costs, taken once for both seeds)."""
    from luna_vault.vault.index.queries import query_sets
    from luna_vault.vault.index.train import untrained_mask
    from luna_vault.vault.index.tune import needs_in_order, probe_caps

    st = ix.state
    sets = query_sets(ix.vault, untrained_mask(ix.vault, st.train_share, st.trained_n), np.random.default_rng(seed))
    pooled = [qs for qs in sets if qs.pool is not None]
    scores, order = ix.coarse.scores(np.concatenate([qs.queries for qs in pooled]), probe_caps(nlist)[-1], EXACT_HEAD)
    need, tpos = needs_in_order(ix, pooled, order, list_of)
    return {"scores": scores, "need": need, "tpos": tpos, "valid": np.concatenate([qs.truth_ids >= 0 for qs in pooled]),
            "cum": np.cumsum(step[np.maximum(order, 0)], axis=1),
            "kind": np.concatenate([np.full(len(qs.queries), i) for i, qs in enumerate(pooled)]),
            "names": np.array([qs.name for qs in pooled]), "nlist": np.array(nlist)}


def lists_for_top_k(p: dict[str, np.ndarray]) -> np.ndarray:
    """[B] the first lists of each query's order that hold all of its true top-k (at most the widest order)."""
    width = p["scores"].shape[1]
    return np.where(p["valid"], np.minimum(p["tpos"], width - 1), -1).max(axis=1) + 1


def perfect_count(p: dict[str, np.ndarray]) -> np.ndarray:
    """[B] what a perfect predictor probes: PERFECT_SLACK x the query's need (the reach model's slack) or the lists
    that hold all of its true top-k (recall), whichever is more, at most the widest order. (Its expected miss rate
    in the results means nothing: every slack is at least PERFECT_SLACK, and the per-doubling fit sees one step.)"""
    return np.maximum(PERFECT_SLACK * np.minimum(p["need"], p["scores"].shape[1]), lists_for_top_k(p))


def features(scores: np.ndarray) -> np.ndarray:
    """[B, F] the centroid-score profile of each query (scores [B, W], best first)."""
    from luna_vault.vault.index.coarse import within_drop

    cols = [np.ones(len(scores)), scores[:, 0]]
    cols += [np.log(within_drop(scores, d)) for d in FEATURE_DROPS]
    cols += [scores[:, 0] - scores[:, min(r, scores.shape[1] - 1)] for r in FEATURE_RANKS]
    return np.stack(cols, axis=1)


class Outcome:
    """What probing `count` [B] lists per query gives on one seed's queries."""

    def __init__(self, p: dict[str, np.ndarray], count: np.ndarray) -> None:
        from luna_vault.vault.index.reach import miss_rate
        from luna_vault.vault.index.tune import PerQuery

        self.count = np.clip(count, 1, p["scores"].shape[1]).astype(np.int64)
        per = PerQuery.of(self.count, np.maximum(p["need"], 1).astype(np.float64), p["tpos"], p["valid"], p["cum"])
        self.cost, self.recall = float(per.cost.mean()), float(per.recall.mean())
        self.miss, self.misses = miss_rate(per.slack), int((per.slack < 1).sum())

    def keeps_targets(self, recall_target: float) -> bool:
        from luna_vault.vault.index.reach import REACH_RATE

        return self.miss <= REACH_RATE and self.recall >= recall_target

    def row(self) -> dict[str, float]:
        return {"lists": float(self.count.mean()), "cost": self.cost, "miss_rate": self.miss, "misses": self.misses,
                "recall": self.recall}


def cheapest_rule(p: dict[str, np.ndarray], keep: np.ndarray, wide: np.ndarray, recall_target: float
                  ) -> tuple[Any, Outcome] | None:
    """The cheapest floor/drop/cap rule for the queries in `keep` that keeps the targets with `wide` lists for the rest."""
    from luna_vault.vault.index.coarse import ProbeRule
    from luna_vault.vault.index.tune import DROPS, FLOORS, probe_caps

    best = None
    none_far = np.zeros(len(wide), bool)
    for rule in (ProbeRule(f, d, c if d > 0 else 0) for f in FLOORS for d in DROPS
                 for c in (probe_caps(int(p["nlist"])) if d > 0 else [f])):
        out = Outcome(p, np.where(keep, rule.counts(p["scores"], none_far), np.maximum(wide, 1)))
        if out.keeps_targets(recall_target) and (best is None or out.cost < best[1].cost):
            best = (rule, out)
    return best


def learned(fit: dict[str, np.ndarray], check: dict[str, np.ndarray], floor: int, recall_target: float
            ) -> dict[str, Any]:
    """The learned count fitted on `fit`, its margin the smallest that keeps the targets there, checked on `check`."""
    width = fit["scores"].shape[1]
    X, y = features(fit["scores"]), np.log(np.clip(fit["need"], 1, width).astype(np.float64))
    w = np.linalg.lstsq(X, y, rcond=None)[0]
    Xc, yc = features(check["scores"]), np.log(np.clip(check["need"], 1, width).astype(np.float64))
    r2 = 1 - float(np.var(yc - Xc @ w) / np.var(yc))
    row: dict[str, Any] = {"r2_check": r2, "residual_p99_check": float(np.percentile(yc - Xc @ w, 99))}
    for m in MARGINS:
        if Outcome(fit, np.maximum(np.ceil(np.exp(X @ w + m)), floor)).keeps_targets(recall_target):
            row.update(margin=float(m), check=Outcome(check, np.maximum(np.ceil(np.exp(Xc @ w + m)), floor)).row())
            return row
    row.update(margin=None, check=None)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vault", required=True, help="the vault folder")
    ap.add_argument("--cache", default=None, help="index cache folder (LUNA_VAULT_CACHE; default: the usual one)")
    ap.add_argument("--seeds", default="1,3", help="two seeds: tuning queries to fit on, and to check on")
    ap.add_argument("--out", default=None, help="JSON results (default: print only)")
    ap.add_argument("--recall-targets", default="", help="also the cheapest floor/drop/cap rule for every query at each "
                    "of these pooled recall@5 targets, e.g. 0.98,0.97,0 (0: the miss-rate limit alone)")
    args = ap.parse_args()
    if args.cache:
        os.environ["LUNA_VAULT_CACHE"] = args.cache
    from luna_vault.vault import Vault, get_index

    t = time.perf_counter()
    ix = get_index(Vault.open(Path(args.vault)), None)
    if ix.coarse is None or ix.state is None:
        raise SystemExit(f"{args.vault}: the index has no probing rule to compare ({ix.spec}): nothing to measure")
    import faiss

    from luna_vault.vault.index.state import ivf_of
    from luna_vault.vault.index.tune import list_costs

    nlist, (list_of, step) = ivf_of(faiss, ix.index).nlist, list_costs(faiss, ix.index, ix.vault.n_entries)
    fit, check = (profile(ix, int(s), nlist, list_of, step) for s in args.seeds.split(","))
    print(f"{ix.vault.n_entries:,} entries, {ix.spec}, rule {ix.rule.summary()}; profiles in {time.perf_counter() - t:.0f} s")
    target, rule = ix.recall_target, ix.rule
    res: dict[str, Any] = {"entries": ix.vault.n_entries, "spec": ix.spec, "rule": ix.rule.summary(),
                           "need": {}}  # per kind, percentiles of the need and of the lists holding all of the true top-k
    width, top_k = check["scores"].shape[1], lists_for_top_k(check)
    for k, name in enumerate(check["names"]):
        mine = check["kind"] == k
        res["need"][str(name)] = {what: {q: float(np.percentile(v[mine], q)) for q in (50, 90, 99, 100)}
                                  for what, v in (("need", np.minimum(check["need"], width)), ("all_top_k", top_k))}
    for name, p in (("fit", fit), ("check", check)):
        tuned = Outcome(p, rule.counts(p["scores"], rule.far(p["scores"][:, 0])))
        res[f"tuned_{name}"] = tuned.row()
        perfect = np.maximum(perfect_count(p), rule.floor)
        res[f"perfect_{name}"] = Outcome(p, perfect).row()
        hard = perfect >= np.quantile(perfect, 1 - ORACLE_SHARE, method="higher")
        found = cheapest_rule(p, ~hard, np.maximum(tuned.count, perfect), target)
        res[f"oracle_{name}"] = ({"rule_for_the_rest": found[0].summary(), "flagged": float(hard.mean()), **found[1].row()}
                                 if found else None)
    res["learned"] = learned(fit, check, rule.floor, target)
    for value in (float(v) for v in args.recall_targets.split(",") if v):  # what the recall target costs
        for name, p in (("fit", fit), ("check", check)):
            every = np.ones(len(p["need"]), bool)
            found = cheapest_rule(p, every, every.astype(np.int64), value)
            res[f"cheapest_at_{value:g}_{name}"] = {"rule": found[0].summary(), **found[1].row()} if found else None
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
