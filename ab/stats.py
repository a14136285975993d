"""Paired comparisons against the baseline arm: mean difference, bootstrap 95% interval, win rate."""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import HIGHER_IS_BETTER

FEW = 10  # fewer paired samples than this: the report says the intervals are not to be trusted yet
RESAMPLES = 2000


def bootstrap_ci(diffs: np.ndarray, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap 95% interval of the mean (scipy.stats.bootstrap); None under 2 samples."""
    if len(diffs) < 2:
        return None
    if float(np.ptp(diffs)) == 0.0:
        return float(diffs[0]), float(diffs[0])
    from scipy.stats import bootstrap

    res = bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=RESAMPLES, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired(rows: list[dict[str, Any]], arm: str, baseline: str, score: str) -> dict[str, Any]:
    """Arm minus baseline over the (reference, seed) pairs both have a score for."""
    base = {(r["reference"], r["seed"]): r.get(score) for r in rows if r["arm"] == baseline}
    pairs = [(r[score], base[(r["reference"], r["seed"])]) for r in rows
             if r["arm"] == arm and r.get(score) is not None and base.get((r["reference"], r["seed"])) is not None]
    values = [r[score] for r in rows if r["arm"] == arm and r.get(score) is not None]
    out: dict[str, Any] = {"n": len(values), "mean": float(np.mean(values)) if values else None, "pairs": len(pairs)}
    if arm == baseline or not pairs:
        return out
    d = np.array([a - b for a, b in pairs], dtype=np.float64)
    out["diff"] = float(d.mean())
    ci = bootstrap_ci(d)
    out["ci"] = list(ci) if ci else None
    better = HIGHER_IS_BETTER[score]
    if better is not None:
        signed = d if better else -d
        out["win_rate"] = float((np.sum(signed > 0) + 0.5 * np.sum(signed == 0)) / len(d))
    return out


def summarise(rows: list[dict[str, Any]], arms: list[str], baseline: str, scores: list[str]) -> dict[str, Any]:
    """Per category (and 'all'), per arm, per score: the arm's mean and its paired comparison."""
    cats = sorted({r["category"] for r in rows})
    groups = {"all": rows} if len(cats) <= 1 else {"all": rows, **{c: [r for r in rows if r["category"] == c] for c in cats}}
    return {cat: {arm: {s: paired(rs, arm, baseline, s) for s in scores} for arm in arms} for cat, rs in groups.items()}
