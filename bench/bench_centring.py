"""What centring does to the partition: lists a query must probe for its exact top-5, with and without the mean removed.

Inner-product ranking for one query does not change when a constant vector m is subtracted from
every stored vector (q.(x - m) = q.x - q.m), so the partition may be fitted to x - m instead of x.
This bench fits the same spherical two-level k-means (vault/index/train.py) both ways on the same
sample, assigns every entry (argmax of x.c, or of (x - m).c), ranks each query's lists by q.c, and
reports per kind of query: recall of the true top-5 within the first p lists, the lists needed
for all five (p50 / p99 / max), and the entries scanned. No timings: the two partitions cost the
same per probe.

    python bench/bench_centring.py --n 200000 --data clip,hierarchical
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
from vault_data import QUERY_KINDS, Dataset, unit  # noqa: E402

from luna_vault.vault.index.choice import choose_index  # noqa: E402
from luna_vault.vault.index.train import TRAIN_PER_LIST, two_level_centroids  # noqa: E402

K = 5
PROBES = (8, 16, 32, 64, 128, 256, 512, 1024)


def data(kind: str, n: int, d: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stored x [n, d], queries [m, d], kind of each query [m]: see QUERY_KINDS for clip, 0 for the others)."""
    ds = Dataset(n, d, kind)
    q = ds.queries(m)
    kinds = ds.query_kinds if ds.query_kinds is not None else np.zeros(m, np.int64)
    return ds.x, q, kinds


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The list of each row: argmax of x.c."""
    ix = faiss.IndexFlatIP(centroids.shape[1])
    ix.add(centroids)
    return ix.search(x, 1)[1][:, 0]


def lists_needed(q: np.ndarray, centroids: np.ndarray, truth_lists: np.ndarray, width: int) -> np.ndarray:
    """[m, K] the rank (1-based) of each true neighbour's list in the query's order of lists (width + 1: beyond)."""
    ix = faiss.IndexFlatIP(centroids.shape[1])
    ix.add(centroids)
    order = ix.search(q, width)[1]
    rank = np.full(truth_lists.shape, width + 1, np.int64)
    for j in range(truth_lists.shape[1]):
        hit = order == truth_lists[:, j : j + 1]
        found = hit.any(axis=1)
        rank[found, j] = hit.argmax(axis=1)[found] + 1
    return rank


def measure(x: np.ndarray, q: np.ndarray, kinds: np.ndarray, truth: np.ndarray, centre: bool, seed: int) -> dict:
    nlist = int(choose_index(len(x), x.shape[1]).split(",")[0][3:])
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(len(x), min(len(x), TRAIN_PER_LIST * nlist), replace=False))]
    mean = sample.mean(axis=0) if centre else np.zeros(x.shape[1], np.float32)
    t = time.perf_counter()
    centroids = two_level_centroids(np.ascontiguousarray(sample - mean), nlist)
    list_of = np.concatenate([assign(np.ascontiguousarray(x[a : a + 50_000] - mean), centroids)
                              for a in range(0, len(x), 50_000)])
    fit_s = time.perf_counter() - t
    sizes = np.bincount(list_of, minlength=nlist)
    width = min(nlist, PROBES[-1])
    q = np.ascontiguousarray(q - mean)  # the lists a query's neighbours are in: ranked as they were assigned
    rank = lists_needed(q, centroids, list_of[truth], width)
    ix = faiss.IndexFlatIP(centroids.shape[1])
    ix.add(centroids)
    order_sizes = np.cumsum(sizes[ix.search(q, width)[1]], axis=1)  # entries scanned at p lists, per query
    need = rank.max(axis=1)
    out: dict = {"nlist": nlist, "fit_s": round(fit_s, 1), "list_sizes_p50_max": [int(np.median(sizes)), int(sizes.max())],
                 "kinds": {}}
    for kind in np.unique(kinds):
        sel = kinds == kind
        name = QUERY_KINDS[kind] if kinds.max() > 0 else "all"
        row = {"need_p50": float(np.median(need[sel])), "need_p99": float(np.percentile(need[sel], 99)),
               "need_max": int(need[sel].max()), "beyond": int((need[sel] > width).sum())}
        for p in PROBES:
            if p <= width:
                row[f"recall@{p}"] = round(float((rank[sel] <= p).mean()), 4)
                row[f"scanned@{p}"] = int(order_sizes[sel, p - 1].mean())
        out["kinds"][name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--data", default="clip,hierarchical,isotropic,mixture,anisotropic")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {}
    for kind in args.data.split(","):
        x, q, kinds = data(kind, args.n, args.d, args.queries)
        x, q = unit(x).astype(np.float32), unit(q).astype(np.float32)
        flat = faiss.IndexFlatIP(args.d)
        flat.add(x)
        truth = flat.search(q, K)[1]
        results[kind] = {}
        for centre in (False, True):
            label = "centred" if centre else "raw"
            r = measure(x, q, kinds, truth, centre, seed=0)
            results[kind][label] = r
            print(f"\n{kind} {label}: {r['nlist']} lists (sizes p50 {r['list_sizes_p50_max'][0]}, max "
                  f"{r['list_sizes_p50_max'][1]}), fitted in {r['fit_s']} s")
            for name, row in r["kinds"].items():
                recalls = " ".join(f"{p}:{row[f'recall@{p}']:.3f}/{row[f'scanned@{p}']}" for p in PROBES if f"recall@{p}" in row)
                print(f"  {name:18s} lists for all 5: p50 {row['need_p50']:.0f} p99 {row['need_p99']:.0f} max "
                      f"{row['need_max']} (beyond {PROBES[-1]}: {row['beyond']})  recall/scanned at p lists: {recalls}")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
