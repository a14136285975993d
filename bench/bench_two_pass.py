"""A cheaper first scan re-scored by a finer code: does it keep the candidates the exact re-rank needs, and what would it save?

At 10M entries a query's time is mostly the fast-scan of ~1M PQ512x4fs codes (256 bytes each), bounded
by memory bandwidth. This bench asks whether a first pass over codes half or a quarter that size,
keeping its N best, then re-scored with the 256-byte code down to the C candidates the exact re-rank
reads (C = 5 x k_factor), keeps the exact top-5 among them as well as the one-pass scan does. Every
index shares one partition (the spherical two-level k-means of vault/index/train.py) and every query
probes the same lists (`search_preassigned`, one thread), so only the codes differ. Reported per
setting: the share of each query's exact top-5 (over the whole set) among its C candidates, the
first pass's p50, and the finer pass's cost by the routes FAISS offers from Python (decoding the N
codes, packing them into fast-scan blocks, or `ProductQuantizer.search_ip` over the gathered codes
with pairs of 4-bit sub-quantizers read as one 8-bit one), against the one-pass
PQ512x4fs reference of the same run. Data from bench/vault_data.py (`--data`: clip by default, CLIP-shaped; mixture is the
independent generator of the outside report).

    python bench/bench_two_pass.py --n 1000000 --lists 4096 --probe 256 --first 2000,4000
    python bench/bench_two_pass.py --data mixture --n 200000 --lists 1024 --probe 64 --first 1000,2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
from vault_data import KINDS, Dataset  # noqa: E402

from luna_vault.vault.index.measure import recall_per_query  # noqa: E402
from luna_vault.vault.index.train import TRAIN_PER_LIST, two_level_centroids  # noqa: E402

K = 5
REFERENCE = "PQ512x4fs"
FIRST_PASSES = ("PQ256x4fs", "PQ128x4fs")
FINE = "PQ512x4"  # the 256-byte code, flat (ids -> codes), that re-scores a first pass's N best


def ivf(x: np.ndarray, centroids: np.ndarray, code: str, sample: np.ndarray) -> tuple[faiss.Index, faiss.Index]:
    """(IVF fast-scan index with `code` over the given centroids (only the codes are trained), its quantizer: the
    caller holds it as long as the index, which does not own it)."""
    quantizer = faiss.IndexFlatIP(x.shape[1])
    quantizer.add(centroids)
    index = faiss.index_factory(x.shape[1], f"IVF{len(centroids)},{code}", faiss.METRIC_INNER_PRODUCT)
    inner = faiss.extract_index_ivf(index)
    inner.quantizer, inner.own_fields = quantizer, False
    index.train(sample)
    index.add(x)
    return index, quantizer


def scan(index: faiss.Index, q: np.ndarray, lists: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """(ids [m, n] of each query's n best in its lists, p50 ms of one query's scan on one thread)."""
    index.nprobe = lists.shape[1]
    dist, ids, times = np.empty((len(q), n), np.float32), np.empty((len(q), n), np.int64), []
    for i in range(len(q)):
        t = time.perf_counter()
        index.search_preassigned_c(1, faiss.swig_ptr(q[i]), n, faiss.swig_ptr(lists[i]), faiss.swig_ptr(scores[i]),
                                   faiss.swig_ptr(dist[i]), faiss.swig_ptr(ids[i]), False, None)
        times.append(time.perf_counter() - t)
    return ids, float(np.median(times)) * 1e3


def captured(cand: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-K among its candidates."""
    return float(recall_per_query(cand, truth).mean())


def rescore_decoded(fine: faiss.IndexPQ, codes: np.ndarray, q: np.ndarray, cand: np.ndarray, c: int
                    ) -> tuple[np.ndarray, float]:
    """Each query's c best of its candidates by the fine code's decoded vectors (exact LUT), and p50 ms of it."""
    out, times = np.full((len(q), c), -1, np.int64), []
    for i in range(len(q)):
        ids = cand[i][cand[i] >= 0]
        t = time.perf_counter()
        s = fine.sa_decode(codes[ids]) @ q[i]
        best = ids[np.argsort(-s)[:c]]
        times.append(time.perf_counter() - t)
        out[i, : len(best)] = best
    return out, float(np.median(times)) * 1e3


