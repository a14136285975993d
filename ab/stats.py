"""Paired comparisons against the baseline arm: mean difference, bootstrap 95% interval, wins / ties / losses,
and a verdict that weighs the interval against a threshold of practical relevance per score.

A difference the samples support is not a finding unless it is large enough to matter: a +0.0002 hue
difference whose interval excludes 0 is "no difference that matters". The thresholds (RELEVANCE, and
the README's "Is it helping?") are what a person could notice; `relevance:` in ab.yaml replaces them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .config import HIGHER_IS_BETTER

FEW = 10  # fewer paired samples than this: the report says the intervals are not to be trusted yet
RESAMPLES = 2000
# The smallest mean difference that matters, per score (vault agreement: see relevance()):
RELEVANCE = {
    "clip_similarity": 0.01,  # cosine in the CLIP vision model: a convention; smaller shifts are not a visible change
    "ciede2000": 1.0,  # CIEDE2000 is scaled so that ΔE ≈ 1 is a just-noticeable colour difference
    "hue_distance": 0.05,  # above re-encoding noise: a JPEG q60 re-encode moves it by up to 0.038 (98 public images)
}
# What a verdict says, for each of its words
VERDICT_TEXT = {"better": "better", "worse": "worse", "same": "no difference that matters",
                "unclear": "unclear (the interval reaches a difference that matters: add pairs)",
                "few": "too few pairs to tell"}


def relevance(agreement_k: int = 5, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Thresholds of practical relevance per score; vault agreement's is half a shared prompt of the k compared."""
    return {**RELEVANCE, "vault_agreement": 0.5 / agreement_k, **(overrides or {})}


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


def verdict(diff: float, ci: list[float] | tuple[float, float] | None, higher_is_better: bool, threshold: float) -> str:
    """better / worse: the interval excludes 0 and the mean difference reaches the threshold (on the good or bad
    side); same: the whole interval lies inside ±threshold; unclear: anything else; few: no interval (1 pair)."""
    if not ci:
        return "few"
    sign = 1.0 if higher_is_better else -1.0
    d = sign * diff
    lo, hi = sorted((sign * ci[0], sign * ci[1]))
    if lo > 0 and d >= threshold:
        return "better"
    if hi < 0 and d <= -threshold:
        return "worse"
    if -threshold < lo and hi < threshold:
        return "same"
    return "unclear"


def paired(rows: list[dict[str, Any]], arm: str, baseline: str, score: str, threshold: float = 0.0) -> dict[str, Any]:
    """Arm minus baseline over the (reference, seed) pairs both have a score for. A pair is a win or a loss when
    the arm is better or worse by at least `threshold` (and not by 0), else a tie."""
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
        wins = int(np.sum((signed > 0) & (signed >= threshold)))
        losses = int(np.sum((signed < 0) & (-signed >= threshold)))
        out.update(wins=wins, ties=len(d) - wins - losses, losses=losses, win_rate=wins / len(d),
                   relevance=threshold, verdict=verdict(out["diff"], out["ci"], better, threshold))
    return out


def summarise(rows: list[dict[str, Any]], arms: list[str], baseline: str, scores: list[str],
              thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Per category (and 'all'), per arm, per score: the arm's mean and its paired comparison."""
    t = relevance() if thresholds is None else thresholds
    cats = sorted({r["category"] for r in rows})
    groups = {"all": rows} if len(cats) <= 1 else {"all": rows, **{c: [r for r in rows if r["category"] == c] for c in cats}}
    return {cat: {arm: {s: paired(rs, arm, baseline, s, t.get(s, 0.0)) for s in scores} for arm in arms}
            for cat, rs in groups.items()}


def arm_verdict(by_score: Mapping[str, dict[str, Any]]) -> str:
    """One word for an arm over its scores: better, worse, mixed, same (nothing that matters), unclear or few."""
    words = [p["verdict"] for p in by_score.values() if p.get("verdict")]
    if not words:
        return "few"
    better, worse = "better" in words, "worse" in words
    if better and worse:
        return "mixed"
    if better or worse:
        return "better" if better else "worse"
    if all(w == "same" for w in words):
        return "same"
    return "few" if all(w == "few" for w in words) else "unclear"
