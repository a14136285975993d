"""The vault's FAISS index: chosen by size, tuned on queries that are not stored vectors, guarded at query time.

Rule (like autofaiss, but the vectors are never stored twice):
- up to FLAT_MAX entries: exact inner-product search over the stored fp16 vectors, built in memory
  at open (no file);
- above: IVF with an exact (flat) coarse quantizer over about LIST_SIZE entries per list, 4-bit
  fast-scan PQ codes (D/4 bytes per entry), then an exact re-rank of `k * k_factor` candidates
  against the memory-mapped fp16 embeddings.

Why a flat coarse quantizer: an HNSW graph over the centroids (the earlier choice) walks greedily,
and when centroids are nearly equidistant (clusters in many directions, as real data can be) it
stops in the wrong region whatever nprobe asks for, so whole neighbourhoods were never probed.
Why small lists: every natural cluster of the data should own a centroid; a cluster smaller than a
list shares one with others and its members scatter over lists that no query of it probes.

`nprobe`, `k_factor` and a query-time guard are tuned together (see `_tune`) on three query sets
drawn from prompts that were kept out of the partition's training: held-out entries, crops of
prompts the vault has never seen, and points between stored neighbours. The guard: a query whose best centroid
score falls below `guard` lies where the partition does not represent its neighbourhood (as a
query from no cluster at all would); it is answered by exact search instead, and counted. Every
returned similarity is exact.

A FAISS binary is only ever loaded from this machine's cache (never from a vault someone shared):
`<cache>/index/<hash of the vault path>/` holds `index.faiss` and `index.json`, which binds it to
the vault's id and to a digest of the entries it covers; a loaded index must also find a sample of
the vault's own entries. Appends add only the new entries to a cached index. One process builds
or extends an index at a time (a lock in the cache folder): the others wait, then load it.
Any FAISS factory string can be given instead of "auto" (inner-product metric).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from filelock import FileLock

from ..core.atomic import atomic_write, atomic_write_bytes
from .entries import check_unit_block
from .manifest import check_index_spec
from .segment import prefetch

if TYPE_CHECKING:
    from .store import Vault

log = logging.getLogger(__name__)

FLAT_MAX = 20_000
EXACT_SUBSET_MAX = 32_768
LIST_SIZE = 32  # entries per IVF list the automatic choice aims at
MAX_LISTS = 4096  # a flat coarse quantizer over 4,096 x 1024-d centroids costs ~0.3 ms per query
MAX_LISTS_HUGE = 8192  # above HUGE entries
HUGE = 1_000_000
TRAIN_PER_LIST = 20  # k-means sample: points per centroid (at least 10,000)
TRAIN_MAX_SHARE = 0.9  # at least a tenth of the prompts never trains the partition: tuning queries come from them
KMEANS_ITERATIONS = 10
RECALL_TARGET = 0.98  # on the tuning queries; the margin keeps unseen queries at >= 0.97
GAP_LIMIT = 0.05  # a query "misses" when exact mean top-k similarity exceeds the returned one by more
TUNE_GAP = GAP_LIMIT / 2  # tuning treats half the limit as a miss: a margin for the queries tuning never saw
LATENCY_BUDGET_MS = 2.0  # when the recall target cannot be reached: best recall within this time
NULL_QUERIES = 512  # structureless queries that set the guard's floor (see _structureless_floor)
NULL_QUANTILE = 0.95
FLOOR_MAX_SHARE = 0.05  # a floor that would send more of the tuning queries to exact search is dropped
MAX_EXACT_SHARE = 0.01  # the guard may answer this share of tuning queries exactly beyond those below its floor
TUNE_QUERIES = 256  # per tuning query set (three sets)
REACH_RATE = 1e-4  # nprobe must cover the neighbourhoods of all but this share of queries (extrapolated)
REACH_POOL = 64  # exact neighbours per tuning query that the reach is measured on
TUNE_K = 5
INDEX_STATE_VERSION = 4
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
    cap = MAX_LISTS if n <= HUGE else MAX_LISTS_HUGE
    nlist = max(256, min(2 ** int(round(math.log2(n / LIST_SIZE))), cap))
    return f"IVF{nlist},PQ{pq_subquantizers(d)}x4fs"


@dataclass
class IndexState:
    """What index.json records: which vault content the cached index covers and how it is tuned."""

    spec: str
    vault_path: str
    vault_id: str = ""
    covered_digest: str = ""  # of the entries 0..ntotal-1 (see _content_digest)
    ntotal: int = 0
    trained_n: int = 0
    train_share: float = 1.0  # prompts (entries, when negative) whose hash is below this trained the partition
    nprobe: int = 16
    k_factor: int = 8
    guard: float | None = None  # queries whose best centroid score is below this are answered exactly
    reach: int = 0  # nprobe at least this: how far neighbourhoods reach across lists (see VaultIndex._reach)
    recall: float | None = None  # recall@5 on the tuning queries (guarded queries count as exact)
    gap_share: float | None = None  # share of tuning queries whose similarity gap exceeds GAP_LIMIT
    exact_share: float | None = None  # share of tuning queries the guard answered exactly
    tune_ms: float | None = None  # one query at the chosen setting, on the machine that tuned it
    exact_ms: float | None = None  # one exact search, same machine
    target_met: bool = True
    note: str = ""
    tuned_n: int = 0
    tune_queries: int = 0
    built_at: float = 0.0
    version: int = INDEX_STATE_VERSION


def _content_digest(vault: "Vault", n: int) -> str:
    """Digest of the vault's first n entries as an index sees them: its id, and a fixed sample of vectors.

    Stable when small segments are merged (the entries stay), different for another vault or when
    entries are rewritten (a compaction renumbers them).
    """
    h = hashlib.sha256(f"{vault.manifest.vault_id}|{n}|{vault.dim}".encode())
    if n:
        ids = np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.int64))
        h.update(np.ascontiguousarray(vault.embeddings(ids)).tobytes())
    return h.hexdigest()


@dataclass
class _QuerySet:
    """Tuning queries with their exact answers: how one kind of real query is expected to behave."""

    name: str
    queries: np.ndarray  # [m, D] float32
    allowed: np.ndarray | None  # mask the ANN search and the truth share
    truth_sims: np.ndarray  # [m, k] exact top-k similarities
    truth_ids: np.ndarray  # [m, k]
    exclude: np.ndarray | None = None  # [m] an id to drop from each row's answer (the query's own entry)
    pool: tuple[np.ndarray, np.ndarray] | None = None  # exact neighbours, best first, beyond k (see _reach)


class _Trial:
    """One tuning setting's outcome per tuning query, and the guard fitted to it."""

    def __init__(self, nprobe: int, k_factor: int, recall: np.ndarray, gap: np.ndarray, top: np.ndarray,
                 floor: float) -> None:
        self.nprobe, self.k_factor, self.rec, self.top, self.floor = nprobe, k_factor, recall, top, floor
        self.bad = gap > TUNE_GAP  # what the setting and its guard must avoid (with a margin)
        self.missed = gap > GAP_LIMIT  # what counts as a miss
        self.guard = self.fit_guard(np.ones(len(gap), bool))
        flagged = top < self.guard
        self.recall = float(np.where(flagged, 1.0, recall).mean())
        self.exact_share = float(flagged.mean())

    def fit_guard(self, rows: np.ndarray) -> float:
        """The smallest threshold that sends every missed query among `rows` to exact search."""
        bad = rows & self.bad
        return max(self.floor, float(self.top[bad].max()) + 1e-6) if bad.any() else self.floor

    def out_of_sample_misses(self) -> float:
        """Share of queries still missed when the guard is fitted on the other half of the queries."""
        half = np.arange(len(self.bad)) % 2 == 0
        missed = 0
        for fit in (half, ~half):
            missed += int((~fit & self.missed & (self.top >= self.fit_guard(fit))).sum())
        return missed / max(len(self.bad), 1)


