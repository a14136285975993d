"""Tuning queries: four kinds of query that are not stored vectors as they are, each with its exact answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .exact import exact_search

if TYPE_CHECKING:
    from ..store import Vault

TUNE_QUERIES = 512  # per tuning query set (four sets)
TUNE_K = 5
REACH_POOL = 64  # exact neighbours per tuning query that the reach is measured on


@dataclass
class QuerySet:
    """Tuning queries with their exact answers: how one kind of real query is expected to behave."""

    name: str
    queries: np.ndarray  # [m, D] float32
    allowed: np.ndarray | None  # mask the ANN search and the truth share
    truth_sims: np.ndarray  # [m, k] exact top-k similarities
    truth_ids: np.ndarray  # [m, k]
    exclude: np.ndarray | None = None  # [m] an id to drop from each row's answer (the query's own entry)
    own_recall_target: bool = True  # False: near-tie neighbours; counts in the pooled recall only (see query_sets)
    pool: tuple[np.ndarray, np.ndarray] | None = None  # exact neighbours, best first, beyond k (see reach.py)
    full_pool: tuple[np.ndarray, np.ndarray] | None = None  # held-out sets: the pool before the query's own entry left


def query_sets(vault: "Vault", untrained: np.ndarray, rng: np.random.Generator) -> list[QuerySet]:
    """Four kinds of tuning query, none of them a stored vector as it is, each with exact answers.

    held-out: a stored entry's vector with that entry hidden (a new image of a stored prompt);
    unseen: the same vectors with every entry of their prompts hidden (a crop of a prompt the
    vault has never seen: many near-equal matches, the hard case); between: a point between a
    stored vector and one of its five nearest neighbours (a perturbed copy that stays on the
    data: isotropic noise would leave it, and on anisotropic data like CLIP's make queries
    look worse represented than real ones); no cluster: points drawn from a Gaussian with the
    vault's own mean and covariance (the data's common direction and spread, none of its clusters:
    a query from a region nothing stored comes from, whose neighbours are many and near-equal;
    which of them come back is partly a coin toss among ties, so this kind counts in the recall
    of all tuning queries together but is not held to the recall target on its own).
    `untrained`: entries the partition was not fitted to.
    """
    k = TUNE_K
    live = vault.live_mask()
    live_ids = np.flatnonzero(live)
    fresh = np.flatnonzero(untrained & live)
    source = fresh if len(fresh) >= min(64, len(live_ids)) else live_ids
    m = min(TUNE_QUERIES, len(source))
    qids = np.sort(rng.choice(source, m, replace=False))
    held = held_out(vault, qids)
    base, mask, pool_s, pool_i = held.queries, held.allowed, held.full_pool[0], held.full_pool[1]
    held_i = held.truth_ids
    prompt_of = vault.all_prompt_ids()
    unseen = live & ~np.isin(prompt_of, prompt_of[qids])
    sets = [held]
    if unseen.sum() >= k:
        in_unseen = unseen[np.maximum(pool_i, 0)] & (pool_i >= 0)
        un_s, un_i = _kept(pool_s, pool_i, in_unseen)
        short = (un_i[:, :k] < 0).any(axis=1)
        if short.any():  # a prompt with many entries fills the pool: search those rows exactly
            un_s[short, :k], un_i[short, :k] = exact_search(vault, base[short], k, unseen)
        sets.append(QuerySet("unseen prompt", base, unseen, un_s[:, :k], un_i[:, :k], pool=(un_s, un_i)))
    # between a stored vector and one of its 5 nearest neighbours: off every stored point, on the data
    near = held_i[np.arange(m), rng.integers(0, k, m)]
    t = rng.uniform(0.3, 0.7, m).astype(np.float32)[:, None]
    other = np.where((near >= 0)[:, None], vault.embeddings(np.maximum(near, 0)).astype(np.float32), base)
    pert = (1 - t) * base + t * other
    pert /= np.linalg.norm(pert, axis=1, keepdims=True)
    wide_s, wide_i = exact_search(vault, pert, min(REACH_POOL, len(live_ids)), mask)
    sets.append(QuerySet("between", pert, mask, wide_s[:, :k], wide_i[:, :k], pool=(wide_s, wide_i)))
    mean, spread = data_gaussian(vault, rng, m)
    far = mean + spread
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    far_s, far_i = exact_search(vault, far, min(REACH_POOL, len(live_ids)), mask)
    sets.append(QuerySet("no cluster", far, mask, far_s[:, :k], far_i[:, :k], pool=(far_s, far_i), own_recall_target=False))
    return sets


def held_out(vault: "Vault", qids: np.ndarray, name: str = "held-out") -> QuerySet:
    """Stored entries as queries, each with its own entry hidden (a new image of a stored prompt)."""
    live = vault.live_mask()
    mask = None if live.all() else live
    base = vault.embeddings(qids).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    pool_s, pool_i = exact_search(vault, base, min(TUNE_K + REACH_POOL, int(live.sum())), mask)
    s, i = _kept(pool_s, pool_i, (pool_i != qids[:, None]) & (pool_i >= 0))
    qs = QuerySet(name, base, mask, s[:, :TUNE_K], i[:, :TUNE_K], exclude=qids, pool=(s, i))
    qs.full_pool = (pool_s, pool_i)
    return qs


def _kept(pool_s: np.ndarray, pool_i: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pool's rows with only `keep`, best first, padded with -inf / -1."""
    order = np.argsort(~keep, axis=1, kind="stable")
    kept = np.take_along_axis(keep, order, 1)
    s = np.where(kept, np.take_along_axis(pool_s, order, 1), -np.inf)
    i = np.where(kept, np.take_along_axis(pool_i, order, 1), -1)
    return s.astype(np.float32), i


def data_gaussian(vault: "Vault", rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], m draws [m, D] from a zero-mean Gaussian with the stored vectors' covariance).

    Random mixtures of centred stored vectors: the data's own spread without its clusters.
    """
    live_ids = np.flatnonzero(vault.live_mask())
    sample = vault.embeddings(np.sort(rng.choice(live_ids, min(20_000, len(live_ids)), replace=False)))
    sample = sample.astype(np.float32)
    mean = sample.mean(axis=0)
    sample -= mean
    mix = rng.standard_normal((m, len(sample)), dtype=np.float32) / np.float32(np.sqrt(len(sample)))
    return mean, mix @ sample
