"""The reach: how many best-scoring lists a query must probe for its neighbourhood, extrapolated to 1 in 10,000.

A few hundred tuning queries cannot show a one-in-ten-thousand miss, but every one of them shows
how far its neighbourhood reaches: for each query, the fewest best-scoring lists that hold enough
of its exact neighbours for the top-5 to come within TUNE_GAP of the exact one (whatever PQ and
re-ranking then do). The share of queries needing more than p lists falls as p doubles; it is
fitted on a log scale (per doubling) where it is measured, and extended to REACH_RATE.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from .guard import TUNE_GAP
from .queries import TUNE_K, QuerySet

log = logging.getLogger(__name__)

REACH_RATE = 1e-4  # nprobe must cover the neighbourhoods of all but this share of queries (extrapolated)


def list_of_entries(faiss: object, ivf: object, n_entries: int) -> np.ndarray:
    """[n_entries] the list each entry is in (-1: in none)."""
    list_of = np.full(n_entries, -1, np.int64)
    invlists = ivf.invlists  # type: ignore[attr-defined]
    for lst in range(ivf.nlist):  # type: ignore[attr-defined]
        n = invlists.list_size(lst)
        if n:
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), n)  # type: ignore[attr-defined]
            list_of[ids[(ids >= 0) & (ids < len(list_of))]] = lst
    return list_of


def needs(sets: Sequence[QuerySet], centroids: np.ndarray, list_of: np.ndarray, nprobes: list[int]) -> np.ndarray:
    """Per tuning query (all sets, in order): the fewest of `nprobes` best-scoring lists whose exact neighbours
    bring its top-k within TUNE_GAP of the exact one (int64 max: none of them)."""
    needed: list[np.ndarray] = []
    for qs in sets:
        if qs.pool is None:
            continue
        pool_s, pool_i = qs.pool
        scores = qs.queries @ centroids.T  # [m, nlist]
        rank = np.empty_like(scores, dtype=np.int64)
        np.put_along_axis(rank, np.argsort(-scores, axis=1), np.arange(1, scores.shape[1] + 1)[None], axis=1)
        lists = list_of[np.maximum(pool_i, 0)]
        pool_rank = np.where((pool_i >= 0) & (lists >= 0), np.take_along_axis(rank, np.maximum(lists, 0), 1),
                             np.iinfo(np.int64).max)
        exact_mean = np.mean(qs.truth_sims, axis=1)
        need = np.full(len(qs.queries), np.iinfo(np.int64).max, np.int64)
        for p in sorted(nprobes, reverse=True):  # the smallest p that suffices, for every query at once
            inside = pool_rank <= p
            enough = inside.sum(axis=1) >= TUNE_K
            first = np.argsort(~inside, axis=1, kind="stable")[:, :TUNE_K]  # pool is best first
            got = np.take_along_axis(pool_s, first, 1).mean(axis=1)
            ok = enough & (exact_mean - got <= TUNE_GAP)
            need = np.where(ok, p, need)
        needed.append(need)
    return np.concatenate(needed) if needed else np.zeros(0, np.int64)


def reach_from_needs(need: np.ndarray, nprobes: list[int], rate: float = REACH_RATE) -> tuple[int, np.ndarray]:
    """The smallest of `nprobes` that all but `rate` of queries are expected to need at most, from each
    tuning query's need (np.iinfo(int64).max: more than any). Returns it and the measured survival
    (share needing more than each nprobe). The survival is fitted per doubling on a log scale where
    at least three queries need more; with fewer than two such points, one doubling beyond the most seen."""
    ps = np.array(sorted(nprobes), np.float64)
    survival = np.array([np.mean(need > p) for p in ps])
    measured = survival * len(need) >= 3
    if measured.sum() >= 2:
        slope, icpt = np.polyfit(np.log2(ps[measured]), np.log(survival[measured]), 1)
        if slope >= 0:  # not falling: the widest setting
            return int(ps[-1]), survival
        target = 2 ** ((math.log(rate) - icpt) / slope)
        return next((int(p) for p in ps if p >= target), int(ps[-1])), survival
    finite = need < np.iinfo(np.int64).max
    seen = int(need[finite].max()) if finite.all() and len(need) else int(ps[-1])
    return min(2 * seen, int(ps[-1])), survival


def reach(sets: Sequence[QuerySet], centroids: np.ndarray, list_of: np.ndarray, nprobes: list[int]) -> int:
    """The smallest nprobe that reaches the neighbourhoods of all but REACH_RATE of queries, extrapolated
    (0 when there is nothing to choose from)."""
    if len(nprobes) < 2:
        return 0
    need = needs(sets, centroids, list_of, nprobes)
    if not len(need):
        return 0
    value, survival = reach_from_needs(need, nprobes)
    log.info("neighbourhood reach: share needing more than %s lists: %s -> nprobe >= %d",
             sorted(nprobes), [round(float(v), 4) for v in survival], value)
    return value
