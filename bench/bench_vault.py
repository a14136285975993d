"""Vault benchmark: query latency/recall vs exact flat search, batch cost, build/append rate, bytes/entry, cold open.

Run by hand (not a test): `python bench/bench_vault.py [--sizes 10000,100000,500000] [--data mixture,...]`.
Four synthetic data sets of different shape (see Dataset). Queries are never stored entries.
Every figure is reported next to references measured in the same run on the same data: exact
flat FAISS search (IndexFlatIP, fp32, all cores) and bare FAISS HNSW32. Besides recall@5, each
query's similarity gap (exact mean top-5 similarity minus returned mean top-5) is measured: a
query whose gap exceeds 0.05 counts as a miss (an unrelated match where a close one exists).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _around(centres: np.ndarray, cos_lo: float, cos_hi: float, rng: np.random.Generator) -> np.ndarray:
    """One unit vector per centre, at a cosine to it drawn from cos_lo..cos_hi (isotropic noise)."""
    d = centres.shape[1]
    cos = rng.uniform(cos_lo, cos_hi, len(centres)).astype(np.float32)
    sigma = np.sqrt((1 / cos**2 - 1) / d).astype(np.float32)
    return _unit(centres + sigma[:, None] * rng.standard_normal(centres.shape, dtype=np.float32))


class Dataset:
    """Synthetic CLIP-like embeddings of generated images, from four generators of different shape.

    hierarchical: looks (N/250 centres) -> prompts (N/4, cosine 0.6..0.95 to their look) -> images
      (cosine 0.92..0.97 to their prompt), i.e. ~4 seeds per prompt as in a generated dataset.
    isotropic (worst case for approximate search): images scattered directly around the N/250 look
      centres, so a cluster's members are nearly equidistant from a query.
    mixture (issue 12's data): 4,000 random looks whatever N; N/4 prompts, each its look plus noise
      of norm 0.55, renormalised; 4 images per prompt, each its prompt plus noise of norm 0.35. At
      100k entries a look has only 25 images: clusters smaller than an IVF list of the old rule.
    anisotropic (like real CLIP embeddings): every vector shares a strong common direction and the
      structure lives in a 64-d subspace with a decaying spectrum (plus isotropic noise), so
      unrelated images sit at cosine ~0.5 and neighbours at ~0.9-0.96.
    Queries are never stored entries: half are new images of stored prompts, half images of prompts
    the vault has never seen (of stored looks).
    """

    KINDS = ("hierarchical", "isotropic", "mixture", "anisotropic")

    def __init__(self, n: int, d: int, kind: str, seed: int = 1) -> None:
        if kind not in self.KINDS:
            raise SystemExit(f"unknown data kind {kind!r}; expected one of {', '.join(self.KINDS)}")
        self.kind, self.d, self.n = kind, d, n
        self.rng = rng = np.random.default_rng(seed)
        if kind in ("hierarchical", "isotropic"):
            self.looks = _unit(rng.standard_normal((max(50, n // 250), d), dtype=np.float32))
        if kind == "hierarchical":
            look_of_prompt = rng.integers(0, len(self.looks), max(1, n // 4))
            self.prompts = self._blocks(self.looks[look_of_prompt], 0.6, 0.95, rng)
            self.prompt_of = rng.integers(0, len(self.prompts), n)
            self.x = self._blocks(self.prompts[self.prompt_of], 0.92, 0.97, rng)
        elif kind == "isotropic":
            self.prompt_of = np.arange(n) // 4
            self.x = self._blocks(self.looks[rng.integers(0, len(self.looks), n)], 0.6, 0.95, rng)
        elif kind == "mixture":
            looks = _unit(rng.standard_normal((4000, d), dtype=np.float32))
            self.prompts = _with_noise(looks[rng.integers(0, len(looks), n // 4 + 2000)], 0.55, rng)
            self.prompt_of = np.arange(n) // 4
            self.x = self._map(lambda ids: _with_noise(self.prompts[ids], 0.35, rng), self.prompt_of)
        else:
            self.common = _unit(rng.standard_normal(d).astype(np.float32))
            r = 64
            self.basis = np.linalg.qr(rng.standard_normal((d, r)))[0].astype(np.float32)
            spectrum = np.arange(1, r + 1, dtype=np.float32) ** -0.5
            self.spectrum = spectrum / np.linalg.norm(spectrum)
            looks = self._latent(max(50, n // 125), 1.0)
            self.prompts = looks[rng.integers(0, len(looks), n // 4 + 2000)] + self._latent(n // 4 + 2000, 0.45)
            self.prompt_of = np.arange(n) // 4
            self.x = self._map(lambda ids: self._aniso(self.prompts[ids] + self._latent(len(ids), 0.25)), self.prompt_of)

    def _latent(self, m: int, scale: float) -> np.ndarray:
        return self.rng.standard_normal((m, len(self.spectrum)), dtype=np.float32) * self.spectrum * scale

    def _aniso(self, z: np.ndarray) -> np.ndarray:
        iso = self.rng.standard_normal((len(z), self.d), dtype=np.float32) * np.float32(0.22 / np.sqrt(self.d))
        return _unit(self.common + z @ self.basis.T + iso)

    @staticmethod
    def _map(fn: "Any", ids: np.ndarray) -> np.ndarray:
        return np.concatenate([fn(ids[a : a + 50_000]) for a in range(0, len(ids), 50_000)])

    @staticmethod
    def _blocks(centres: np.ndarray, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(centres)
        for a in range(0, len(centres), 50_000):
            out[a : a + 50_000] = _around(centres[a : a + 50_000], lo, hi, rng)
        return out

    def queries(self, m: int, seed: int = 2) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.kind == "isotropic":
            return _around(self.looks[rng.integers(0, len(self.looks), m)], 0.6, 0.95, rng)
        if self.kind == "hierarchical":
            known = _around(self.prompts[rng.integers(0, len(self.prompts), m // 2)], 0.92, 0.97, rng)
            new_prompts = _around(self.looks[rng.integers(0, len(self.looks), m - m // 2)], 0.6, 0.95, rng)
            return np.concatenate([known, _around(new_prompts, 0.92, 0.97, rng)])
        stored = int(self.prompt_of.max()) + 1  # prompts beyond this one were never stored
        ids = np.concatenate([rng.integers(0, stored, m // 2), rng.integers(stored, len(self.prompts), m - m // 2)])
        self.rng = rng
        if self.kind == "mixture":
            return _with_noise(self.prompts[ids], 0.35, rng)
        return self._aniso(self.prompts[ids] + self._latent(len(ids), 0.25))


def _with_noise(centres: np.ndarray, norm: float, rng: np.random.Generator) -> np.ndarray:
    """Each centre plus a random vector of the given norm, renormalised."""
    noise = rng.standard_normal(centres.shape, dtype=np.float32)
    noise *= norm / np.linalg.norm(noise, axis=1, keepdims=True)
    return _unit(centres + noise)


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs), p))


def cold_open_subprocess(path: Path, query: np.ndarray, cache: str) -> dict[str, float]:
    """Open + first query in a fresh Python process (imports timed separately)."""
    qfile = path.parent / "q.npy"
    np.save(qfile, query)
    code = f"""
import time, json, numpy as np
t0 = time.perf_counter()
import torch, faiss
from luna_vault.vault import Vault, search
t1 = time.perf_counter()
v = Vault.open({str(path)!r})
t2 = time.perf_counter()
r = search(v, np.load({str(qfile)!r}), k=5)
t3 = time.perf_counter()
print(json.dumps({{"imports_s": t1 - t0, "open_s": t2 - t1, "first_query_s": t3 - t2}}))
"""
    env = dict(os.environ, LUNA_VAULT_CACHE=cache)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _misses(exact_s: np.ndarray, got_s: np.ndarray) -> tuple[int, float]:
    from luna_vault.vault.index import GAP_LIMIT, similarity_gap

    gap = similarity_gap(exact_s, got_s)
    return int((gap > GAP_LIMIT).sum()), float(gap.max())


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth)]))


def hnsw_baseline(x: np.ndarray, q: np.ndarray, truth_s: np.ndarray, truth_i: np.ndarray, efs: tuple[int, ...],
                  n_timed: int) -> list[dict[str, object]]:
    """Bare faiss HNSW32 (float32 vectors, inner product) on the same data, in the same run."""
    import faiss

    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    build_s = time.perf_counter() - t
    rows = []
    for ef in efs:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        lat = []
        for row in q[:n_timed]:
            t0 = time.perf_counter()
            index.search(row[None], 5, params=params)
            lat.append((time.perf_counter() - t0) * 1e3)
        sims, ids = index.search(q, 5, params=params)
        misses, max_gap = _misses(truth_s, sims)
        rows.append({"index": f"faiss HNSW32 ef{ef}", "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                     "recall_at_5": _recall(ids, truth_i), "misses": misses, "max_gap": max_gap, "build_s": build_s})
    return rows


def bench_size(n: int, d: int, kind: str, n_queries: int, work: Path, cache: str, baselines: bool) -> dict[str, object]:
    import faiss
    import torch

    from luna_vault.vault import EncoderFingerprint, Vault, append, build, get_index, search
    from luna_vault.vault.query import search_arrays

    print(f"\n=== {n:,} entries, {d}-d, {kind} ===", flush=True)
    t = time.perf_counter()
    data = Dataset(n + max(1000, n // 10), d, kind)
    x, extra = data.x[:n], data.x[n:]
    q = data.queries(n_queries)
    print(f"generated data in {time.perf_counter() - t:.1f} s", flush=True)
    prompts = [f"prompt {p}" for p in data.prompt_of[:n]]
    metas = [{"source": f"gen/{i:07d}.png", "checkpoint": f"ckpt{i % 40}", "seed": i, "quality": round((i % 100) / 100, 2)}
             for i in range(n)]
    enc = EncoderFingerprint("bench-vit-h", d, "0" * 64)
    path = work / f"bench{n}.vault"

    t = time.perf_counter()
    build(path, x, prompts, metas, encoder=enc, category="bench", overwrite=True)
    t_write = time.perf_counter() - t
    del prompts, metas  # the benchmark's own 500k Python objects would otherwise be timed as GC pauses
    gc.collect()
    t = time.perf_counter()
    vault = Vault.open(path)
    index = get_index(vault)
    t_index = time.perf_counter() - t
    build_rate = n / (t_write + t_index)
    print(f"build: write {t_write:.1f} s + index {t_index:.1f} s -> {build_rate:,.0f} entries/s; {index.describe()}", flush=True)
    disk = vault.disk_bytes()
    index_bytes = sum(f.stat().st_size for f in index.folder.iterdir()) if not index.exact else 0
    per_entry = (disk + index_bytes) / n

    # reference: exact flat search over the same (fp16-rounded) vectors (fp32, FAISS, all cores)
    stored = vault.embeddings(np.arange(n)).astype(np.float32)
    flat = faiss.IndexFlatIP(d)
    flat.add(stored)
    t = time.perf_counter()
    truth_s, truth = flat.search(q, 5)
    print(f"exact answers for {len(q):,} queries in {time.perf_counter() - t:.1f} s", flush=True)
    flat_ms = []
    for row in q[:30]:
        t = time.perf_counter()
        flat.search(row[None], 5)
        flat_ms.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    flat.search(q[:64], 5)
    flat_batch_ms = (time.perf_counter() - t) * 1e3 / 64
    del flat
    base_rows = hnsw_baseline(stored, q, truth_s, truth, (64, 128), min(2000, len(q))) if baselines else []
    del stored
    gc.collect()

    os.sync()  # let the kernel finish writing the new vault before timing queries (steady state)
    search_arrays(vault, q[:2], 5)  # warm-up
    index.queries = index.exact_answers = 0
    gc.disable()  # as timeit does: time the search, not collections of unrelated garbage
    lat, got_s, got_i = [], np.empty((len(q), 5), np.float32), np.empty((len(q), 5), np.int64)
    for i, row in enumerate(q):
        t = time.perf_counter()
        got_s[i], got_i[i] = (a[0] for a in search_arrays(vault, row, 5))
        lat.append((time.perf_counter() - t) * 1e3)
    exact_answers = index.exact_answers
    full_lat = []
    for row in q[:300]:
        t = time.perf_counter()
        search(vault, row, 5)
        full_lat.append((time.perf_counter() - t) * 1e3)
    recall = _recall(got_i, truth)
    misses, max_gap = _misses(truth_s, got_s)
    reps = min(len(q), 4096) // 64
    t = time.perf_counter()
    for r in range(reps):  # a different batch each time, as in a real detailer run
        search_arrays(vault, q[r * 64 : (r + 1) * 64], 5)
    batch_ms = (time.perf_counter() - t) * 1e3 / (64 * reps)
    gc.enable()

    # append 10% more (new segment + incremental index update)
    t = time.perf_counter()
    append(path, extra, [f"extra {i}" for i in range(len(extra))], encoder=enc)
    appended = Vault.open(path)
    get_index(appended)
    append_rate = len(extra) / (time.perf_counter() - t)

    # cold open: a fresh process opens the vault (cached index) and answers one query
    dropped = drop_page_cache()
    cold = cold_open_subprocess(path, q[0], cache)
    warm = cold_open_subprocess(path, q[0], cache)
    st = index.state
    row = {
        "n": n, "dim": d, "data": kind, "queries": len(q), "index": index.spec,
        "nprobe": getattr(st, "nprobe", None), "reach": getattr(st, "reach", None), "k_factor": getattr(st, "k_factor", None),
        "guard": getattr(st, "guard", None), "tuned_recall": getattr(st, "recall", None),
        "tuned_miss_share": getattr(st, "gap_share", None), "tuned_exact_share": getattr(st, "exact_share", None),
        "target_met": getattr(st, "target_met", True), "note": getattr(st, "note", ""),
        "query_p50_ms": pct(lat, 50), "query_p99_ms": pct(lat, 99), "query_max_ms": max(lat),
        "query_with_prompts_p50_ms": pct(full_lat, 50), "recall_at_5": recall,
        "misses": misses, "max_gap": max_gap, "exact_answers": exact_answers,
        "flat_p50_ms": pct(flat_ms, 50), "speedup_vs_flat": pct(flat_ms, 50) / pct(lat, 50),
        "batch64_ms_per_query": batch_ms, "flat_batch64_ms_per_query": flat_batch_ms,
        "build_entries_per_s": build_rate, "build_write_s": t_write, "build_index_s": t_index,
        "append_entries_per_s": append_rate, "bytes_per_entry": per_entry, "index_bytes_per_entry": index_bytes / n,
        "cold_open_s": cold["open_s"] + cold["first_query_s"], "cold_imports_s": cold["imports_s"],
        "page_cache_dropped": dropped, "warm_open_s": warm["open_s"] + warm["first_query_s"],
        "torch_threads": torch.get_num_threads(), "baselines": base_rows,
    }
    print(json.dumps(row, indent=1), flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,500000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--data", default=",".join(Dataset.KINDS), help="comma-separated: " + ", ".join(Dataset.KINDS))
    ap.add_argument("--no-baselines", action="store_true", help="skip bare faiss HNSW32 on the same data")
    ap.add_argument("--out", default="bench/out/vault.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="luna-bench-"))
    cache = str(work / "cache")
    os.environ["LUNA_VAULT_CACHE"] = cache
    rows = []
    try:
        for kind in args.data.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                rows.append(bench_size(n, args.dim, kind, args.queries, work, cache, not args.no_baselines))
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| data | entries | index | p50 ms | p99 ms | recall@5 | misses (gap > 0.05) | exact answers | flat p50 ms | "
          "speed-up | batch64 ms/q | build /s | append /s | bytes/entry | cold open s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['n']:,} | {r['index']} | {r['query_p50_ms']:.3f} | {r['query_p99_ms']:.3f} | "
              f"{r['recall_at_5']:.3f} | {r['misses']} of {r['queries']:,} | {r['exact_answers']} | {r['flat_p50_ms']:.2f} | "
              f"{r['speedup_vs_flat']:.0f}x | {r['batch64_ms_per_query']:.3f} | {r['build_entries_per_s']:,.0f} | "
              f"{r['append_entries_per_s']:,.0f} | {r['bytes_per_entry']:,.0f} | {r['cold_open_s']:.2f} |")
    if any(r["baselines"] for r in rows):
        print("\nSame data, same run, bare faiss:\n\n| data | entries | index | p50 ms | p99 ms | recall@5 | misses | build s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['data']} | {r['n']:,} | faiss Flat (exact) | {r['flat_p50_ms']:.2f} | - | 1.000 | 0 | - |")
            for b in r["baselines"]:
                print(f"| {r['data']} | {r['n']:,} | {b['index']} | {b['p50_ms']:.3f} | {b['p99_ms']:.3f} | "
                      f"{b['recall_at_5']:.3f} | {b['misses']} | {b['build_s']:.0f} |")


if __name__ == "__main__":
    main()
