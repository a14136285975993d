"""The big-vault benchmark: a CLIP-shaped vault of 1M or 10M x 1024 entries, built and searched on one machine.

Run by hand (not a test), one command:

    python bench/bench_huge.py --n 10000000 --work /big/disk     # ~26 GB there at 10M (2.6 KB per entry)
    python bench/bench_huge.py --n 1000000 --work /big/disk --phases index,query --spec "IVF4096,PQ512x4fs"  # another index

The data (bench/vault_data.py ClipLike) is generated and written to the vault in blocks, so it never
sits in memory whole. Each phase runs in its own process, so the resident memory reported is that
phase's own (peak: ru_maxrss; now: VmRSS, split into anonymous and file-backed pages):
1. write: the vault (fp16 vectors, prompts, metadata), then the queries (a quarter each: new images
   of stored prompts, new prompts of stored clusters, clusters with no stored entry, near-duplicates);
2. truth: exact top-5 of every query (brute force over the memory-mapped vectors);
3. index: Luna's index built and tuned, phase by phase (the library's log);
4. query: a fresh process opens the vault and its cached index and answers every query one at a
   time (1 thread), twice: first with nothing of the vault in memory but what the open read, then
   again; p50/p99, recall@5 and misses (a query whose top-5 mean similarity is > 0.05 below exact).
The vectors are not mapped ahead when they exceed a quarter of memory, so at 10M the re-rank reads
them from disk (or the page cache) as queries need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vault import pct  # noqa: E402
from vault_data import QUERY_KINDS, ClipLike  # noqa: E402


def memory() -> dict[str, float]:
    """This process's resident memory now (GB, anonymous and file-backed) and at its peak."""
    out = {"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key.lower() + "_gb"] = int(value.split()[0]) / 1e6
    return out


def phase_write(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from luna_vault.vault import EncoderFingerprint, Vault
    from luna_vault.vault.store import VaultWriter

    data = ClipLike(args.n, args.dim, seed=args.seed)
    enc = EncoderFingerprint("bench-vit-h", args.dim, "0" * 64)
    t, gen_s, done = time.perf_counter(), 0.0, 0
    with VaultWriter.create(work / "huge.vault", enc, "bench", overwrite=True) as w:
        g = time.perf_counter()
        for x, prompt_of in data.blocks():
            gen_s += time.perf_counter() - g
            w.add(x, [f"prompt {p}" for p in prompt_of],
                  [{"source": f"gen/{done + i:08d}.png", "seed": done + i} for i in range(len(x))])
            done += len(x)
            if done // 1_000_000 != (done - len(x)) // 1_000_000:
                print(f"  written {done:,} entries in {time.perf_counter() - t:.0f} s", flush=True)
            g = time.perf_counter()
    write_s = time.perf_counter() - t
    q, kinds = data.queries(args.queries)
    np.save(work / "q.npy", q)
    np.save(work / "kinds.npy", kinds)
    disk = Vault.open(work / "huge.vault").disk_bytes()
    return {"entries": done, "write_s": write_s, "generate_s": gen_s, "entries_per_s": done / write_s,
            "vault_gb": disk / 1e9, "bytes_per_entry": disk / done}


def phase_truth(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from luna_vault.vault import Vault
    from luna_vault.vault.index import exact_search

    vault = Vault.open(work / "huge.vault")
    q = np.load(work / "q.npy")
    t = time.perf_counter()
    s, i = exact_search(vault, q, 5, None)
    np.save(work / "truth_s.npy", s)
    np.save(work / "truth_i.npy", i)
    return {"queries": len(q), "exact_s": time.perf_counter() - t}


def phase_index(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from luna_vault.vault import Vault, get_index

    logging.basicConfig(level=logging.INFO, format="  %(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    t = time.perf_counter()
    ix = get_index(Vault.open(work / "huge.vault"), args.spec)
    build_s = time.perf_counter() - t
    desc = ix.describe()
    import faiss

    from luna_vault.vault.index.reach import list_of_entries
    from luna_vault.vault.index.state import ivf_of

    # how well entries were assigned: their list's centroid against the best one, on a sample
    t = time.perf_counter()
    sample = np.sort(np.random.default_rng(0).choice(ix.index.ntotal, 20000, replace=False))
    x = ix.vault.embeddings(sample).astype(np.float32)
    own = list_of_entries(faiss, ivf_of(faiss, ix.index), ix.index.ntotal)[sample]
    c = ix.coarse.centroids
    scores = x @ c.T
    loss = scores.max(axis=1) - scores[np.arange(len(x)), own]
    assigned = {"best_list_share": float(np.mean(own == scores.argmax(axis=1))), "loss_p99": pct(loss, 99),
                "loss_max": float(loss.max()), "check_s": time.perf_counter() - t}
    index_bytes = sum(f.stat().st_size for f in ix.folder.iterdir() if f.is_file())
    return {"build_s": build_s, "entries_per_s": ix.index.ntotal / build_s, "index_gb": index_bytes / 1e9,
            "assigned": assigned, "index": {k: v for k, v in desc.items() if k != "cache"}}


def phase_query(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss
    import torch

    from luna_vault.vault import Vault, get_index
    from luna_vault.vault.index import GAP_LIMIT, recall_per_query, similarity_gap
    from luna_vault.vault.query import search_arrays

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    q, kinds = np.load(work / "q.npy"), np.load(work / "kinds.npy")
    truth_s, truth_i = np.load(work / "truth_s.npy"), np.load(work / "truth_i.npy")
    t = time.perf_counter()
    vault = Vault.open(work / "huge.vault")
    ix = get_index(vault, args.spec)
    if hasattr(ix, "_prefetch"):
        ix._prefetch.join()
    open_s = time.perf_counter() - t
    after_open = memory()
    out: dict[str, Any] = {"open_s": open_s, "memory_after_open": after_open}
    for rnd in ("first", "second"):
        lat, got_s, got_i = [], np.empty((len(q), 5), np.float32), np.empty((len(q), 5), np.int64)
        ix.exact_answers = 0
        for r in range(len(q)):
            t = time.perf_counter()
            s, i = search_arrays(vault, q[r], 5)
            lat.append((time.perf_counter() - t) * 1e3)
            got_s[r], got_i[r] = s[0], i[0]
        gap = similarity_gap(truth_s, got_s)
        recall = recall_per_query(got_i, truth_i)
        out[rnd] = {"p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": max(lat),
                    "recall_at_5": float(recall.mean()), "misses": int((gap > GAP_LIMIT).sum()),
                    "max_gap": float(gap.max()), "exact_answers": ix.exact_answers,
                    "per_kind": {name: {"recall": float(recall[kinds == k].mean()),
                                        "misses": int((gap[kinds == k] > GAP_LIMIT).sum())}
                                 for k, name in enumerate(QUERY_KINDS)},
                    "memory": memory()}
    return out


PHASES = {"write": phase_write, "truth": phase_truth, "index": phase_index, "query": phase_query}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--spec", default=None, help="index spec for the index and query phases (default: the vault's, "
                    "'auto'); each spec has its own index cache and results file")
    ap.add_argument("--work", required=True, help="folder for the vault, its index cache and the queries (kept)")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated: " + ", ".join(PHASES))
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # one phase, in this process (run by main)
    ap.add_argument("--out", default=None, help="JSON results (default: WORK/huge.json)")
    args = ap.parse_args()
    work = Path(args.work).resolve() / f"clip-{args.n}"
    work.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "_" for c in args.spec) if args.spec else ""
    os.environ["LUNA_VAULT_CACHE"] = str(work / (f"cache-{tag}" if tag else "cache"))
    if args.phase:
        t = time.perf_counter()
        row = PHASES[args.phase](args, work)
        row.update(seconds=time.perf_counter() - t, memory=memory())
        print("RESULT " + json.dumps(row), flush=True)
        return
    out = Path(args.out) if args.out else work / (f"huge-{tag}.json" if tag else "huge.json")
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results.update(n=args.n, dim=args.dim, machine=f"{os.cpu_count()} cores")
    for name in args.phases.split(","):
        print(f"== {name} ({args.n:,} entries)", flush=True)
        cmd = [sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim), "--queries", str(args.queries),
               "--seed", str(args.seed), "--work", args.work, "--phase", name] + (["--spec", args.spec] if args.spec else [])
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        lines = proc.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
        if proc.returncode != 0:
            raise SystemExit(f"phase {name} failed (exit {proc.returncode})")
        results[name] = json.loads(next(line[7:] for line in lines if line.startswith("RESULT ")))
        print(json.dumps(results[name], indent=1), flush=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
