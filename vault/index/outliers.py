"""Entries no list represents: the ones farthest from their own list's centroid, scanned for every query as well.

A small group of images (a look with a few prompts) that k-means gave no centroid of its own ends
up in lists made for other things, each entry far from its centroid. A query like them is far from
every centroid too, so the lists that hold its neighbours rank anywhere in the flat tail of its
list order, and no probing rule tuned on typical queries reaches them (measured: a mixture vault of
200k entries, a new-prompt query whose eight neighbours at 0.67-0.69 sat in lists ranked 3, 4, 183
and 261, and a 256-list rule returned four of them and then 0.13). Those entries are the ones with
the lowest similarity to their list's centroid (0.09-0.12 there, the lowest 0.03%; the median is
0.82), so the lowest POOL_SHARE of entries are also kept in a flat fast-scan index, encoded with the
IVF's own PQ codebook (the IVF encodes vectors, not residuals), and every query's candidates include
their best matches from it, ranked together with the lists' candidates by the same PQ estimate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .exact import fp32_rows

if TYPE_CHECKING:
    from ..store import Vault

POOL_SHARE = 0.002  # the entries least like their list's centroid: this share of the live entries ...
POOL_MAX = 4096  # ... at most this many (a scan of 4,096 codes costs ~0.1 ms, mostly the per-query table)
POOL_K = 20  # the pool's best matches per query that may join the candidates (the top-5 and then their siblings)
BLOCK = 8192


def supported(faiss: Any, index: Any) -> bool:
    """Only an IVF with fast-scan PQ codes of the vectors themselves (not residuals) shares its codebook."""
    ivf = faiss.downcast_index(index)
    return isinstance(ivf, faiss.IndexIVFPQFastScan) and not ivf.by_residual


def centroid_similarity(vault: "Vault", list_of: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[n_entries] each entry's similarity to its own list's centroid (+inf for entries in no list)."""
    out = np.full(vault.n_entries, np.inf, np.float32)
    for first, block in vault.iter_embedding_blocks(BLOCK):
        ids = np.arange(first, first + len(block))
        lists = list_of[ids]
        inside = lists >= 0
        if inside.any():
            rows = fp32_rows(np.asarray(block)[inside])
            out[ids[inside]] = np.einsum("ij,ij->i", rows, centroids[lists[inside]])
    return out


def pick(vault: "Vault", list_of: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Sorted ids of the live entries least like their list's centroid (see the module docstring)."""
    sims = centroid_similarity(vault, list_of, centroids)
    sims[~vault.live_mask()] = np.inf
    m = min(POOL_MAX, int(round(POOL_SHARE * np.isfinite(sims).sum())))
    if m < 1:
        return np.zeros(0, np.int64)
    return np.sort(np.argpartition(sims, m - 1)[:m]).astype(np.int64)  # m <= the finite ones: all finite


def pool_index(faiss: Any, index: Any, vault: "Vault", ids: np.ndarray) -> Any | None:
    """A flat fast-scan index of the entries `ids`, coded with the IVF's own PQ codebook (None when empty)."""
    if not len(ids):
        return None
    ivf = faiss.downcast_index(index)
    fast = faiss.IndexPQFastScan(ivf.d, ivf.pq.M, ivf.pq.nbits, faiss.METRIC_INNER_PRODUCT)
    fast.pq = ivf.pq  # a copy of the trained codebook: the codes and their estimates match the lists'
    fast.is_trained = True
    pool = faiss.IndexIDMap(fast)
    pool.add_with_ids(fp32_rows(vault.embeddings(ids)), ids)
    return pool


def merge(dist: np.ndarray, cand: np.ndarray, pool_dist: np.ndarray, pool_ids: np.ndarray, kk: int
          ) -> np.ndarray:
    """The `kk` best ids per row [B, kk] of two candidate lists (estimated similarity, higher first; -1 = none),
    each id once. `cand` [B, kk] is the lists' (best first), `pool_ids` the pool's."""
    floor = np.where(cand[:, -1:] >= 0, dist[:, -1:], -np.inf)
    enters = (pool_ids >= 0) & (pool_dist > floor)
    if not enters.any():  # the common case: nothing in the pool beats the lists' candidates
        return cand
    if len(cand) == 1:
        return _merge_one(dist[0], cand[0], pool_dist[0][enters[0]], pool_ids[0][enters[0]], kk)[None]
    ids = np.concatenate([cand, np.where(enters, pool_ids, -1)], axis=1)
    est = np.where(ids >= 0, np.concatenate([dist, pool_dist], axis=1), -np.inf)
    order = np.argsort(ids, axis=1, kind="stable")
    by_id = np.take_along_axis(ids, order, 1)
    repeat = np.zeros(by_id.shape, bool)
    repeat[:, 1:] = by_id[:, 1:] == by_id[:, :-1]
    dup = np.empty_like(repeat)
    np.put_along_axis(dup, order, repeat, 1)
    est[dup] = -np.inf
    best = np.argsort(-est, axis=1, kind="stable")[:, :kk]
    out = np.where(np.isfinite(np.take_along_axis(est, best, 1)), np.take_along_axis(ids, best, 1), -1)
    return np.pad(out, ((0, 0), (0, kk - out.shape[1])), constant_values=-1)


def _merge_one(dist: np.ndarray, cand: np.ndarray, pool_dist: np.ndarray, pool_ids: np.ndarray, kk: int) -> np.ndarray:
    """`merge` for one query, with only the pool's entries that beat the lists' last candidate: each goes in at its
    place among the lists' (best first, after equal estimates), unless the lists have it already; [kk], -1 pads."""
    have = set(cand.tolist())
    fresh = np.fromiter((i not in have for i in pool_ids.tolist()), bool, len(pool_ids))
    valid = int(np.count_nonzero(cand >= 0))  # the lists' candidates first, -1 pads after them
    at = np.searchsorted(-dist[:valid], -pool_dist[fresh], side="right")  # rises: the pool's are best first
    at += np.arange(len(at))  # their places in the merged row
    lists = np.ones(valid + len(at), bool)
    lists[at] = False
    out = np.full(max(kk, len(lists)), -1, np.int64)
    out[: len(lists)][lists] = cand[:valid]
    out[at] = pool_ids[fresh]
    return out[:kk]
