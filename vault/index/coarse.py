"""The coarse step: which lists a query probes, chosen per query from its scores against the list centroids.

Scoring every centroid exactly reads nlist x D floats per query (16 MB at 4,096 x 1024-d: about a
millisecond, more than the rest of a search; and when other work has just flushed the caches, as a
sampler does between two detailer crops, even 2 MB at 512 lists costs ~0.5 ms). So a first pass scores the centroids with 4-bit
fast-scan PQ codes of them (D/4 bytes each), and the best `2 * floor + RESCORE_EXTRA` are then
re-scored exactly: the lists a query surely needs, and the best score the guard and the drop
compare against, are exact; only the ranking of the wide tail rests on the approximate scores.

The probing rule (`ProbeRule`), tuned per vault: every list whose score is within `drop` of the
query's best, at least `floor` lists, at most `cap`. A query in a clear neighbourhood (one centroid
far ahead) probes `floor` lists; one whose neighbourhood spreads over many near-equal lists (a query
from no stored cluster, or between clusters) probes them all, up to `cap`. A query far from every
centroid (best score below `far_score`: entries the partition was not trained on, a region it covers
thinly) may need more lists than the floor whatever its scores' spread: it probes at least `far_floor`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .choice import pq_subquantizers
from .faiss_calls import search

FAST_MIN_LISTS = 256  # below this many lists, exact scores of all centroids cost about as much as the fast pass
RESCORE_EXTRA = 16


@dataclass(frozen=True)
class ProbeRule:
    """Which lists a query probes: all within `drop` of its best centroid score, at least `floor` (`far_floor` when
    that best score is below `far_score`), at most `cap` (or that floor)."""

    floor: int
    drop: float = 0.0
    cap: int = 0  # 0: floor (no adaptive widening)
    far_floor: int = 0  # 0: one floor for every query
    far_score: float = -math.inf

    @property
    def widest(self) -> int:
        return max(self.floor, self.cap, self.far_floor)

    @property
    def adaptive(self) -> bool:
        return self.cap > self.floor and self.drop > 0

    def summary(self) -> str:
        """The rule in words, for logs and `luna-vault info`."""
        text = f"{self.floor}..{self.widest} lists within {self.drop:g} of the best centroid score" if self.adaptive else f"{self.floor} lists"
        if self.far_floor > self.floor:
            text += f", at least {self.far_floor} when the best score is below {self.far_score:.4f}"
        return text

    def far(self, top: np.ndarray) -> np.ndarray:
        """[B] bool: the queries (best centroid score `top` [B]) that get `far_floor`."""
        return np.asarray(top < self.far_score) if self.far_floor > self.floor else np.zeros(np.shape(top), bool)

    def counts(self, scores: np.ndarray, far: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
        """[B] lists each query probes, from its centroid scores [B, W] (best first, W as wide as the rule);
        `within`: `within_drop(scores, self.drop)` when the caller has it already."""
        floor = np.minimum(np.where(far, self.far_floor, self.floor), scores.shape[1])
        if not self.adaptive:
            return floor.astype(np.int64)
        within = within_drop(scores, self.drop) if within is None else within
        return np.maximum(floor, np.minimum(within, self.cap)).astype(np.int64)


def within_drop(scores: np.ndarray, drop: float) -> np.ndarray:
    """[B] how many of each row's centroid scores [B, W] (best first) are within `drop` of its best."""
    return (scores >= scores[:, :1] - np.float32(drop)).sum(axis=1)


@dataclass
class Probes:
    """The lists each query probes (best first; -1 pads), their scores (-inf pads) and counts."""

    lists: np.ndarray  # [B, width] int64
    scores: np.ndarray  # [B, width] float32
    count: np.ndarray  # [B] int64
    top: np.ndarray  # [B] float32: the best centroid score (exact)