def fused(pq: faiss.ProductQuantizer) -> faiss.ProductQuantizer:
    """An 8-bit ProductQuantizer scoring 4-bit `pq`'s codes exactly as `pq` does: two 4-bit sub-quantizers fill one
    byte (low nibble first), so the same bytes read as half as many 8-bit sub-quantizers, whose 256 centroids
    concatenate each pair's, give the same scores through FAISS's byte-wide decoder instead of its generic one."""
    c = faiss.vector_to_array(pq.centroids).reshape(pq.M, 16, pq.dsub)
    byte = np.arange(256)
    pairs = np.concatenate([c[0::2][:, byte & 15, :], c[1::2][:, byte >> 4, :]], axis=2)  # [M/2, 256, 2 dsub]
    out = faiss.ProductQuantizer(pq.d, pq.M // 2, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(pairs, dtype=np.float32).ravel(), out.centroids)
    return out


def rescore_fused(fine: faiss.IndexPQ, codes: np.ndarray, q: np.ndarray, cand: np.ndarray, c: int
                  ) -> tuple[np.ndarray, float]:
    """The candidates' codes gathered and scored through `ProductQuantizer.search_ip` with each pair of 4-bit
    sub-quantizers read as one 8-bit one (`fused`); p50 ms of both."""
    pq = fused(fine.pq)
    out, times = np.full((len(q), c), -1, np.int64), []
    dist, pos = np.empty(c, np.float32), np.empty(c, np.int64)
    for i in range(len(q)):
        ids = cand[i][cand[i] >= 0]
        t = time.perf_counter()
        sub = np.ascontiguousarray(codes[ids])
        heap = faiss.float_minheap_array_t()
        heap.nh, heap.k, heap.val, heap.ids = 1, c, faiss.swig_ptr(dist), faiss.swig_ptr(pos)
        pq.search_ip(faiss.swig_ptr(q[i : i + 1]), 1, faiss.swig_ptr(sub), len(ids), heap, True)
        times.append(time.perf_counter() - t)
        got = ids[pos[pos >= 0]]
        out[i, : len(got)] = got
    return out, float(np.median(times)) * 1e3


def rescore_packed(fine: faiss.IndexPQ, codes: np.ndarray, q: np.ndarray, cand: np.ndarray, c: int
                   ) -> tuple[np.ndarray, float]:
    """The same through FAISS's fast-scan: the candidates' codes packed into blocks per query, then scanned
    (quantised LUT); p50 ms of gather + pack + scan."""
    fast = faiss.IndexPQFastScan(fine, 32)
    packer = fast.get_CodePacker()
    n = cand.shape[1]
    blocks = (n + packer.nvec - 1) // packer.nvec
    packed = np.zeros(blocks * packer.block_size, np.uint8)
    flat = np.zeros((blocks * packer.nvec, codes.shape[1]), np.uint8)
    out, times = np.full((len(q), c), -1, np.int64), []
    dist, pos = np.empty(c, np.float32), np.empty(c, np.int64)
    for i in range(len(q)):
        t = time.perf_counter()
        flat[:n] = codes[np.maximum(cand[i], 0)]
        for b in range(blocks):
            packer.pack_all(faiss.swig_ptr(flat[b * packer.nvec]), faiss.swig_ptr(packed[b * packer.block_size :]))
        faiss.copy_array_to_AlignedTable(packed, fast.codes)
        fast.ntotal, fast.ntotal2 = n, blocks * packer.nvec
        fast.search_c(1, faiss.swig_ptr(q[i]), c, faiss.swig_ptr(dist), faiss.swig_ptr(pos), None)
        times.append(time.perf_counter() - t)
        got = cand[i][pos[pos >= 0]]
        out[i, : len(got)] = got
    return out, float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="clip", choices=KINDS, help="generator (bench/vault_data.py); mixture is the independent one")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--lists", type=int, default=1024)
    ap.add_argument("--probe", type=int, default=64, help="lists every query probes (the same for every code)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=160, help="C: what the exact re-rank reads (5 x k_factor)")
    ap.add_argument("--first", default="1000,2000,4000", help="N: a first pass's best kept for the finer pass")
    ap.add_argument("--finer", default="fused,decoded,packed", help="finer-pass routes to time (fused: 4-bit pairs as 8-bit tables)")
    ap.add_argument("--codes", default=",".join(FIRST_PASSES), help="first-pass codes")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    firsts = [int(v) for v in args.first.split(",")]

    t = time.perf_counter()
    data = Dataset(args.n, args.dim, args.data)
    x, q = data.x, np.ascontiguousarray(data.queries(args.queries), dtype=np.float32)
    truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)[1]  # exact top-K, blocked by FAISS
    rng = np.random.default_rng(0)
    sample = x[np.sort(rng.choice(len(x), min(len(x), max(TRAIN_PER_LIST * args.lists, 50_000)), replace=False))]
    centroids = two_level_centroids(sample[: TRAIN_PER_LIST * args.lists], args.lists)
    order = faiss.IndexFlatIP(args.dim)
    order.add(centroids)
    scores, lists = order.search(q, args.probe)
    truth_lists = order.search(x[truth.ravel()], 1)[1].reshape(truth.shape)
    in_lists = float(np.mean([np.isin(truth_lists[i], lists[i]).mean() for i in range(len(q))]))
    print(f"{args.n:,} {args.data} entries, {args.queries:,} queries, IVF{args.lists} probing {args.probe} lists each "
          f"(holding {in_lists:.3f} of the exact top-{K}); data, exact answers and partition in "
          f"{time.perf_counter() - t:.0f} s", flush=True)

    rows = []
    ref, _quantizer = ivf(x, centroids, REFERENCE, sample)
    ids, ref_ms = scan(ref, q, lists, scores, args.candidates)
    rows.append((REFERENCE, args.candidates, "-", captured(ids, truth), ref_ms, None))
    del ref
    fine = faiss.index_factory(args.dim, FINE, faiss.METRIC_INNER_PRODUCT)
    fine.train(sample)
    fine.add(x)
    codes = faiss.vector_to_array(fine.codes).reshape(fine.ntotal, -1)
    routes = {"fused": (rescore_fused, "fused 8-bit tables"), "decoded": (rescore_decoded, "decoded"),
              "packed": (rescore_packed, "packed fast-scan")}
    for code in args.codes.split(","):
        first, _quantizer = ivf(x, centroids, code, sample)
        ids, ms = scan(first, q, lists, scores, args.candidates)
        rows.append((code, args.candidates, "-", captured(ids, truth), ms, None))
        for n in firsts:
            ids, ms = scan(first, q, lists, scores, n)
            rows.append((code, n, "none (all N kept: the bound)", captured(ids, truth), ms, None))
            for route in args.finer.split(","):
                rescore, how = routes[route]
                best, fine_ms = rescore(fine, codes, q, ids, args.candidates)
                rows.append((code, n, f"{FINE}, {how}", captured(best, truth), ms, fine_ms))
        del first

    print(f"\n| first pass | its N best | finer pass to {args.candidates} | exact top-{K} among the candidates | "
          f"first pass p50 ms (x {REFERENCE}) | finer pass p50 ms |")
    print("|---|---|---|---|---|---|")
    for code, n, fine_name, share, ms, fine_ms in rows:
        print(f"| {code} | {n:,} | {fine_name} | {share:.4f} | {ms:.3f} ({ms / ref_ms:.2f}x) | "
              f"{'-' if fine_ms is None else f'{fine_ms:.3f}'} |")


if __name__ == "__main__":
    main()