class VaultIndex:
    """Search structure of one opened vault (exact or IVF-PQ + re-rank + guard), shared by all its queries."""

    def __init__(self, vault: "Vault", spec: str | None = None, cache_dir: Path | None = None,
                 recall_target: float = RECALL_TARGET, progress: ProgressFn | None = None,
                 latency_budget_ms: float = LATENCY_BUDGET_MS) -> None:
        self.vault = vault
        self.requested = check_index_spec(spec or vault.manifest.index or "auto", vault.dim)
        self.spec = choose_index(vault.n_entries, vault.dim) if self.requested == "auto" else self.requested
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.recall_target = recall_target
        self.latency_budget_ms = latency_budget_ms
        self.state: IndexState | None = None
        self.queries = 0  # queries answered (since this process opened the index)
        self.exact_answers = 0  # of which the guard answered exactly
        self._lock = threading.Lock()
        self._gpu = False
        self._centroids: np.ndarray | None = None  # coarse centroids (float32): the coarse step and the guard
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
        cached = self._load_cached(faiss, progress)
        if cached is not None:
            return self._maybe_gpu(cached)
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / "build.lock")):  # one builder per vault on this machine; the others wait
            cached = self._load_cached(faiss, progress)  # ... and find what it built
            if cached is not None:
                return self._maybe_gpu(cached)
            return self._maybe_gpu(self._build_ivf(faiss, progress))

    def _load_cached(self, faiss: Any, progress: ProgressFn | None) -> Any:
        """The cached index, extended to the vault's new entries, or None when there is none to trust."""
        state = self._read_state()
        if (state is None or state.spec != self.spec or state.vault_id != self.vault.manifest.vault_id
                or state.ntotal > self.vault.n_entries
                or state.covered_digest != _content_digest(self.vault, state.ntotal)):
            return None
        grown = self.vault.n_entries > 4 * max(state.trained_n, 1) and self.requested == "auto"
        if grown:
            return None
        try:
            index = _expand_quantizer(faiss, faiss.read_index(str(self.folder / "index.faiss")))
        except RuntimeError as e:
            log.warning("cached index for %s unreadable (%s); rebuilding", self.vault.path, e)
            return None
        if index.ntotal != state.ntotal or index.d != self.vault.dim:
            return None
        self.state = state
        if not self._finds_itself(index):
            log.warning("the cached index at %s does not find the vault's own entries; rebuilding", self.folder)
            self.state = None
            return None
        if state.ntotal < self.vault.n_entries:
            self.folder.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.folder / "build.lock")):
                fresh = self._read_state()
                if fresh is not None and fresh.ntotal > state.ntotal:  # another process extended it meanwhile
                    return self._load_cached(faiss, progress)
                self._extend(index, progress)
        return index

    def _finds_itself(self, index: Any, sample: int = 8) -> bool:
        """Does the index return a few of the vault's own vectors as their own best match? (A cache file
        from another vault of the same size does not.)"""
        live = np.flatnonzero(self.vault.live_mask()[: index.ntotal])
        if not len(live) or self.state is None:
            return True
        ids = live[np.unique(np.linspace(0, len(live) - 1, min(sample, len(live))).astype(np.int64))]
        q = self.vault.embeddings(ids).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        sims, got, _ = self._ann(index, q, 1, self.state.nprobe, self.state.k_factor, None)
        return float(np.mean((got[:, 0] == ids) | (sims[:, 0] > 0.999))) >= 0.75

    def _read_state(self) -> IndexState | None:
        path = self.folder / "index.json"
        try:
            d = json.loads(path.read_text())
            known = {f.name for f in fields(IndexState)}
            state = IndexState(**{k: v for k, v in d.items() if k in known})
        except (OSError, ValueError, TypeError, AttributeError):
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
        live = vault.live_mask()
        rng = np.random.default_rng(0)
        ivf = _ivf_of(faiss, index)
        wanted = max(TRAIN_PER_LIST * (ivf.nlist if ivf is not None else 256), 10_000)
        # a tenth of the prompts stays out of training, so that tuning can query a partition that never saw
        # them; the sample is drawn from all the other prompts' entries (many prompts per cluster)
        share = TRAIN_MAX_SHARE
        pool = np.flatnonzero(live & (_unit_hash(vault.all_prompt_ids()) < share))
        if len(pool) < min(wanted, int(live.sum())) // 2:  # a few prompts hold most entries: split by entry
            pool = np.flatnonzero(live & (_unit_hash(np.arange(vault.n_entries)) < share))
            share = -share  # negative: the split is by entry id
        train_ids = np.sort(rng.choice(pool, wanted, replace=False)) if wanted < len(pool) else pool
        train = vault.embeddings(train_ids).astype(np.float32)
        log.info("training %s on %d of %d vectors", self.spec, len(train_ids), vault.n_entries)
        if ivf is not None and ivf.nlist >= 1024 and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
            ivf.quantizer.add(_two_level_centroids(train, ivf.nlist))  # then train() fits only the codes
        elif ivf is not None:
            ivf.cp.niter = KMEANS_ITERATIONS
        index.train(train)
        del train
        self.state = IndexState(spec=self.spec, vault_path=str(vault.path.resolve()), trained_n=vault.n_entries,
                                train_share=share, built_at=time.time(), vault_id=vault.manifest.vault_id)
        self._extend(index, progress, tune=False)
        self._prefetch.join()
        self._tune(index)
        self._save(index)
        log.info("built %s for %d entries in %.1f s", self.spec, index.ntotal, time.perf_counter() - t0)
        return index

    def _extend(self, index: Any, progress: ProgressFn | None, tune: bool = True) -> None:
        """Add the entries the index does not cover yet (all of them for a fresh index), checking each
        vector is unit length as it is read (a damaged file is refused here, not searched)."""
        assert self.state is not None
        start, stop = index.ntotal, self.vault.n_entries
        done = 0
        for first, block in self.vault.iter_embedding_blocks():
            if first + len(block) <= start:
                continue
            block = np.asarray(block[max(0, start - first):], dtype=np.float32)
            check_unit_block(self.vault.name, block, max(first, start))
            index.add(block)
            done += len(block)
            if progress:
                progress(done, stop - start)
        self.state.ntotal = index.ntotal
        self.state.vault_id = self.vault.manifest.vault_id
        self.state.covered_digest = _content_digest(self.vault, index.ntotal)
        if tune and done:
            if index.ntotal > 1.25 * max(self.state.tuned_n, 1):
                self._prefetch.join()
                self._tune(index)
            self._save(index)

    def _save(self, index: Any) -> None:
        import faiss

        assert self.state is not None
        self.folder.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with _compact_quantizer(faiss, index):
                faiss.write_index(index, str(tmp))

        atomic_write(self.folder / "index.faiss", write)
        atomic_write_bytes(self.folder / "index.json", json.dumps(asdict(self.state), indent=1).encode())

    def _maybe_gpu(self, index: Any) -> Any:
        if not gpu_available():
            return index
        import faiss

        try:
            out = faiss.index_cpu_to_all_gpus(index)
        except RuntimeError as e:  # e.g. fast-scan PQ has no GPU version: stays on CPU, same API
            log.info("index %s stays on CPU: %s", self.spec, e)
            return index
        if _ivf_of(faiss, index) is not None:
            self._coarse_centroids(index)  # the guard needs centroid scores; GPU indexes do not hand them out
        self._gpu = True
        return out

    # ---- tuning --------------------------------------------------------------------------------
    def _data_gaussian(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean [D], m draws [m, D] from a zero-mean Gaussian with the stored vectors' covariance).

        Random mixtures of centred stored vectors: the data's own spread without its clusters.
        """
        live_ids = np.flatnonzero(self.vault.live_mask())
        sample = self.vault.embeddings(np.sort(rng.choice(live_ids, min(20_000, len(live_ids)), replace=False)))
        sample = sample.astype(np.float32)
        mean = sample.mean(axis=0)
        sample -= mean
        mix = rng.standard_normal((m, len(sample)), dtype=np.float32) / np.float32(np.sqrt(len(sample)))
        return mean, mix @ sample

    def _query_sets(self, rng: np.random.Generator) -> list[_QuerySet]:
        """Three kinds of tuning query, none of them a stored vector as it is, each with exact answers.

        held-out: a stored entry's vector with that entry hidden (a new image of a stored prompt);
        unseen: the same vectors with every entry of their prompts hidden (a crop of a prompt the
        vault has never seen: many near-equal matches, the hard case); between: a point between a
        stored vector and one of its five nearest neighbours (a perturbed copy that stays on the
        data: isotropic noise would leave it, and on anisotropic data like CLIP's make queries
        look worse represented than real ones).
        """
        vault, k = self.vault, TUNE_K
        live = vault.live_mask()
        live_ids = np.flatnonzero(live)
        fresh = np.flatnonzero(self._untrained() & live)  # entries the partition was not fitted to
        source = fresh if len(fresh) >= min(64, len(live_ids)) else live_ids
        m = min(TUNE_QUERIES, len(source))
        qids = np.sort(rng.choice(source, m, replace=False))
        base = vault.embeddings(qids).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        mask = None if live.all() else live
        pool_s, pool_i = exact_search(vault, base, min(k + 64, len(live_ids)), mask)

        def first_k(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            s = np.full((m, k), -np.inf, np.float32)
            i = np.full((m, k), -1, np.int64)
            short = np.zeros(m, bool)
            for r in range(m):
                sel = np.flatnonzero(keep[r])[:k]
                s[r, : len(sel)], i[r, : len(sel)] = pool_s[r, sel], pool_i[r, sel]
                short[r] = len(sel) < k
            return s, i, short

        def kept(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The pool's rows with only `keep`, best first, padded with -inf / -1."""
            order = np.argsort(~keep, axis=1, kind="stable")
            s = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(pool_s, order, 1), -np.inf)
            i = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(pool_i, order, 1), -1)
            return s.astype(np.float32), i

        held = (pool_i != qids[:, None]) & (pool_i >= 0)
        held_s, held_i, _ = first_k(held)
        prompt_of = vault.all_prompt_ids()
        unseen = live & ~np.isin(prompt_of, prompt_of[qids])
        sets = [_QuerySet("held-out", base, mask, held_s, held_i, exclude=qids, pool=kept(held))]
        if unseen.sum() >= k:
            in_unseen = unseen[np.maximum(pool_i, 0)] & (pool_i >= 0)
            un_s, un_i, short = first_k(in_unseen)
            if short.any():  # a prompt with many entries fills the pool: search those rows exactly
                un_s[short], un_i[short] = exact_search(vault, base[short], k, unseen)
            sets.append(_QuerySet("unseen prompt", base, unseen, un_s, un_i, pool=kept(in_unseen)))
        # between a stored vector and one of its 5 nearest neighbours: off every stored point, on the data
        near = held_i[np.arange(m), rng.integers(0, k, m)]
        t = rng.uniform(0.3, 0.7, m).astype(np.float32)[:, None]
        other = np.where((near >= 0)[:, None], vault.embeddings(np.maximum(near, 0)).astype(np.float32), base)
        pert = (1 - t) * base + t * other
        pert /= np.linalg.norm(pert, axis=1, keepdims=True)
        wide_s, wide_i = exact_search(vault, pert, min(REACH_POOL, len(live_ids)), mask)
        sets.append(_QuerySet("between", pert, mask, wide_s[:, :k], wide_i[:, :k], pool=(wide_s, wide_i)))
        return sets

    def _untrained(self) -> np.ndarray:
        """Mask of entries that did not train the partition: held-out prompts and everything appended later."""
        assert self.state is not None
        vault, share = self.vault, self.state.train_share
        keys = vault.all_prompt_ids() if share >= 0 else np.arange(vault.n_entries)
        return (_unit_hash(keys) >= abs(share)) | (np.arange(vault.n_entries) >= self.state.trained_n)

    def _outcome(self, index: Any, qs: _QuerySet, nprobe: int, kf: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query: recall@k, similarity gap, best centroid score, at one setting (no guard)."""
        k = TUNE_K
        extra = 1 if qs.exclude is not None else 0
        sims, ids, top = self._ann(index, qs.queries, k + extra, nprobe, kf, qs.allowed)
        if qs.exclude is not None:
            keep = ids != qs.exclude[:, None]
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
        return (recall_per_query(ids, qs.truth_ids), similarity_gap(qs.truth_sims, sims), top)

    def _tune(self, index: Any) -> None:
        """Pick (nprobe, k_factor, guard) by measurement on queries that are not stored vectors.

        For each setting the guard threshold is the smallest that sends every tuning query whose
        similarity gap exceeds TUNE_GAP to exact search, and never below the structureless floor
        (see `_structureless_floor`). TUNE_GAP is half of GAP_LIMIT: a few hundred tuning queries
        cannot show a one-in-ten-thousand miss, but they do show the tail of gaps it comes from. A setting is acceptable when recall@5 (exact answers count
        as exact) meets the target and the guard sends at most MAX_EXACT_SHARE of the queries to
        exact search beyond those below the floor (which go there whatever the setting). The
        cheapest acceptable setting wins, counting exact answers at their cost. When
        none is acceptable: the best recall within the latency budget, and the state says so.
        The recorded miss share is measured out of sample: the guard fitted on half of the tuning
        queries, counted on the other half, both ways.
        """
        import faiss

        assert self.state is not None
        t0 = time.perf_counter()
        rng = np.random.default_rng(1)
        sets = self._query_sets(rng)
        guarded = isinstance(index, faiss.IndexIVF) and not self._gpu
        tops = np.concatenate([self._coarse(index, qs.queries, 1)[0][:, 0] for qs in sets]) if guarded else None
        floor = -math.inf
        if tops is not None:  # where data looks like its own Gaussian the null says nothing: then no floor
            null = self._structureless_floor(index, rng)
            floor = null if null <= float(np.quantile(tops, FLOOR_MAX_SHARE)) else -math.inf
        exact_ms = self._time_exact(sets[0].queries[:3])
        timing_queries = sets[-1].queries  # between stored vectors: not stored vectors

        def evaluate(nprobe: int, kf: int) -> _Trial:
            out = [self._outcome(index, qs, nprobe, kf) for qs in sets]
            rec, gap, top = (np.concatenate(parts) for parts in zip(*out))
            if not guarded:  # no centroid scores: nothing for a guard to compare (custom index types)
                top = np.full(len(top), np.inf, np.float32)
            return _Trial(nprobe, kf, rec, gap, top, floor)

        # queries below the floor go to exact search whatever the setting: only the rest is the setting's doing
        floor_share = float(np.mean(tops < floor)) if tops is not None else 0.0

        def acceptable(t: _Trial) -> bool:
            return t.recall >= self.recall_target and t.exact_share <= floor_share + MAX_EXACT_SHARE

        ivf = _ivf_of(faiss, index)
        nprobes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= ivf.nlist] if ivf is not None else [0]
        reach = self._reach(index, sets, nprobes) if guarded else 0
        nprobes = [p for p in nprobes if p >= reach] or nprobes[-1:]
        factors = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96)
        best: tuple[float, _Trial] | None = None
        fallback: tuple[float, _Trial] | None = None  # best recall within the latency budget
        cheapest: tuple[float, _Trial] | None = None  # when nothing fits the budget
        for nprobe in nprobes:
            widest = evaluate(nprobe, factors[-1])
            if not acceptable(widest):  # no smaller candidate pool does better: remember it, probe wider
                ann_ms, cost = self._cost(index, timing_queries, widest, exact_ms)
                if cost <= self.latency_budget_ms and (fallback is None or widest.recall > fallback[1].recall):
                    fallback = (cost, widest)
                if cheapest is None or cost < cheapest[0]:
                    cheapest = (cost, widest)
                if ann_ms > 4 * self.latency_budget_ms:
                    break  # probing wider only gets slower
                continue
            lo, hi, found = 0, len(factors) - 2, widest
            while lo <= hi:  # recall grows with k_factor (more candidates, exact re-rank): smallest that passes
                mid = (lo + hi) // 2
                t = evaluate(nprobe, factors[mid])
                if acceptable(t):
                    found, hi = t, mid - 1
                else:
                    lo = mid + 1
            cost = self._cost(index, timing_queries, found, exact_ms)[1]
            if best is None or cost < best[0]:
                best = (cost, found)
            elif cost > 2 * best[0]:
                break  # probing wider only costs more from here on
        st = self.state
        if best is not None:
            cost, chosen = best
            st.target_met, st.note = True, ""
        else:
            assert cheapest is not None
            cost, chosen = fallback or cheapest
            st.target_met = False
            st.note = (f"recall@{TUNE_K} reaches {chosen.recall:.3f} at most within {self.latency_budget_ms:g} ms per "
                       f"query (target {self.recall_target:.2f}); chose the best setting within that budget")
            log.warning("index %s on %s: %s", self.spec, self.vault.path, st.note)
        st.nprobe, st.k_factor, st.reach = chosen.nprobe, chosen.k_factor, reach
        st.guard = chosen.guard if guarded and math.isfinite(chosen.guard) else None
        st.recall, st.exact_share, st.gap_share = chosen.recall, chosen.exact_share, chosen.out_of_sample_misses()
        st.tune_ms, st.exact_ms = cost, exact_ms
        st.tuned_n, st.tune_queries = index.ntotal, len(chosen.top)
        log.info("tuned %s in %.1f s: nprobe=%d (reach %d) k_factor=%d guard=%s recall@%d=%.3f exact share %.4f, "
                 "misses %.4f before the guard, %.4f after (out of sample)", self.spec, time.perf_counter() - t0,
                 st.nprobe, reach, st.k_factor, st.guard, TUNE_K, st.recall, st.exact_share, chosen.missed.mean(),
                 st.gap_share)

    def _reach(self, index: Any, sets: list[_QuerySet], nprobes: list[int]) -> int:
        """The smallest nprobe that reaches the neighbourhoods of all but REACH_RATE of queries, extrapolated.

        A few hundred tuning queries cannot show a one-in-ten-thousand miss, but every one of them shows
        how far its neighbourhood reaches: for each query, the fewest best-scoring lists that hold enough
        of its exact neighbours for the top-5 to come within TUNE_GAP of the exact one (whatever PQ and
        re-ranking then do). The share of queries needing more than p lists falls as p doubles; it is
        fitted on a log scale (per doubling) where it is measured, and extended to REACH_RATE. With
        too few points to fit, one doubling beyond the widest reach seen.
        """
        import faiss

        ivf = _ivf_of(faiss, index)
        if ivf is None or len(nprobes) < 2:
            return 0
        list_of = np.full(self.vault.n_entries, -1, np.int64)
        invlists = ivf.invlists
        for lst in range(ivf.nlist):
            n = invlists.list_size(lst)
            if n:
                ids = faiss.rev_swig_ptr(invlists.get_ids(lst), n)
                list_of[ids[(ids >= 0) & (ids < len(list_of))]] = lst
        centroids = self._coarse_centroids(index)
        needed: list[np.ndarray] = []
        for qs in sets:
            if qs.pool is None:
                continue
            pool_s, pool_i = qs.pool
            scores = qs.queries @ centroids.T  # [m, nlist]
            rank = np.empty_like(scores, dtype=np.int64)
            np.put_along_axis(rank, np.argsort(-scores, axis=1), np.arange(1, scores.shape[1] + 1)[None], axis=1)
            lists = list_of[np.maximum(pool_i, 0)]
            pool_rank = np.where((pool_i >= 0) & (lists >= 0), np.take_along_axis(rank, np.maximum(lists, 0), 1),
                                 np.iinfo(np.int64).max)
            exact_mean = np.mean(qs.truth_sims, axis=1)
            need = np.full(len(qs.queries), np.iinfo(np.int64).max, np.int64)
            for p in sorted(nprobes, reverse=True):  # the smallest p that suffices, for every query at once
                inside = pool_rank <= p
                enough = inside.sum(axis=1) >= TUNE_K
                first = np.argsort(~inside, axis=1, kind="stable")[:, :TUNE_K]  # pool is best first
                got = np.take_along_axis(pool_s, first, 1).mean(axis=1)
                ok = enough & (exact_mean - got <= TUNE_GAP)
                need = np.where(ok, p, need)
            needed.append(need)
        if not needed:
            return 0
        need = np.concatenate(needed)
        reach, survival = reach_from_needs(need, nprobes)
        log.info("neighbourhood reach: share needing more than %s lists: %s -> nprobe >= %d",
                 sorted(nprobes), [round(float(v), 4) for v in survival], reach)
        return reach

    def _structureless_floor(self, index: Any, rng: np.random.Generator) -> float:
        """The guard's floor: how well the partition "represents" queries that belong to no cluster.

        Structureless queries are drawn from a Gaussian with the vault's own mean and covariance
        (see `_data_gaussian`): they share the data's common direction and
        spread but none of its clusters. A real query whose best centroid scores no better than
        NULL_QUANTILE of them is in a region the partition does not represent; it gets exact search.
        (Where the data is close to one Gaussian anyway the null looks like data: when the floor
        would send more than FLOOR_MAX_SHARE of the tuning queries to exact search, `_tune` drops it.)
        """
        mean, spread = self._data_gaussian(rng, NULL_QUERIES)
        null = mean + spread
        null /= np.linalg.norm(null, axis=1, keepdims=True)
        return float(np.quantile(self._coarse(index, null, 1)[0][:, 0], NULL_QUANTILE))

    def _time_exact(self, queries: np.ndarray) -> float:
        """One exact search, in ms (best of a few after a warm-up pass that maps the vault's pages)."""
        exact_search(self.vault, queries[:1], TUNE_K, None)
        times = []
        for q in queries:
            t = time.perf_counter()
            exact_search(self.vault, q[None], TUNE_K, None)
            times.append((time.perf_counter() - t) * 1e3)
        return float(min(times))

    def _cost(self, index: Any, queries: np.ndarray, trial: "_Trial", exact_ms: float) -> tuple[float, float]:
        """(ms per single query of the approximate search alone, expected ms with the exact answers at their cost)."""
        ann_ms = self._time(index, queries[:64], trial.nprobe, trial.k_factor)
        return ann_ms, (1 - trial.exact_share) * ann_ms + trial.exact_share * exact_ms

    def _time(self, index: Any, queries: np.ndarray, nprobe: int, kf: int) -> float:
        t = time.perf_counter()
        for q in queries:
            self._ann(index, q[None], TUNE_K, nprobe, kf, None)
        return (time.perf_counter() - t) / len(queries) * 1e3

    # ---- searching -----------------------------------------------------------------------------
    def _ann(self, index: Any, queries: np.ndarray, k: int, nprobe: int, k_factor: int,
             allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Approximate top-k, re-ranked exactly: (sims [B, k], ids [B, k], best centroid score [B])."""
        import faiss

        B = len(queries)
        # candidates were tuned for TUNE_K results; a smaller k must not shrink the pool
        kk = min(max(k, TUNE_K) * k_factor, index.ntotal)
        top = np.full(B, np.inf, np.float32)
        bits = np.packbits(allowed, bitorder="little") if allowed is not None else None
        if self._gpu:
            if allowed is not None:  # GPU indexes take no selector: fetch more, drop the masked-out ones in rerank
                kk = min(kk * max(1, math.ceil(len(allowed) / max(int(allowed.sum()), 1))), index.ntotal, 2048)
            if nprobe:
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
            _, cand = index.search(queries, kk)
            if self._centroids is not None:
                top = (queries @ self._centroids.T).max(axis=1).astype(np.float32)
        elif isinstance(index, faiss.IndexIVF):
            nprobe = min(nprobe, index.nlist)
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if bits is not None:
                params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            coarse_s, coarse_i = self._coarse(index, queries, nprobe)
            dist = np.empty((B, kk), np.float32)
            cand = np.empty((B, kk), np.int64)
            with _faiss_threads(1 if B <= 256 else None):
                index.search_preassigned_c(B, faiss.swig_ptr(queries), kk, faiss.swig_ptr(coarse_i),
                                           faiss.swig_ptr(coarse_s), faiss.swig_ptr(dist), faiss.swig_ptr(cand), False, params)
            top = coarse_s[:, 0].copy()
        else:  # a custom factory string (pre-transforms, other index types): plain search, no guard
            params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else faiss.SearchParameters()
            if bits is not None:
                params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            _, cand = index.search(queries, kk, params=params)
        sims, ids = rerank(self.vault, queries, cand, k, allowed)
        return sims, ids, top

    def _coarse(self, index: Any, queries: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The nprobe best lists per query, best first: (scores [B, nprobe] float32, list ids [B, nprobe] int64).

        One BLAS product with the centroids: faster than FAISS's own flat search below its BLAS
        threshold (20 queries), where a detailer's few crops always are.
        """
        centroids = self._coarse_centroids(index)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = min(nprobe, len(centroids))
        if len(queries) == 1:  # a matrix-vector product: numpy's BLAS call has the least overhead
            scores = centroids @ queries[0]
            part = np.argpartition(-scores, nprobe - 1)[:nprobe] if nprobe < len(centroids) else np.arange(nprobe)
            part = part[np.argsort(-scores[part], kind="stable")]
            return scores[part][None].astype(np.float32), part[None].astype(np.int64)
        import torch

        top_s, top_i = torch.topk(torch.from_numpy(queries) @ torch.from_numpy(centroids).T, nprobe, dim=1)
        return top_s.numpy(), top_i.numpy().astype(np.int64)

    def _coarse_centroids(self, index: Any) -> np.ndarray:
        if self._centroids is None:
            import faiss

            ivf = _ivf_of(faiss, index)
            self._centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)
        return self._centroids

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities [B, k] float32, ids [B, k] int64) by inner product; -1 ids pad short rows.

        `allowed` is a boolean mask over entry ids (deleted entries and filters). A selective mask is
        answered by exact search over the allowed rows; otherwise the index searches with the mask.
        Queries the guard does not trust (see `_tune`), or that come back with fewer results than
        the mask allows, are answered by exact search.
        """
        sims, ids, _ = self.search_detailed(queries, k, allowed)
        return sims, ids

    def search_detailed(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like search(), plus [B] bool: which queries were answered by exact search."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        B = len(queries)
        n_allowed = int(allowed.sum()) if allowed is not None else self.vault.n_entries
        with self._lock:
            self.queries += B
            if self.exact:
                if allowed is not None and self._gpu:
                    return (*exact_search(self.vault, queries, k, allowed), np.ones(B, bool))
                params = None
                if allowed is not None:
                    import faiss

                    bits = np.packbits(allowed, bitorder="little")
                    params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits)))
                sims, ids = self.index.search(queries, k, params=params)
                return sims.astype(np.float32), ids.astype(np.int64), np.ones(B, bool)
            if allowed is not None and (n_allowed <= EXACT_SUBSET_MAX or n_allowed < 0.05 * self.vault.n_entries):
                return (*exact_search(self.vault, queries, k, allowed), np.ones(B, bool))
            assert self.state is not None
            nprobe = self.state.nprobe
            if allowed is not None and n_allowed < self.vault.n_entries:  # probe wider when the mask thins lists
                nprobe = min(nprobe * max(1, int(round(self.vault.n_entries / n_allowed))), 8 * nprobe)
            sims, ids, top = self._ann(self.index, queries, k, nprobe, self.state.k_factor, allowed)
            distrust = (ids >= 0).sum(axis=1) < min(k, n_allowed)
            if self.state.guard is not None:
                distrust |= top < self.state.guard
            if distrust.any():
                rows = np.flatnonzero(distrust)
                sims[rows], ids[rows] = exact_search(self.vault, queries[rows], k, allowed)
                self.exact_answers += len(rows)
            return sims, ids, distrust

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec, "exact": self.exact, "gpu": self._gpu}
        if self.state is not None:
            st = self.state
            d.update(nprobe=st.nprobe, reach=st.reach, k_factor=st.k_factor, guard=st.guard, recall_at_5=st.recall,
                     miss_share=st.gap_share, exact_share=st.exact_share, tuned_ms=st.tune_ms, exact_ms=st.exact_ms,
                     target_met=st.target_met, note=st.note, tuned_on=st.tuned_n, tune_queries=st.tune_queries,
                     cache=str(self.folder))
        d.update(queries=self.queries, exact_answers=self.exact_answers)
        return d


@contextlib.contextmanager
def _faiss_threads(n: int | None) -> Iterator[None]:
    """Run FAISS single-threaded for small searches: its OpenMP workers spinning after a search take
    the cores from the re-rank's tensor operations (measured: batch of 64, 0.51 -> 0.35 ms per query)."""
    if n is None:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _unit_hash(keys: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per integer key (Knuth's multiplicative hash)."""
    return ((np.asarray(keys, dtype=np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) / float(1 << 32)


def _two_level_centroids(train: np.ndarray, nlist: int) -> np.ndarray:
    """Spherical k-means in two levels (sqrt(nlist) groups, then each group split): nlist centroids.

    One level costs n * nlist * D per iteration, quadratic in nlist once n grows with it; two
    levels cost about sqrt(nlist) times less, with lists of the same quality for search.
    """
    from faiss.contrib.clustering import two_level_clustering

    centroids, _ = two_level_clustering(train, int(math.sqrt(nlist)), nlist, clustering_niter=KMEANS_ITERATIONS,
                                        spherical=True)
    return np.ascontiguousarray(centroids, dtype=np.float32)


def _check_similarities(vault: "Vault", sims: np.ndarray, ids: np.ndarray) -> None:
    """Unit vectors cannot be more similar than 1: a result above it is a damaged stored vector."""
    over = np.isfinite(sims) & (sims > 1.0 + 1e-2)
    if over.any():
        from ..core.errors import VaultCorruptError

        r, c = (int(x[0]) for x in np.nonzero(over))
        raise VaultCorruptError(
            f"vault '{vault.name}': entry {int(ids[r, c])} matches with similarity {float(sims[r, c]):.4g} > 1, so its "
            "stored embedding is not unit length: a file changed after it was written; run `luna-vault verify` and "
            "restore the vault from a good copy")


def reach_from_needs(need: np.ndarray, nprobes: list[int], rate: float = REACH_RATE) -> tuple[int, np.ndarray]:
    """The smallest of `nprobes` that all but `rate` of queries are expected to need at most, from each
    tuning query's need (np.iinfo(int64).max: more than any). Returns it and the measured survival
    (share needing more than each nprobe). The survival is fitted per doubling on a log scale where
    at least three queries need more; with fewer than two such points, one doubling beyond the most seen."""
    ps = np.array(sorted(nprobes), np.float64)
    survival = np.array([np.mean(need > p) for p in ps])
    measured = survival * len(need) >= 3
    if measured.sum() >= 2:
        slope, icpt = np.polyfit(np.log2(ps[measured]), np.log(survival[measured]), 1)
        if slope >= 0:  # not falling: the widest setting
            return int(ps[-1]), survival
        target = 2 ** ((math.log(rate) - icpt) / slope)
        return next((int(p) for p in ps if p >= target), int(ps[-1])), survival
    finite = need < np.iinfo(np.int64).max
    seen = int(need[finite].max()) if finite.all() and len(need) else int(ps[-1])
    return min(2 * seen, int(ps[-1])), survival


def _ivf_of(faiss: Any, index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


class _compact_quantizer:
    """While saving: hold an IVF's flat coarse quantizer as fp16 (half the bytes on disk, same ranking)."""

    def __init__(self, faiss: Any, index: Any) -> None:
        self.faiss, self.ivf, self.saved = faiss, _ivf_of(faiss, index), None

    def __enter__(self) -> None:
        faiss, ivf = self.faiss, self.ivf
        if ivf is None or not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
            return
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        small = faiss.IndexScalarQuantizer(ivf.d, faiss.ScalarQuantizer.QT_fp16, ivf.quantizer.metric_type)
        small.add(centroids)
        self.saved = _swap_quantizer(ivf, small)

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            _swap_quantizer(self.ivf, self.saved)


def _expand_quantizer(faiss: Any, index: Any) -> Any:
    """After loading: turn an fp16 coarse quantizer back into a flat float32 one (BLAS for batches)."""
    ivf = _ivf_of(faiss, index)
    if ivf is not None:
        q = faiss.downcast_index(ivf.quantizer)
        if isinstance(q, faiss.IndexScalarQuantizer) and q.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
            flat = faiss.IndexFlat(ivf.d, q.metric_type)
            flat.add(q.reconstruct_n(0, q.ntotal))
            _swap_quantizer(ivf, flat)
    return index


def _swap_quantizer(ivf: Any, new: Any) -> Any:
    """Give `new` to the IVF index (which then owns it); return the old quantizer, now owned by Python."""
    old = ivf.quantizer
    new.this.disown()
    ivf.quantizer = new
    old.this.acquire()
    return old


def recall_per_query(got: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[B] share of each row's true ids (>= 0) that were returned."""
    out = np.empty(len(truth), np.float64)
    for r, (g, t) in enumerate(zip(got, truth)):
        t = set(t[t >= 0].tolist())
        out[r] = len(t & set(g[g >= 0].tolist())) / max(len(t), 1)
    return out


def similarity_gap(exact_sims: np.ndarray, got_sims: np.ndarray) -> np.ndarray:
    """[B] exact mean top-k similarity minus returned mean top-k similarity (a missing result counts as -1).

    Recall says how many of the true top-k came back; the gap says how much worse what came back
    is. A near-tie swapped for its neighbour costs recall but no gap; an unrelated match in place
    of a close one is a large gap. GAP_LIMIT marks a query as missed.
    """
    want = np.where(np.isfinite(exact_sims), exact_sims, np.nan)
    valid = np.isfinite(want)
    got = np.where(np.isfinite(got_sims), got_sims, -1.0)
    n = np.maximum(valid.sum(axis=1), 1)
    return (np.nansum(want, axis=1) - np.where(valid, got[:, : want.shape[1]], 0).sum(axis=1)) / n


def rerank(vault: "Vault", queries: np.ndarray, cand: np.ndarray, k: int, allowed: np.ndarray | None = None,
           max_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate ids (-1 = none); keep the best k.

    Candidates outside `allowed` are dropped here too, whatever the index did with the mask.
    Few, large tensor operations (at most `max_rows` gathered rows at a time): each small op costs
    thread wake-ups, which collide with FAISS's own OpenMP threads still spinning after a search.
    """
    import torch

    if allowed is not None:
        cand = np.where((cand >= 0) & allowed[np.maximum(cand, 0)], cand, -1)
    B, C = cand.shape
    kk = min(k, C)
    if B == 1:  # the common single-crop query: fewest possible array operations, all in numpy's BLAS
        ids = cand[0][cand[0] >= 0]  # (a torch op here would wake its own thread pool while BLAS's still spins)
        sims = vault.embeddings(ids).astype(np.float32) @ np.asarray(queries[0], dtype=np.float32)
        order = np.argsort(-sims, kind="stable")[:k]
        out_s, out_i = sims[order][None].astype(np.float32), ids[order][None]
        _check_similarities(vault, out_s, out_i)
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
    _check_similarities(vault, top_s, top_i)
    return _pad(top_s, top_i, k)


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
    _check_similarities(vault, out_s, out_i)
    return _pad(out_s, out_i, k)


def _pad(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if sims.shape[1] >= k:
        return sims, ids
    B, short = sims.shape[0], k - sims.shape[1]
    return (np.concatenate([sims, np.full((B, short), -np.inf, np.float32)], axis=1),
            np.concatenate([ids, np.full((B, short), -1, np.int64)], axis=1))