class Coarse:
    """Scores queries against the list centroids (fast pass + exact re-score of the best) and picks lists to probe."""

    def __init__(self, centroids: np.ndarray, fast: Any | None = None) -> None:
        """`fast`: a trained faiss IndexPQFastScan holding the centroids (see `fast_pass`), or None for exact scoring."""
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.fast = fast

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def scores(self, queries: np.ndarray, width: int, exact_best: int) -> tuple[np.ndarray, np.ndarray]:
        """The `width` best lists per query by score, best first: (scores [B, width], ids [B, width]).

        The `exact_best` first are ranked by exact scores; the rest by the fast pass's estimate.
        """
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        B, width = len(queries), min(width, self.nlist)
        if self.fast is None or width >= self.nlist:
            return _exact_top(queries, self.centroids, width)
        est, ids = self.fast.search(queries, width)
        n = min(exact_best, width)
        head = np.ascontiguousarray(ids[:, :n])
        exact = np.empty((B, n), np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(exact), faiss.swig_ptr(queries), faiss.swig_ptr(self.centroids),
                                         faiss.swig_ptr(head), queries.shape[1], B, n)
        order = np.argsort(-exact, axis=1, kind="stable")
        est[:, :n] = np.take_along_axis(exact, order, 1)
        ids[:, :n] = np.take_along_axis(head, order, 1)
        if n < width:  # keep the tail below the exact head, so "best first" holds for the drop
            est[:, n:] = np.minimum(est[:, n:], est[:, n - 1 : n])
        return est, ids

    def ranked(self, queries: np.ndarray, rule: ProbeRule, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`scores` for `rule`: the `width` best lists, the head the rule's floor needs scored exactly (the far
        floor's, for queries it makes far), and which queries are far: (scores, ids, far [B] bool)."""
        s, i = self.scores(queries, width, 2 * rule.floor + RESCORE_EXTRA)
        far = rule.far(s[:, 0])
        if far.any():
            s[far], i[far] = self.scores(queries[far], width, 2 * rule.far_floor + RESCORE_EXTRA)
        return s, i, far

    def probes(self, queries: np.ndarray, rule: ProbeRule) -> Probes:
        """The lists each query probes under `rule` (see ProbeRule)."""
        width = min(rule.widest, self.nlist)
        if len(queries) == 1 and self.fast is not None and width < self.nlist:
            return self._probes_one(np.ascontiguousarray(queries, dtype=np.float32), rule, width)
        s, i, far = self.ranked(queries, rule, width)
        count = rule.counts(s, far)
        keep = np.arange(width)[None] < count[:, None]
        return Probes(np.where(keep, i, -1), np.where(keep, s, -np.inf).astype(np.float32), count, s[:, 0].copy())


    def _probes_one(self, q: np.ndarray, rule: ProbeRule, width: int) -> Probes:
        """`probes` for one query, in as few array operations as it takes (they cost more than the arithmetic).

        The fast pass is first asked for the head alone (the lists re-scored exactly); only when every one of them
        is within the drop, so that more may be, is it asked for the whole width (measured at 8,192 lists: 163 us
        for the 32 best, 235 us for 512; most queries probe just their floor).
        """
        n = min(2 * rule.floor + RESCORE_EXTRA, width)
        s, i = self._ranked_one(q, n, n)
        floor = rule.floor
        if rule.far(s[0]):  # far from every centroid: its floor, and the head that floor re-scores exactly
            floor, n = rule.far_floor, min(2 * rule.far_floor + RESCORE_EXTRA, width)
            s, i = self._ranked_one(q, n, n)
        count = min(floor, width)
        if rule.adaptive:  # s falls: the lists within the drop are a prefix
            within = int(np.searchsorted(-s, np.float32(rule.drop) - s[0], side="right"))
            if within == n and n < width:  # the drop may reach past the head
                s, i = self._ranked_one(q, width, n)
                within = int(np.searchsorted(-s, np.float32(rule.drop) - s[0], side="right"))
            count = max(count, min(within, rule.cap))
        return Probes(i[None, :count], s[None, :count], np.array([count], np.int64), s[:1].copy())

    def _ranked_one(self, q: np.ndarray, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """One query's `width` best lists by the fast pass, the first `n` re-scored exactly and re-ranked, the rest kept
        below them: (scores [width], ids [width]), best first."""
        import faiss

        est, ids = search(self.fast, q, width)
        s, i = est[0], ids[0]
        head = i[:n].copy()
        exact = np.empty(n, np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(exact), faiss.swig_ptr(q), faiss.swig_ptr(self.centroids),
                                         faiss.swig_ptr(head), q.shape[1], 1, n)
        order = np.argsort(-exact, kind="stable")
        s[:n], i[:n] = exact[order], head[order]
        if n < width:
            np.minimum(s[n:], s[n - 1], out=s[n:])
        return s, i


def fast_pass(centroids: np.ndarray) -> Any | None:
    """A 4-bit fast-scan PQ index of the centroids (inner product), or None when there are too few to need one."""
    import faiss

    if len(centroids) < FAST_MIN_LISTS:
        return None
    d = centroids.shape[1]
    index = faiss.IndexPQFastScan(d, pq_subquantizers(d), 4, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(centroids, dtype=np.float32))
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


def _exact_top(queries: np.ndarray, centroids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of every centroid, the `width` best per query, best first."""
    import faiss

    B, n = len(queries), len(centroids)
    if B == 1:  # one SIMD pass on this thread: no BLAS thread pool to wake (or wait for, on a busy machine)
        scores = np.empty(n, np.float32)
        faiss.fvec_inner_products_ny(faiss.swig_ptr(scores), faiss.swig_ptr(queries), faiss.swig_ptr(centroids),
                                     queries.shape[1], n)
        scores = scores[None]
    else:
        import torch

        scores = (torch.from_numpy(queries) @ torch.from_numpy(centroids).T).numpy()
    if width < n:
        part = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    else:
        part = np.broadcast_to(np.arange(n), (B, n))
    s = np.take_along_axis(scores, part, 1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, 1).astype(np.float32), np.take_along_axis(part, order, 1).astype(np.int64)
