"""Two-pass scans: small fast-scan codes find many candidates, finer PQ codes kept by entry id pick the best of them.

Spec `IVF<lists>,PQ<m>x4fs,Refine(PQ<m2>x4)` (FAISS's IndexRefine: the IVF index, and an IndexPQ holding every
entry's finer code by id). At 10M CLIP-shaped entries most of a query is its scan, and the scan's speed is set by
the bytes it reads; a first pass over codes half as big, whose FIRST_FACTOR x more candidates the finer code then
re-scores, keeps the candidates' quality (bench/bench_two_pass.py, docs/benchmarks.md). FAISS's own IndexRefine
search cannot take the lists the coarse step chooses, so the finer pass is done here, one query at a time: the
candidates' codes gathered by id and scored by `ProductQuantizer.search_ip` into a heap of the best.

4-bit codes: FAISS scores them through its generic bit decoder (3.1 ms for 2,000 codes of 512 sub-quantizers).
Two 4-bit sub-quantizers side by side fill one byte (low nibble first), so the same bytes read as an 8-bit PQ of
half as many sub-quantizers, whose 256 centroids per byte concatenate each pair's, give the same scores through
the byte-wide decoder: 0.47 ms (`fused`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FIRST_FACTOR = 12  # the first pass keeps this many times the candidates the finer pass hands on


def first_pass_k(kk: int, ntotal: int) -> int:
    """Candidates the first pass of a two-pass scan keeps for `kk` after the finer pass."""
    return min(kk * FIRST_FACTOR, ntotal)


def scanned(faiss: Any, index: Any) -> Any:
    """The index whose lists are scanned: the first pass of an IndexRefine, else the index itself."""
    return faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index


def fused(faiss: Any, pq: Any) -> Any:
    """An 8-bit ProductQuantizer that scores 4-bit `pq`'s codes exactly as `pq` does (see the module docstring);
    `pq` itself when its codes do not pair into bytes (8 bits, or an odd number of sub-quantizers)."""
    if pq.nbits != 4 or pq.M % 2:
        return pq
    c = faiss.vector_to_array(pq.centroids).reshape(pq.M, 16, pq.dsub)
    byte = np.arange(256)
    pairs = np.concatenate([c[0::2][:, byte & 15, :], c[1::2][:, byte >> 4, :]], axis=2)  # [M/2, 256, 2 dsub]
    out = faiss.ProductQuantizer(pq.d, pq.M // 2, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(pairs, dtype=np.float32).ravel(), out.centroids)
    return out


class FinerCodes:
    """The finer codes of an IndexRefine whose refine part is an inner-product IndexPQ: the second pass."""

    def __init__(self, faiss: Any, index: Any) -> None:
        refine = faiss.downcast_index(index.refine_index)
        if not isinstance(refine, faiss.IndexPQ) or refine.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"a two-pass index refines with inner-product PQ codes, not {type(refine).__name__}")
        self.faiss, self.index, self.refine = faiss, index, refine
        self.pq = fused(faiss, refine.pq)

    def codes(self) -> np.ndarray:
        """[ntotal, code_size] uint8 view of the stored codes (taken again each call: an add may move them)."""
        r = self.refine
        n, size = r.ntotal, r.code_size
        if not n:
            return np.zeros((0, size), np.uint8)
        return self.faiss.rev_swig_ptr(r.codes.data(), n * size).reshape(n, size)

    def rescore(self, queries: np.ndarray, cand: np.ndarray, kk: int) -> np.ndarray:
        """The `kk` best of each query's candidates [B, C] (-1 = none) by the finer codes: ids [B, kk], best first,
        -1 pads."""
        faiss = self.faiss
        codes = self.codes()
        out = np.full((len(cand), kk), -1, np.int64)
        for b in range(len(cand)):
            ids = cand[b][cand[b] >= 0]
            m = min(kk, len(ids))
            if not m:
                continue
            sub = np.ascontiguousarray(codes[ids])
            dist, pos = np.empty(m, np.float32), np.empty(m, np.int64)
            heap = faiss.float_minheap_array_t()
            heap.nh, heap.k, heap.val, heap.ids = 1, m, faiss.swig_ptr(dist), faiss.swig_ptr(pos)
            q = np.ascontiguousarray(queries[b : b + 1], dtype=np.float32)
            self.pq.search_ip(faiss.swig_ptr(q), 1, faiss.swig_ptr(sub), len(ids), heap, True)
            out[b, :m] = ids[pos]
        return out
