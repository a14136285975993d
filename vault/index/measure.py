"""How good an approximate answer is: recall of the true top-k, and the similarity gap that defines a miss."""

from __future__ import annotations

import numpy as np

GAP_LIMIT = 0.05  # a query "misses" when exact mean top-k similarity exceeds the returned one by more


def recall_per_query(got: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[B] share of each row's true ids (>= 0) that were returned."""
    out = np.empty(len(truth), np.float64)
    for r, (g, t) in enumerate(zip(got, truth)):
        t = set(t[t >= 0].tolist())
        out[r] = len(t & set(g[g >= 0].tolist())) / max(len(t), 1)
    return out


def similarity_gap(exact_sims: np.ndarray, got_sims: np.ndarray) -> np.ndarray:
    """[B] exact mean top-k similarity minus returned mean top-k similarity (a missing result counts as -1).

    Recall says how many of the true top-k came back; the gap says how much worse what came back
    is. A near-tie swapped for its neighbour costs recall but no gap; an unrelated match in place
    of a close one is a large gap. GAP_LIMIT marks a query as missed.
    """
    want = np.where(np.isfinite(exact_sims), exact_sims, np.nan)
    valid = np.isfinite(want)
    got = np.where(np.isfinite(got_sims), got_sims, -1.0)
    n = np.maximum(valid.sum(axis=1), 1)
    return (np.nansum(want, axis=1) - np.where(valid, got[:, : want.shape[1]], 0).sum(axis=1)) / n
