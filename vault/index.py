"""The vault's FAISS index: chosen by size, tuned for recall, cached locally, exact re-ranking on top.

Rule (like autofaiss, but the vectors are never stored twice):
- up to FLAT_MAX entries: exact inner-product search over the stored fp16 vectors, built in memory
  at open (no file);
- above: IVF (HNSW coarse quantizer) with 4-bit fast-scan PQ codes (D/4 bytes per entry), then an
  exact re-rank of `k * k_factor` candidates against the memory-mapped fp16 embeddings. `nprobe` and
  `k_factor` are tuned on a sample of the vault to reach `recall_target` against exact search.

A FAISS binary is only ever loaded from this machine's cache (never from a vault someone shared):
`<cache>/index/<hash of the vault path>/` holds `index.faiss` and `index.json`, which binds it to
the vault's segment list and checksums. Appends add only the new segments to a cached index.
Any FAISS factory string can be given instead of "auto" (inner-product metric).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .atomic import atomic_write, atomic_write_bytes
from .segment import prefetch

if TYPE_CHECKING:
    from .store import Vault

log = logging.getLogger(__name__)

FLAT_MAX = 20_000
EXACT_SUBSET_MAX = 32_768
RECALL_TARGET = 0.98  # tuned on a 256-query sample; the margin keeps unseen queries at >= 0.97
TUNE_QUERIES = 256
TUNE_K = 5
INDEX_STATE_VERSION = 1
ProgressFn = Callable[[int, int], None]


def default_cache_dir() -> Path:
    """Where this machine keeps vault indexes: $LUNA_VAULT_CACHE, else the user cache folder."""
    if os.environ.get("LUNA_VAULT_CACHE"):
        return Path(os.environ["LUNA_VAULT_CACHE"])
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "luna-vault" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "luna-vault"


def index_cache_folder(vault: "Vault", cache_dir: Path | None = None) -> Path:
    """This machine's cache folder for one vault's index (keyed by the vault's absolute path)."""
    key = hashlib.sha256(str(vault.path.resolve()).encode()).hexdigest()[:24]
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "index" / key


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def pq_subquantizers(d: int) -> int:
    """Number of 4-bit PQ sub-quantizers: one per 2 dims (d/4 bytes per vector), and it must divide d."""
    for m in range(max(1, d // 2), 0, -1):
        if d % m == 0:
            return m
    return 1


def choose_index(n: int, d: int) -> str:
    """The FAISS factory string for an n-entry, d-dim vault ("Flat" = exact)."""
    if n <= FLAT_MAX:
        return "Flat"
    nlist = 2 ** int(round(math.log2(math.sqrt(n) * 3)))
    nlist = max(64, min(nlist, 65536, 2 ** int(math.log2(n / 40))))
    return f"IVF{nlist}_HNSW32,PQ{pq_subquantizers(d)}x4fs"


@dataclass
class IndexState:
    """What index.json records: which vault content the cached index covers and how it is tuned."""

    spec: str
    vault_path: str
    segments: list[list[Any]] = field(default_factory=list)  # [file, sha256, entries] covered, in order
    ntotal: int = 0
    trained_n: int = 0
    nprobe: int = 16
    k_factor: int = 8
    recall: float | None = None
    tuned_n: int = 0
    tune_ms: float | None = None
    built_at: float = 0.0
    version: int = INDEX_STATE_VERSION


def _segment_keys(vault: "Vault") -> list[list[Any]]:
    return [[s.file, s.sha256, s.entries] for s in vault.manifest.segments]


class VaultIndex:
    """Search structure of one opened vault (exact or IVF-PQ + re-rank), shared by all its queries."""

    def __init__(self, vault: "Vault", spec: str | None = None, cache_dir: Path | None = None,
                 recall_target: float = RECALL_TARGET, progress: ProgressFn | None = None) -> None:
        self.vault = vault
        self.requested = spec or vault.manifest.index or "auto"
        self.spec = choose_index(vault.n_entries, vault.dim) if self.requested == "auto" else self.requested
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.recall_target = recall_target
        self.state: IndexState | None = None
        self._lock = threading.Lock()
        self._gpu = False
        self._params: dict[int, Any] = {}  # reusable search parameters per nprobe (no selector)
        if not self.exact:  # map the stored vectors now (in the background) so re-ranking never page-faults
            self._prefetch = threading.Thread(target=self._prefetch_embeddings, daemon=True)
            self._prefetch.start()
        self.index = self._load(progress)

    def _prefetch_embeddings(self) -> None:
        for seg in self.vault.segments:
            prefetch(seg.embeddings)

    # ---- construction --------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return self.spec == "Flat"

    @property
    def folder(self) -> Path:
        return index_cache_folder(self.vault, self.cache_dir)

    def _load(self, progress: ProgressFn | None) -> Any:
        import faiss

        if self.exact:
            return self._build_flat(faiss)
        state = self._read_state()
        keys = _segment_keys(self.vault)
        if state is not None and state.spec == self.spec and keys[: len(state.segments)] == state.segments:
            try:
                index = faiss.read_index(str(self.folder / "index.faiss"))
            except RuntimeError as e:
                log.warning("cached index for %s unreadable (%s); rebuilding", self.vault.path, e)
            else:
                if index.ntotal == state.ntotal:
                    self.state = state
                    if len(state.segments) < len(keys):
                        grown = self.vault.n_entries > 4 * max(state.trained_n, 1) and self.requested == "auto"
                        if not grown:
                            self._extend(index, progress)
                            return self._maybe_gpu(index)
                    else:
                        return self._maybe_gpu(index)
        return self._maybe_gpu(self._build_ivf(faiss, progress))

    def _read_state(self) -> IndexState | None:
        path = self.folder / "index.json"
        try:
            d = json.loads(path.read_text())
            state = IndexState(**d)
        except (OSError, ValueError, TypeError):
            return None
        if state.version != INDEX_STATE_VERSION or state.vault_path != str(self.vault.path.resolve()):
            return None
        return state

    def _build_flat(self, faiss: Any) -> Any:
        d = self.vault.dim
        if gpu_available():
            index = faiss.IndexFlatIP(d)
            for _, block in self.vault.iter_embedding_blocks():
                index.add(np.asarray(block, dtype=np.float32))
            try:
                self._gpu = True
                return faiss.index_cpu_to_all_gpus(index)
            except RuntimeError as e:
                self._gpu = False
                log.info("flat index stays on CPU: %s", e)
                return index
        # fp16 scalar quantizer: its codes are exactly our stored fp16 bytes, so no conversion
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        for _, block in self.vault.iter_embedding_blocks():
            index.add_sa_codes(np.ascontiguousarray(block).view(np.uint8))
        return index

    def _build_ivf(self, faiss: Any, progress: ProgressFn | None) -> Any:
        vault, d = self.vault, self.vault.dim
        t0 = time.perf_counter()
        index = faiss.index_factory(d, self.spec, faiss.METRIC_INNER_PRODUCT)
        live = np.flatnonzero(vault.live_mask())
        rng = np.random.default_rng(0)
        ivf = _ivf_of(faiss, index)
        n_train = min(len(live), max(40 * (ivf.nlist if ivf is not None else 256), 10_000))
        train_ids = np.sort(rng.choice(live, n_train, replace=False)) if n_train < len(live) else live
        if ivf is not None and gpu_available():  # k-means on the GPU when there is one
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(d))
        log.info("training %s on %d of %d vectors", self.spec, len(train_ids), vault.n_entries)
        index.train(vault.embeddings(train_ids).astype(np.float32))
        self.state = IndexState(spec=self.spec, vault_path=str(vault.path.resolve()), trained_n=vault.n_entries,
                                built_at=time.time())
        self._extend(index, progress, tune=False)
        self._prefetch.join()
        self._tune(index)
        self._save(index)
        log.info("built %s for %d entries in %.1f s", self.spec, index.ntotal, time.perf_counter() - t0)
        return index

    def _extend(self, index: Any, progress: ProgressFn | None, tune: bool = True) -> None:
        """Add the segments the index does not cover yet (all of them for a fresh index)."""
        assert self.state is not None
        keys = _segment_keys(self.vault)
        todo = self.vault.segments[len(self.state.segments):]
        total = sum(s.n for s in todo)
        done = 0
        for seg in todo:
            for a in range(0, seg.n, 65536):
                block = np.asarray(seg.embeddings[a : a + 65536], dtype=np.float32)
                index.add(block)
                done += len(block)
                if progress:
                    progress(done, total)
        self.state.segments = keys
        self.state.ntotal = index.ntotal
        if tune and todo:
            if index.ntotal > 1.25 * max(self.state.tuned_n, 1):
                self._prefetch.join()
                self._tune(index)
            self._save(index)

    def _save(self, index: Any) -> None:
        import faiss

        assert self.state is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / "index.faiss", lambda tmp: faiss.write_index(index, str(tmp)))
        atomic_write_bytes(self.folder / "index.json", json.dumps(asdict(self.state), indent=1).encode())

    def _maybe_gpu(self, index: Any) -> Any:
        if not gpu_available():
            return index
        import faiss

        try:
            out = faiss.index_cpu_to_all_gpus(index)
            self._gpu = True
            return out
        except RuntimeError as e:  # e.g. fast-scan PQ has no GPU version: stays on CPU, same API
            log.info("index %s stays on CPU: %s", self.spec, e)
            return index

    # ---- tuning --------------------------------------------------------------------------------
    def _tune(self, index: Any) -> None:
        """Pick the fastest (nprobe, k_factor) whose recall@TUNE_K meets the target on two query sets.

        Queries are sampled stored vectors, searched twice: (1) with only their own entry hidden,
        (2) with every entry of their prompt hidden, i.e. as a crop of a prompt the vault has never
        seen: many near-equal matches, the hard case. Ground truth is exact search over the stored
        vectors under the same hiding; the worse of the two recalls counts.
        """
        import faiss

        assert self.state is not None
        vault = self.vault
        live = vault.live_mask()
        rng = np.random.default_rng(1)
        qids = np.sort(rng.choice(np.flatnonzero(live), min(TUNE_QUERIES, int(live.sum())), replace=False))
        queries = vault.embeddings(qids).astype(np.float32)
        truth = exact_search(vault, queries, TUNE_K + 1, None)[1]
        prompt_of = vault.all_prompt_ids()
        unseen = live & ~np.isin(prompt_of, prompt_of[qids])
        unseen_truth = exact_search(vault, queries, TUNE_K, unseen)[1] if unseen.sum() >= TUNE_K else None

        def recall(nprobe: int, kf: int) -> float:
            _, got = self._ann(index, queries, TUNE_K + 1, nprobe, kf, None)
            rec = _recall_excluding_self(got, truth, qids, TUNE_K)
            if unseen_truth is not None:
                _, got = self._ann(index, queries, TUNE_K, nprobe, kf, unseen)
                rec = min(rec, sum(len(set(g) & set(t)) for g, t in zip(got, unseen_truth)) / (TUNE_K * len(qids)))
            return rec

        ivf = _ivf_of(faiss, index)
        nprobes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= ivf.nlist] if ivf is not None else [0]
        factors = (2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 96)

        best: tuple[float, int, int, float] | None = None
        fallback = (math.inf, nprobes[-1], factors[-1], recall(nprobes[-1], factors[-1]))
        for nprobe in nprobes:
            # recall only grows with k_factor (more candidates, exact re-rank): binary-search the smallest
            lo, hi, found = 0, len(factors) - 1, None
            while lo <= hi:
                mid = (lo + hi) // 2
                rec = recall(nprobe, factors[mid])
                if rec >= self.recall_target:
                    found, hi = (factors[mid], rec), mid - 1
                else:
                    lo = mid + 1
            if found is None:
                continue
            ms = self._time(index, queries[:64], nprobe, found[0])
            if best is None or ms < best[0]:
                best = (ms, nprobe, found[0], found[1])
            elif ms > 2 * best[0]:
                break  # probing wider only costs more from here on
        chosen = best or fallback
        ms, self.state.nprobe, self.state.k_factor, self.state.recall = chosen
        self.state.tune_ms = None if math.isinf(ms) else ms
        self.state.tuned_n = index.ntotal
        if best is None:
            log.warning("index %s reaches recall@%d %.3f at most (target %.2f) on %s", self.spec, TUNE_K,
                        chosen[3], self.recall_target, vault.path)
        log.info("tuned %s: nprobe=%d k_factor=%d recall@%d=%.3f", self.spec, chosen[1], chosen[2], TUNE_K, chosen[3])

    def _time(self, index: Any, queries: np.ndarray, nprobe: int, kf: int) -> float:
        t = time.perf_counter()
        for q in queries:
            self._ann(index, q[None], TUNE_K, nprobe, kf, None)
        return (time.perf_counter() - t) / len(queries) * 1e3

    # ---- searching -----------------------------------------------------------------------------
    def _ann(self, index: Any, queries: np.ndarray, k: int, nprobe: int, k_factor: int,
             allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = None
        if not self._gpu:
            params = self._params.get(nprobe) if allowed is None else None
            if params is None:
                params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else faiss.SearchParameters()
                if allowed is None:
                    self._params[nprobe] = params
            if allowed is not None:
                bits = np.packbits(allowed, bitorder="little")
                params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        elif nprobe:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        # candidates were tuned for TUNE_K results; a smaller k must not shrink the pool
        _, cand = index.search(queries, min(max(k, TUNE_K) * k_factor, index.ntotal), params=params)
        return rerank(self.vault, queries, cand, k)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities [B, k] float32, ids [B, k] int64) by inner product; -1 ids pad short rows.

        `allowed` is a boolean mask over entry ids (deleted entries and filters). A selective mask is
        answered by exact search over the allowed rows; otherwise the index searches with the mask.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n_allowed = int(allowed.sum()) if allowed is not None else self.vault.n_entries
        with self._lock:
            if self.exact:
                if allowed is not None and self._gpu:
                    return exact_search(self.vault, queries, k, allowed)
                params = None
                if allowed is not None:
                    import faiss

                    bits = np.packbits(allowed, bitorder="little")
                    params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits)))
                sims, ids = self.index.search(queries, k, params=params)
                return sims.astype(np.float32), ids.astype(np.int64)
            if allowed is not None and (n_allowed <= EXACT_SUBSET_MAX or n_allowed < 0.05 * self.vault.n_entries):
                return exact_search(self.vault, queries, k, allowed)
            assert self.state is not None
            nprobe = self.state.nprobe
            if allowed is not None and n_allowed < self.vault.n_entries:  # probe wider when the mask thins lists
                nprobe = min(nprobe * max(1, int(round(self.vault.n_entries / n_allowed))), 8 * nprobe)
            return self._ann(self.index, queries, k, nprobe, self.state.k_factor, allowed)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec, "exact": self.exact, "gpu": self._gpu}
        if self.state is not None:
            d.update(nprobe=self.state.nprobe, k_factor=self.state.k_factor, recall_at_5=self.state.recall,
                     tuned_on=self.state.tuned_n, cache=str(self.folder))
        return d


