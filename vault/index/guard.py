"""The query-time guard: a query whose best centroid score is as low as those where tuning saw a poor answer is
answered by exact search. Fitted per tuning setting (`Trial`), with a margin (TUNE_GAP)."""

from __future__ import annotations

import numpy as np

from .measure import GAP_LIMIT

TUNE_GAP = GAP_LIMIT / 2  # tuning treats half the limit as a miss: a margin for the queries tuning never saw
MAX_EXACT_SHARE = 0.01  # a setting whose guard answers more of the tuning queries exactly is not acceptable
# (of the kinds held to the recall target: see tune.py)


class Trial:
    """One tuning setting's outcome per tuning query (recall, gap, best centroid score), and the guard fitted to it."""

    def __init__(self, setting: object, k_factor: int, recall: np.ndarray, gap: np.ndarray, top: np.ndarray,
                 limit: np.ndarray | float = TUNE_GAP) -> None:
        """`limit`: per query, the gap the setting and its guard must avoid (TUNE_GAP: with a margin)."""
        self.setting, self.k_factor, self.rec, self.top = setting, k_factor, recall, top
        self.bad = gap > limit  # what the setting and its guard must avoid
        self.missed = gap > GAP_LIMIT  # what counts as a miss
        self.guard = self.fit_guard(np.ones(len(gap), bool))
        flagged = top < self.guard
        self.recall = float(np.where(flagged, 1.0, recall).mean())
        self.exact_share = float(flagged.mean())

    def fit_guard(self, rows: np.ndarray) -> float:
        """The smallest threshold that sends every poorly answered query among `rows` to exact search."""
        bad = rows & self.bad
        return float(self.top[bad].max()) + 1e-6 if bad.any() else -np.inf

    def out_of_sample_misses(self) -> float:
        """Share of queries still missed when the guard is fitted on the other half of the queries."""
        half = np.arange(len(self.bad)) % 2 == 0
        missed = 0
        for fit in (half, ~half):
            missed += int((~fit & self.missed & (self.top >= self.fit_guard(fit))).sum())
        return missed / max(len(self.bad), 1)
