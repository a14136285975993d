"""Exact answers over the stored fp16 vectors: brute-force search, and the exact re-rank of an index's candidates."""

from __future__ import annotations

import math
import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .faiss_calls import faiss_threads, search

if TYPE_CHECKING:
    from ..store import Vault


def check_similarities(vault: "Vault", sims: np.ndarray, ids: np.ndarray) -> None:
    """Unit vectors cannot be more similar than 1: a result above it is a damaged stored vector."""
    over = np.isfinite(sims) & (sims > 1.0 + 1e-2)
    if over.any():
        from ...core.errors import VaultCorruptError

        r, c = (int(x[0]) for x in np.nonzero(over))
        raise VaultCorruptError(
            f"vault '{vault.name}': entry {int(ids[r, c])} matches with similarity {float(sims[r, c]):.4g} > 1, so its "
            "stored embedding is not unit length: a file changed after it was written; run `luna-vault verify` and "
            "restore the vault from a good copy")


def rerank(vault: "Vault", queries: np.ndarray, cand: np.ndarray, k: int, allowed: np.ndarray | None = None,
           max_rows: int = 8192, sorted_unique: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate ids (-1 = none); keep the best k.

    `sorted_unique`: a single query's candidates are already sorted, each id once (-1s may be anywhere).

    Candidates outside `allowed` are dropped here too, whatever the index did with the mask.
    Few, large tensor operations (at most `max_rows` gathered rows at a time): each small op costs
    thread wake-ups, which collide with FAISS's own OpenMP threads still spinning after a search.
    """
    import torch

    if allowed is not None:
        cand = np.where((cand >= 0) & allowed[np.maximum(cand, 0)], cand, -1)
    B, C = cand.shape
    kk = min(k, C)
    if B == 1:  # the common single-crop query: one pass on this thread (no torch thread pool to wake, or to wait
        ids = cand[0] if sorted_unique else unique_ids(cand[0])  # for when other processes hold the cores)
        ids = ids[ids >= 0]
        if not len(ids):
            return _pad(np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64), k)
        out_s, out_i = _top_of_rows(vault, np.ascontiguousarray(queries[:1], dtype=np.float32), ids, k)
        check_similarities(vault, out_s, out_i)
        return _pad(out_s, out_i, k)
    valid = cand >= 0
    safe = np.where(valid, cand, 0)
    q = torch.from_numpy(queries)
    chunk = max(1, max_rows // C)
    top_s = np.empty((B, kk), np.float32)
    top_i = np.empty((B, kk), np.int64)
    for a in range(0, B, chunk):
        b = min(a + chunk, B)
        rows = torch.from_numpy(vault.embeddings(safe[a:b].reshape(-1))).view(b - a, C, -1).float()
        sims = torch.bmm(rows, q[a:b].view(b - a, -1, 1)).view(b - a, C)
        if not valid[a:b].all():
            sims.masked_fill_(torch.from_numpy(~valid[a:b]), -math.inf)
        s, pos = torch.topk(sims, kk, dim=1)
        top_s[a:b] = s.numpy()
        top_i[a:b] = np.take_along_axis(cand[a:b], pos.numpy(), axis=1)
    top_i[~np.isfinite(top_s)] = -1
    check_similarities(vault, top_s, top_i)
    return _pad(top_s, top_i, k)


def unique_ids(ids: np.ndarray) -> np.ndarray:
    """The distinct values of a 1-d id array, sorted: a sort and a mask (np.unique hashes first, which costs ~47 us on
    280 ids against ~8 us; a single query's search calls this twice)."""
    out = np.sort(ids)
    if len(out) < 2:
        return out
    keep = np.empty(len(out), bool)
    keep[0] = True
    np.not_equal(out[1:], out[:-1], out=keep[1:])
    return out[keep]


def rows_of(vault: "Vault", ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The stored fp16 rows of sorted entry ids, gathered per segment (one call each, no per-id Python unless the
    segment is read with pread), into `out` [len(ids), D] fp16 when given."""
    if out is None:
        out = np.empty((len(ids), vault.dim), np.float16)
    bases = vault.entry_bases
    if len(ids) and (ids[0] < 0 or ids[-1] >= bases[-1]):  # sorted: the ends bound them all
        raise IndexError(f"entry ids {int(ids[0])}..{int(ids[-1])} outside the vault's {int(bases[-1])} rows")
    if len(vault.segments) == 1:
        return vault.segments[0].rows(ids, out, in_order=True)
    cuts = np.searchsorted(ids, bases).tolist()  # segment s holds ids[cuts[s]:cuts[s + 1]]
    for s, segment in enumerate(vault.segments):
        a, b = cuts[s], cuts[s + 1]
        if a < b:
            segment.rows(ids[a:b] - segment.entry_base, out[a:b], in_order=True)
    return out


_scratch = threading.local()
SCRATCH_MAX_BYTES = 32 << 20  # a thread keeps at most this much of gathered rows between single queries


def _top_of_rows(vault: "Vault", q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k [1, <=k] of one query [1, D] over the stored rows of sorted unique `ids`, best first (ties to
    the lower id).

    The fp16 rows are gathered into a flat fp16 faiss index, whose scan converts and multiplies in SIMD
    registers on this thread: no float32 copy of the rows (measured at 290 rows: 0.23 ms against 0.51 ms
    for a float32 cast and a product).
    """
    import faiss

    m, d = len(ids), vault.dim
    flat = getattr(_scratch, "flat", None)
    if flat is None or flat.d != d or m * 2 * d > SCRATCH_MAX_BYTES:
        flat = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        if m * 2 * d <= SCRATCH_MAX_BYTES:
            _scratch.flat = flat
    flat.codes.resize(m * 2 * d)
    rows_of(vault, ids, faiss.rev_swig_ptr(flat.codes.data(), m * 2 * d).view(np.float16).reshape(m, d))
    flat.ntotal = m
    with faiss_threads(1):
        sims, pos = search(flat, q, min(k, m))
    out = ids[pos[0]]
    order = np.lexsort((out, -sims[0]))  # faiss's heap leaves equal scores in any order: the lower id first
    return sims[:, order], out[order][None]


def fp32_rows(rows: np.ndarray) -> np.ndarray:
    """fp16 rows [n, D] as float32 (torch's SIMD cast: numpy's is scalar, ~3 ns a value). For bulk work (building,
    the outlier pool); a single query's re-rank never makes a float32 copy (`_top_of_rows`)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rows)).float().numpy()


def exact_search(vault: "Vault", queries: np.ndarray, k: int, allowed: np.ndarray | None,
                 block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product over the stored fp16 vectors (allowed rows only, if given).

    A few queries are scored in fp16 straight off the memory map (no float copy of the vault: ~20x
    faster for one query), keeping a generous pool per block that is then re-ranked in float32, so
    the answer is exact up to ties within fp16 rounding. Larger batches convert each block once.
    Each block's own top-k is merged into the running best (never a copy of a whole block's scores).
    """
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    B = q.shape[0]
    few = B <= 8
    pool = max(4 * k, k + 32) if few else k
    qh = q.half() if few else q
    best_s = torch.full((B, 0), -math.inf)
    best_i = torch.zeros((B, 0), dtype=torch.int64)
    if allowed is not None:
        ids = np.flatnonzero(allowed)
        blocks = ((ids[a : a + block], vault.embeddings(ids[a : a + block])) for a in range(0, len(ids), block))
    else:
        blocks = ((np.arange(start, start + len(b)), b) for start, b in vault.iter_embedding_blocks(block))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memory maps: torch only reads them
        for bid, emb in blocks:
            e = torch.from_numpy(np.asarray(emb))
            s = (e @ qh.T).T.float() if few else q @ e.float().T
            top_s, pos = torch.topk(s, min(pool, s.shape[1]), dim=1)
            best_s = torch.cat([best_s, top_s], dim=1)
            best_i = torch.cat([best_i, torch.from_numpy(bid)[pos]], dim=1)
            if best_s.shape[1] > pool:
                best_s, pos = torch.topk(best_s, pool, dim=1)
                best_i = torch.gather(best_i, 1, pos)
    if few and best_i.shape[1]:
        cand = np.where(np.isfinite(best_s.numpy()), best_i.numpy(), -1).astype(np.int64)
        return rerank(vault, queries.astype(np.float32, copy=False), cand, k)
    if best_s.shape[1]:  # best first (a single block was never merged)
        best_s, pos = torch.topk(best_s, best_s.shape[1], dim=1)
        best_i = torch.gather(best_i, 1, pos)
    out_s, out_i = best_s.numpy().astype(np.float32), best_i.numpy().astype(np.int64)
    check_similarities(vault, out_s, out_i)
    return _pad(out_s, out_i, k)


def _pad(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if sims.shape[1] >= k:
        return sims, ids
    B, short = sims.shape[0], k - sims.shape[1]
    return (np.concatenate([sims, np.full((B, short), -np.inf, np.float32)], axis=1),
            np.concatenate([ids, np.full((B, short), -1, np.int64)], axis=1))