def _ivf_of(faiss: Any, index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _recall_excluding_self(got: np.ndarray, truth: np.ndarray, qids: np.ndarray, k: int) -> float:
    hits = 0
    for g, t, q in zip(got, truth, qids):
        t = [i for i in t if i != q][:k]
        g = [i for i in g if i != q][:k]
        hits += len(set(g) & set(t))
    return hits / (k * len(qids))


def rerank(vault: "Vault", queries: np.ndarray, cand: np.ndarray, k: int, max_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate ids (-1 = none); keep the best k.

    Few, large tensor operations (at most `max_rows` gathered rows at a time): each small op costs
    thread wake-ups, which collide with FAISS's own OpenMP threads still spinning after a search.
    """
    import torch

    B, C = cand.shape
    kk = min(k, C)
    if B == 1:  # the common single-crop query: fewest possible array operations
        ids = cand[0][cand[0] >= 0]
        sims = (torch.from_numpy(vault.embeddings(ids)).float() @ torch.from_numpy(queries[0])).numpy()
        order = np.argsort(-sims, kind="stable")[:k]
        return _pad(sims[order][None].astype(np.float32), ids[order][None], k)
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
    return _pad(top_s, top_i, k)


def exact_search(vault: "Vault", queries: np.ndarray, k: int, allowed: np.ndarray | None,
                 block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product over the stored fp16 vectors (allowed rows only, if given)."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    B = q.shape[0]
    best_s = torch.full((B, 0), -math.inf)
    best_i = torch.zeros((B, 0), dtype=torch.int64)
    if allowed is not None:
        ids = np.flatnonzero(allowed)
        blocks = ((ids[a : a + block], vault.embeddings(ids[a : a + block])) for a in range(0, len(ids), block))
    else:
        blocks = ((np.arange(start, start + len(b)), b) for start, b in vault.iter_embedding_blocks(block))
    for bid, emb in blocks:
        s = q @ torch.from_numpy(np.array(emb)).float().T  # copy: a memory map is read-only
        cat_s = torch.cat([best_s, s], dim=1)
        cat_i = torch.cat([best_i, torch.from_numpy(bid).expand(B, -1)], dim=1)
        kk = min(k, cat_s.shape[1])
        best_s, pos = torch.topk(cat_s, kk, dim=1)
        best_i = torch.gather(cat_i, 1, pos)
    return _pad(best_s.numpy().astype(np.float32), best_i.numpy().astype(np.int64), k)


def _pad(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if sims.shape[1] >= k:
        return sims, ids
    B, short = sims.shape[0], k - sims.shape[1]
    return (np.concatenate([sims, np.full((B, short), -np.inf, np.float32)], axis=1),
            np.concatenate([ids, np.full((B, short), -1, np.int64)], axis=1))
