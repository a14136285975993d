"""The reach: how many lists a query's neighbourhood spreads over, and how likely a probing rule is to miss it.

A few thousand tuning queries cannot show a one-in-ten-thousand miss, but every one of them shows
how far its neighbourhood reaches: its *need*, the fewest of its best-scoring lists that hold enough
of its exact neighbours for the top-5 to come within TUNE_GAP of the exact one (whatever PQ and
re-ranking then do). A probing rule gives each query some number of lists; its *slack* is that
number over the need (below 1: the query misses). The share of queries with slack below 2, 4, 8
... falls as the slack doubles; it is fitted on a log scale per doubling where it is measured and
extended down to a slack of 1: that is the rule's expected miss rate, which must stay below
REACH_RATE. For a fixed nprobe p this is the share of queries needing more than p/2, p/4, ...
lists, extended to p.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .guard import TUNE_GAP
from .queries import TUNE_K, QuerySet

if TYPE_CHECKING:
    from .siblings import Siblings

REACH_RATE = 1e-5  # a probing rule may miss the neighbourhoods of at most this share of queries (extrapolated):
# 0 misses in 10,000 queries asks for well below 1e-4 per query (at 1e-4, 10,000 queries see one miss on average)
NEVER = np.iinfo(np.int64).max


def list_of_entries(faiss: Any, ivf: Any, n_entries: int) -> np.ndarray:
    """[n_entries] the list each entry is in (-1: in none)."""
    list_of = np.full(n_entries, -1, np.int64)
    invlists = ivf.invlists
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if n:
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), n)
            list_of[ids[(ids >= 0) & (ids < len(list_of))]] = lst
    return list_of


def positions(order: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Per row, where each of `lists` [B, P] stands in that row's probe order `order` [B, W] (0 = first;
    NEVER where it is not in the order, or is -1)."""
    B, W = order.shape
    perm = np.argsort(order, axis=1, kind="stable")
    span = np.int64(max(int(order.max(initial=0)), int(lists.max(initial=0))) + 2)
    offset = span * np.arange(B, dtype=np.int64)[:, None]
    flat = (np.take_along_axis(order, perm, 1) + 1 + offset).ravel()  # sorted: each row's ids, rows apart
    want = (lists + 1 + offset).ravel()
    at = np.minimum(np.searchsorted(flat, want), len(flat) - 1)
    found = (flat[at] == want) & (lists.ravel() >= 0)
    return np.where(found, perm.ravel()[at], NEVER).reshape(lists.shape)


def member_positions(order: np.ndarray, ids: np.ndarray, list_of: np.ndarray, siblings: "Siblings | None",
                     allowed: np.ndarray | None) -> np.ndarray:
    """Where in each row's probe order `order` [B, W] the entries `ids` [B, P] are found: the position of their
    list, or of the first list holding one of their (allowed) prompt siblings, which the search re-ranks with
    whatever it finds (see siblings.py). NEVER: not found within the order."""
    pos = positions(order, np.where(ids >= 0, list_of[np.maximum(ids, 0)], -1))
    if siblings is None:
        return pos
    sib = siblings.table(ids)
    keep = sib >= 0
    if allowed is not None:
        keep &= allowed[np.maximum(sib, 0)]
    lists = np.where(keep, list_of[np.maximum(sib, 0)], -1)
    via = positions(order, lists.reshape(len(ids), -1)).reshape(lists.shape).min(axis=-1)
    return np.minimum(pos, via)


def need(qs: QuerySet, pos: np.ndarray) -> np.ndarray:
    """[m] per query, the fewest lists of its probe order that bring its top-k within TUNE_GAP of the exact
    one; `pos` [m, pool]: where each pool member's list stands in the order (NEVER: not in it)."""
    assert qs.pool is not None
    pool_s = qs.pool[0]
    m, P = pool_s.shape
    exact = np.mean(qs.truth_sims, axis=1)
    by_pos = np.argsort(pos, axis=1, kind="stable")
    out = np.full(m, NEVER, np.int64)
    inside = np.zeros((m, P), bool)
    rows = np.arange(m)
    for j in range(P):  # add the pool members in the order their lists are probed
        member = by_pos[:, j]
        at = pos[rows, member]
        inside[rows, member] = at != NEVER
        first = np.cumsum(inside, axis=1) <= TUNE_K  # the best k inside (the pool is best first)
        got = np.where(inside & first, pool_s, 0).sum(axis=1) / TUNE_K
        enough = inside.sum(axis=1) >= TUNE_K
        ok = enough & (exact - got <= TUNE_GAP) & (out == NEVER) & (at != NEVER)
        out[ok] = at[ok] + 1
    return out


def miss_rate(slack: np.ndarray, rate: float = REACH_RATE) -> float:
    """Expected share of queries whose slack is below 1, from the shares measured below 2, 4, 8, ...

    Observed misses count as they are. The shares below 2^t are fitted on a log scale against t at
    the three smallest t where at least three queries (and not all) are measured: the tail, not
    the bulk, whose fall is slower. The fit is extended to t = 0. With fewer than two such points
    nothing can be fitted: every query must then have a slack of at least 2 (one doubling beyond
    the widest need seen), else the rule is taken to miss (1.0).
    """
    n = max(len(slack), 1)
    observed = float(np.mean(slack < 1)) if len(slack) else 0.0
    if observed > 0:
        return observed
    ts = np.arange(1, 12)
    share = np.array([np.mean(slack < 2.0**t) for t in ts])
    measured = np.flatnonzero((share * n >= 3) & (share < 1))[:3]  # a share of 1 says nothing of the tail
    if len(measured) >= 2:
        slope, icpt = np.polyfit(ts[measured], np.log(share[measured]), 1)
        if slope <= 0:  # not rising with t: nothing to extend
            return 1.0
        return float(math.exp(icpt))
    return 0.0 if float(np.min(slack, initial=np.inf)) >= 2 else 1.0


def reach_from_needs(needs: np.ndarray, nprobes: Sequence[int], rate: float = REACH_RATE) -> tuple[int, np.ndarray]:
    """The smallest fixed nprobe of `nprobes` whose expected miss rate (see miss_rate) is within `rate`, and the
    measured share of queries needing more than each of `nprobes` (the widest when none is)."""
    ps = sorted(int(p) for p in nprobes)
    survival = np.array([np.mean(needs > p) for p in ps])
    for p in ps:
        if miss_rate(p / np.maximum(needs, 1).astype(np.float64), rate) <= rate:
            return p, survival
    return ps[-1], survival
