"""Vault benchmark: query latency/recall vs exact flat search, batch cost, build/append rate, bytes/entry, cold open.

Run by hand (not a test): `python bench/bench_vault.py [--sizes 10000,100000,500000] [--dim 1024]`.
Synthetic data (see Dataset): a realistic hierarchy of looks -> prompts -> seeds, and an isotropic
worst case. Queries are never stored entries. Every speed is reported next to a reference measured
in the same run: exact flat FAISS search (IndexFlatIP, fp32, all cores).
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
    """Synthetic CLIP-like embeddings of generated images.

    hierarchical (default): looks (N/250 centres) -> prompts (N/4, cosine 0.6..0.95 to their look)
    -> images (cosine 0.92..0.97 to their prompt), i.e. ~4 seeds per prompt as in a generated
    dataset. Queries: half are new seeds of stored prompts, half new prompts of stored looks.
    isotropic (worst case): images scattered directly around the N/250 look centres, so a
    cluster's members are nearly equidistant from a query and approximate search is hardest.
    """

    def __init__(self, n: int, d: int, kind: str, seed: int = 1) -> None:
        self.kind, self.d = kind, d
        rng = np.random.default_rng(seed)
        self.looks = _unit(rng.standard_normal((max(50, n // 250), d), dtype=np.float32))
        if kind == "hierarchical":
            look_of_prompt = rng.integers(0, len(self.looks), max(1, n // 4))
            self.prompts = self._blocks(self.looks[look_of_prompt], 0.6, 0.95, rng)
            self.prompt_of = rng.integers(0, len(self.prompts), n)
            self.x = self._blocks(self.prompts[self.prompt_of], 0.92, 0.97, rng)
        elif kind == "isotropic":
            self.prompt_of = np.arange(n) // 4
            self.x = self._blocks(self.looks[rng.integers(0, len(self.looks), n)], 0.6, 0.95, rng)
        else:
            raise SystemExit(f"unknown data kind {kind!r}")

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
        known = _around(self.prompts[rng.integers(0, len(self.prompts), m // 2)], 0.92, 0.97, rng)
        new_prompts = _around(self.looks[rng.integers(0, len(self.looks), m - m // 2)], 0.6, 0.95, rng)
        return np.concatenate([known, _around(new_prompts, 0.92, 0.97, rng)])


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


def bench_size(n: int, d: int, kind: str, n_queries: int, work: Path, cache: str) -> dict[str, object]:
    import faiss
    import torch

    from luna_vault.vault import EncoderFingerprint, Vault, append, build, get_index, search
    from luna_vault.vault.query import search_arrays

    print(f"\n=== {n:,} entries, {d}-d, {kind} ===", flush=True)
    t = time.perf_counter()
    data = Dataset(n + max(1000, n // 10), d, kind)
    x, extra = data.x[:n], data.x[n:]
    q = data.queries(n_queries + 64)
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

    # reference: exact flat search over the same vectors (fp32, FAISS, all cores)
    flat = faiss.IndexFlatIP(d)
    flat.add(vault.embeddings(np.arange(n)).astype(np.float32))
    _, truth = flat.search(q, 5)
    flat_ms = []
    for row in q[:30]:
        t = time.perf_counter()
        flat.search(row[None], 5)
        flat_ms.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    flat.search(q[:64], 5)
    flat_batch_ms = (time.perf_counter() - t) * 1e3 / 64
    del flat

    os.sync()  # let the kernel finish writing the new vault before timing queries (steady state)
    search_arrays(vault, q[:2], 5)  # warm-up
    gc.disable()  # as timeit does: time the search, not collections of unrelated garbage
    lat, full_lat, hits = [], [], 0
    for i, row in enumerate(q[:n_queries]):
        t = time.perf_counter()
        _, ids = search_arrays(vault, row, 5)
        lat.append((time.perf_counter() - t) * 1e3)
        hits += len(set(ids[0]) & set(truth[i]))
        t = time.perf_counter()
        search(vault, row, 5)
        full_lat.append((time.perf_counter() - t) * 1e3)
    recall = hits / (5 * n_queries)
    reps = n_queries // 64
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
    row = {
        "n": n, "dim": d, "data": kind, "index": index.spec, "nprobe": getattr(index.state, "nprobe", None),
        "k_factor": getattr(index.state, "k_factor", None), "tuned_recall": getattr(index.state, "recall", None),
        "query_p50_ms": pct(lat, 50), "query_p99_ms": pct(lat, 99),
        "query_with_prompts_p50_ms": pct(full_lat, 50), "recall_at_5": recall,
        "flat_p50_ms": pct(flat_ms, 50), "speedup_vs_flat": pct(flat_ms, 50) / pct(lat, 50),
        "batch64_ms_per_query": batch_ms, "flat_batch64_ms_per_query": flat_batch_ms,
        "build_entries_per_s": build_rate, "build_write_s": t_write, "build_index_s": t_index,
        "append_entries_per_s": append_rate, "bytes_per_entry": per_entry, "index_bytes_per_entry": index_bytes / n,
        "cold_open_s": cold["open_s"] + cold["first_query_s"], "cold_imports_s": cold["imports_s"],
        "page_cache_dropped": dropped, "warm_open_s": warm["open_s"] + warm["first_query_s"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(row, indent=1), flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,500000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--data", default="hierarchical,isotropic", help="hierarchical (realistic), isotropic (worst case)")
    ap.add_argument("--out", default="bench/out/vault.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="luna-bench-"))
    cache = str(work / "cache")
    os.environ["LUNA_VAULT_CACHE"] = cache
    rows = []
    try:
        for kind in args.data.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                rows.append(bench_size(n, args.dim, kind, args.queries, work, cache))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n| data | entries | index | p50 ms | p99 ms | recall@5 | flat p50 ms | speed-up | batch64 ms/q | build /s | append /s | bytes/entry | cold open s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['n']:,} | {r['index']} | {r['query_p50_ms']:.3f} | {r['query_p99_ms']:.3f} | {r['recall_at_5']:.3f} | "
              f"{r['flat_p50_ms']:.2f} | {r['speedup_vs_flat']:.0f}x | {r['batch64_ms_per_query']:.3f} | "
              f"{r['build_entries_per_s']:,.0f} | {r['append_entries_per_s']:,.0f} | {r['bytes_per_entry']:,.0f} | {r['cold_open_s']:.2f} |")


if __name__ == "__main__":
    main()
