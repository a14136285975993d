"""The query-time guard: a query whose best centroid score is too low for the partition to represent it is
answered by exact search. Fitted per tuning setting (`Trial`), never below a structureless floor."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .measure import GAP_LIMIT

TUNE_GAP = GAP_LIMIT / 2  # tuning treats half the limit as a miss: a margin for the queries tuning never saw
NULL_QUERIES = 512  # structureless queries that set the guard's floor (see structureless_floor)
NULL_QUANTILE = 0.95
FLOOR_MAX_SHARE = 0.05  # a floor that would send more of the tuning queries to exact search is dropped
MAX_EXACT_SHARE = 0.01  # the guard may answer this share of tuning queries exactly beyond those below its floor


class Trial:
    """One tuning setting's outcome per tuning query, and the guard fitted to it."""

    def __init__(self, nprobe: int, k_factor: int, recall: np.ndarray, gap: np.ndarray, top: np.ndarray,
                 floor: float) -> None:
        self.nprobe, self.k_factor, self.rec, self.top, self.floor = nprobe, k_factor, recall, top, floor
        self.bad = gap > TUNE_GAP  # what the setting and its guard must avoid (with a margin)
        self.missed = gap > GAP_LIMIT  # what counts as a miss
        self.guard = self.fit_guard(np.ones(len(gap), bool))
        flagged = top < self.guard
        self.recall = float(np.where(flagged, 1.0, recall).mean())
        self.exact_share = float(flagged.mean())

    def fit_guard(self, rows: np.ndarray) -> float:
        """The smallest threshold that sends every missed query among `rows` to exact search."""
        bad = rows & self.bad
        return max(self.floor, float(self.top[bad].max()) + 1e-6) if bad.any() else self.floor

    def out_of_sample_misses(self) -> float:
        """Share of queries still missed when the guard is fitted on the other half of the queries."""
        half = np.arange(len(self.bad)) % 2 == 0
        missed = 0
        for fit in (half, ~half):
            missed += int((~fit & self.missed & (self.top >= self.fit_guard(fit))).sum())
        return missed / max(len(self.bad), 1)


def structureless_floor(best_centroid_score: Callable[[np.ndarray], np.ndarray], mean: np.ndarray,
                        spread: np.ndarray) -> float:
    """The guard's floor: how well the partition "represents" queries that belong to no cluster.

    Structureless queries are drawn from a Gaussian with the vault's own mean and covariance
    (`mean + spread`, see queries.data_gaussian): they share the data's common direction and
    spread but none of its clusters. A real query whose best centroid scores no better than
    NULL_QUANTILE of them is in a region the partition does not represent; it gets exact search.
    (Where the data is close to one Gaussian anyway the null looks like data: when the floor
    would send more than FLOOR_MAX_SHARE of the tuning queries to exact search, tuning drops it.)
    """
    null = mean + spread
    null /= np.linalg.norm(null, axis=1, keepdims=True)
    return float(np.quantile(best_centroid_score(null), NULL_QUANTILE))
