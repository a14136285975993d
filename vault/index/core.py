"""VaultIndex: one opened vault's search structure, loaded from this machine's cache or built and tuned, then searched."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from filelock import FileLock

from ...core.errors import VaultCorruptError
from ..entries import check_unit_block
from ..manifest import check_index_spec
from ..segment import prefetch, read_rows_only
from . import outliers as outliers_mod
from . import state as state_mod
from .assign import assigning
from .choice import choose_index
from .coarse import Coarse, ProbeRule, Probes, fast_pass
from .exact import exact_search, rerank
from .faiss_calls import faiss_threads, search
from .gpu import gpu_available, to_gpu
from .queries import TUNE_K
from .reach import REACH_RATE, list_of_entries
from .siblings import Siblings
from .split import SplitScans
from .state import IndexState, content_digest, default_cache_dir, index_cache_folder, ivf_of, read_state
from .train import train
from .tune import RECALL_TARGET, drift, tune

if TYPE_CHECKING:
    from ..store import Vault

log = logging.getLogger(__name__)

EXACT_SUBSET_MAX = 32_768
PREFETCH_SHARE = 0.25  # map the stored vectors ahead only while they fit in this share of the machine's memory
ProgressFn = Callable[[int, int], None]


class VaultIndex:
    """Search structure of one opened vault (exact or IVF-PQ + re-rank + guard), shared by all its queries."""

    def __init__(self, vault: "Vault", spec: str | None = None, cache_dir: Path | None = None,
                 recall_target: float = RECALL_TARGET, progress: ProgressFn | None = None) -> None:
        self.vault = vault
        self.requested = check_index_spec(spec or vault.manifest.index or "auto", vault.dim)
        self.spec = choose_index(vault.n_entries, vault.dim) if self.requested == "auto" else self.requested
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.recall_target = recall_target
        self.state: IndexState | None = None
        self.queries = 0  # queries answered (since this process opened the index)
        self.exact_answers = 0  # of which the guard answered exactly
        self.split = SplitScans()  # whether one query's long scan is split between threads (split.py)
        self._lock = threading.Lock()
        self.gpu = False
        self.coarse: Coarse | None = None  # the coarse step (IVF indexes): which lists each query probes
        self.siblings: Siblings | None = None  # entries by prompt: re-ranked along with the best matches
        self.outliers: Any | None = None  # entries no list represents, searched for every query (outliers.py)
        if not self.exact:  # map the stored vectors now (in the background) so re-ranking never page-faults
            self._prefetch = threading.Thread(target=self._prefetch_embeddings, daemon=True)
            self._prefetch.start()
        self.index = self._load(progress)

    @property
    def rows_in_memory(self) -> bool:
        """Whether the stored vectors are mapped ahead (PREFETCH_SHARE): else each re-ranked row may be a disk read."""
        return sum(seg.embeddings.nbytes for seg in self.vault.segments) <= PREFETCH_SHARE * _physical_memory()

    def _prefetch_embeddings(self) -> None:
        """Map the stored vectors' pages ahead (re-ranking then never waits for a page fault), unless they would
        take more than PREFETCH_SHARE of memory: a 10M-entry vault's 20 GB stay on disk, read as queries need them."""
        if not self.rows_in_memory:
            log.info("not mapping %.1f GB of stored vectors ahead (more than %.0f%% of memory)",
                     sum(seg.embeddings.nbytes for seg in self.vault.segments) / 1e9, 100 * PREFETCH_SHARE)
            for seg in self.vault.segments:
                read_rows_only(seg.embeddings)  # what is still read through the mapping skips read-ahead
                try:
                    seg.read_rows_from_file()  # re-ranked rows: pread, so they never stay in this process's memory
                except VaultCorruptError as e:  # the mapping still holds the file the vault opened: read through it
                    log.warning("%s; reading its rows through the mapping", e)
            return
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
        self.siblings = Siblings.of_vault(self.vault)
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
        state = read_state(self.folder, self.vault)
        if (state is None or state.spec != self.spec or state.vault_id != self.vault.manifest.vault_id
                or state.ntotal > self.vault.n_entries
                or state.covered_digest != content_digest(self.vault, state.ntotal)):
            return None
        grown = self.vault.n_entries > 4 * max(state.trained_n, 1) and self.requested == "auto"
        if grown:
            return None
        try:
            index = state_mod.load(self.folder)
        except RuntimeError as e:
            log.warning("cached index for %s unreadable (%s); rebuilding", self.vault.path, e)
            return None
        if index.ntotal != state.ntotal or index.d != self.vault.dim:
            return None
        self.state = state
        self.coarse, remade = state_mod.load_coarse(self.folder, index, state)
        if not self._finds_itself(index):
            log.warning("the cached index at %s does not find the vault's own entries; rebuilding", self.folder)
            self.state, self.coarse = None, None
            return None
        made = self._load_outliers(faiss, index)
        if remade or made:
            self._record_at_open(remade, made)
        if state.ntotal < self.vault.n_entries:
            self.folder.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.folder / "build.lock")):
                fresh = read_state(self.folder, self.vault)
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
        sims, got, _ = self.ann(index, q, 1, self.rule, self.state.k_factor, None)
        return float(np.mean((got[:, 0] == ids) | (sims[:, 0] > 0.999))) >= 0.75

    def _build_flat(self, faiss: Any) -> Any:
        d = self.vault.dim
        if gpu_available():
            index = faiss.IndexFlatIP(d)
            for _, block in self.vault.iter_embedding_blocks():
                index.add(np.asarray(block, dtype=np.float32))
            on_gpu = to_gpu(index, "Flat")
            self.gpu = on_gpu is not None
            return on_gpu if on_gpu is not None else index
        # fp16 scalar quantizer: its codes are exactly our stored fp16 bytes, so no conversion
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        for _, block in self.vault.iter_embedding_blocks():
            index.add_sa_codes(np.ascontiguousarray(block).view(np.uint8))
        return index

    def _build_ivf(self, faiss: Any, progress: ProgressFn | None) -> Any:
        vault = self.vault
        t0 = time.perf_counter()
        index = faiss.index_factory(vault.dim, self.spec, faiss.METRIC_INNER_PRODUCT)
        share = train(faiss, index, vault, self.spec)
        ivf = ivf_of(faiss, index)
        if ivf is not None:
            centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
            self.coarse = Coarse(centroids, fast_pass(centroids))
        self.state = IndexState(spec=self.spec, vault_path=str(vault.path.resolve()), trained_n=vault.n_entries,
                                train_share=share, built_at=time.time(), vault_id=vault.manifest.vault_id)
        self._extend(index, progress, tune_after=False)
        self._prefetch.join()
        self._pick_outliers(faiss, index)
        tune(self, index)
        state_mod.save(self.folder, index, self.state, self.coarse, self.outliers)
        log.info("built %s for %d entries in %.1f s", self.spec, index.ntotal, time.perf_counter() - t0)
        return index

    def _extend(self, index: Any, progress: ProgressFn | None, tune_after: bool = True) -> None:
        """Add the entries the index does not cover yet (all of them for a fresh index), checking each
        vector is unit length as it is read (a damaged file is refused here, not searched)."""
        assert self.state is not None
        import faiss

        start, stop = index.ntotal, self.vault.n_entries
        done = 0
        with assigning(faiss, index, stop - start):
            for first, block in self.vault.iter_embedding_blocks(start=start):
                block = np.asarray(block[max(0, start - first):], dtype=np.float32)
                check_unit_block(self.vault.name, block, max(first, start))
                index.add(block)
                done += len(block)
                if progress:
                    progress(done, stop - start)
        self.state.ntotal = index.ntotal
        self.state.vault_id = self.vault.manifest.vault_id
        self.state.covered_digest = content_digest(self.vault, index.ntotal)
        if tune_after and done:
            self._prefetch.join()
            self._pick_outliers(faiss, index)
            if self._needs_tuning(index):
                tune(self, index)
            state_mod.save(self.folder, index, self.state, self.coarse, self.outliers)

    def _pick_outliers(self, faiss: Any, index: Any) -> None:
        """Choose the entries no list represents (outliers.py) and index them; records their ids in the state."""
        assert self.state is not None
        ivf = ivf_of(faiss, index)
        if self.coarse is None or ivf is None or not outliers_mod.supported(faiss, index):
            self.state.outliers, self.outliers = [], None
            return
        list_of = list_of_entries(faiss, ivf, self.vault.n_entries)
        ids = outliers_mod.pick(self.vault, list_of, self.coarse.centroids)
        self.state.outliers = ids.tolist()
        self.outliers = outliers_mod.pool_index(faiss, index, self.vault, ids)

    def _load_outliers(self, faiss: Any, index: Any) -> bool:
        """The outlier pool of a cached index: from outliers.faiss, else coded from the ids its state records, else
        chosen now. True when this open made a pool the cache should keep (coded again, or chosen for a state
        written before the pool existed)."""
        assert self.state is not None
        recorded = self.state.outliers
        try:
            ids = None if recorded is None else np.asarray(recorded, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            ids = np.full(1, -1, np.int64)
        if ids is not None and len(ids) and (ids.min() < 0 or ids.max() >= index.ntotal):
            log.warning("the cached index at %s lists outlier ids it does not hold; choosing them again", self.folder)
            ids = None
        if ids is not None and outliers_mod.supported(faiss, index):
            self.outliers = state_mod.load_pool(self.folder, index, ids) if len(ids) else None
            if self.outliers is None and len(ids):  # no file, or one written for another state: code them again
                self.outliers = outliers_mod.pool_index(faiss, index, self.vault, ids)
                return True
            return False
        self._pick_outliers(faiss, index)
        return recorded is None and bool(self.state.outliers)

    def _record_at_open(self, coarse: bool, pool: bool) -> None:
        """Keep in the cache what this open had to make (the coarse fast pass; the outlier pool, and its ids for a
        state from before it), so the next open reads it: under the build lock, unless another process changed
        the state."""
        assert self.state is not None and self.coarse is not None
        try:
            with FileLock(str(self.folder / "build.lock")):
                fresh = read_state(self.folder, self.vault)
                if fresh is None or fresh.built_at != self.state.built_at or fresh.ntotal != self.state.ntotal:
                    return
                if coarse:
                    state_mod.save_coarse(self.folder, self.coarse, fresh)
                if pool:
                    if fresh.outliers is None:
                        fresh.outliers = self.state.outliers
                    if fresh.outliers == self.state.outliers and self.outliers is not None:
                        state_mod.save_pool(self.folder, self.outliers)
                state_mod.save_state(self.folder, fresh)
        except OSError as e:
            log.info("could not record the index's side files in %s (%s)", self.folder, e)

    def _needs_tuning(self, index: Any) -> bool:
        """After an append: tune again when the index grew by a quarter since tuning, or when the tuned rule is
        expected to miss the neighbourhoods of more than REACH_RATE of queries like the appended entries."""
        assert self.state is not None
        st = self.state
        drifted = False
        if self.coarse is not None and not self.gpu and st.tuned_n < index.ntotal:  # measured also when grown: `advice`
            rate, _, reach = drift(self, index, st.tuned_n)
            drifted = rate > REACH_RATE
            if st.drift_rate is None or rate >= st.drift_rate:  # a later clean append leaves the wide rule, and `advice`
                st.drift_rate, st.drift_reach = rate, reach
        return drifted or index.ntotal > 1.25 * max(st.tuned_n, 1)

    def _maybe_gpu(self, index: Any) -> Any:
        out = to_gpu(index, self.spec)
        if out is None:
            return index
        import faiss

        ivf = ivf_of(faiss, index)
        if ivf is not None and self.coarse is None:  # the guard needs centroid scores; GPU indexes do not hand them out
            self.coarse = Coarse(ivf.quantizer.reconstruct_n(0, ivf.nlist))
        self.gpu = True
        return out

    # ---- searching -----------------------------------------------------------------------------
    @property
    def rule(self) -> ProbeRule:
        """The tuned probing rule (see coarse.ProbeRule)."""
        assert self.state is not None
        st = self.state
        far = st.far_floor if st.far_score is not None else 0
        return ProbeRule(st.nprobe, st.drop, st.max_probe, far, st.far_score if far else -math.inf)

    def ann(self, index: Any, queries: np.ndarray, k: int, rule: ProbeRule, k_factor: int,
            allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Approximate top-k, re-ranked exactly: (sims [B, k], ids [B, k], best centroid score [B])."""
        kq = max(k, TUNE_K)  # candidates were tuned for TUNE_K results; a smaller k must not shrink the pool
        cand, top, _ = self.candidates(index, queries, kq * k_factor, rule, allowed)
        if self.siblings is not None:  # the best candidates' prompt siblings, wherever their lists are
            cand = self.siblings.expand(cand, kq)  # (sorted, each id once)
        sims, ids = rerank(self.vault, queries, cand, kq, allowed, sorted_unique=self.siblings is not None)
        return sims[:, :k], ids[:, :k], top

    def candidates(self, index: Any, queries: np.ndarray, kk: int, rule: ProbeRule, allowed: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray, Probes | None]:
        """The `kk` best candidates per query by the index's own (approximate) scores: (ids [B, kk] with -1 pads,
        best centroid score [B] (inf when the index has none), the probed lists (None: not an IVF on this CPU))."""
        import faiss

        B = len(queries)
        kk = min(kk, index.ntotal)
        top = np.full(B, np.inf, np.float32)
        bits = np.packbits(allowed, bitorder="little") if allowed is not None else None
        if self.gpu:
            if allowed is not None:  # GPU indexes take no selector: fetch more, drop the masked-out ones in rerank
                kk = min(kk * max(1, math.ceil(len(allowed) / max(int(allowed.sum()), 1))), index.ntotal, 2048)
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", rule.floor)
            _, cand = index.search(queries, kk)
            if self.coarse is not None:
                top = self.coarse.scores(queries, 1, 1)[0][:, 0]
            return cand, top, None
        if isinstance(index, faiss.IndexIVF) and self.coarse is not None:
            threads = faiss.omp_get_max_threads()  # what the caller allows: faiss_threads holds FAISS to one below
            with faiss_threads(1 if B <= 256 else None):
                probes = self.coarse.probes(queries, rule)
                params = faiss.SearchParametersIVF(nprobe=probes.lists.shape[1])
                if bits is not None:
                    params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
                dist = np.empty((B, kk), np.float32)
                cand = np.empty((B, kk), np.int64)
                lists, scores = np.ascontiguousarray(probes.lists), np.ascontiguousarray(probes.scores)
                codes = float(probes.count.sum()) * index.ntotal / max(index.nlist, 1)
                with self.split.scan(faiss, index, B, kk, codes, threads):
                    index.search_preassigned_c(B, faiss.swig_ptr(queries), kk, faiss.swig_ptr(lists),
                                               faiss.swig_ptr(scores), faiss.swig_ptr(dist), faiss.swig_ptr(cand), False,
                                               params)
                if self.outliers is not None:  # entries no list represents: ranked with the lists' candidates
                    pool_dist, pool_ids = search(self.outliers, queries, min(kk, outliers_mod.POOL_K, self.outliers.ntotal))
                    if allowed is not None:  # a fast-scan index takes no selector
                        pool_ids = np.where((pool_ids >= 0) & allowed[np.maximum(pool_ids, 0)], pool_ids, -1)
                    cand = outliers_mod.merge(dist, cand, pool_dist, pool_ids, kk)
            return cand, probes.top, probes
        # a custom factory string (pre-transforms, other index types): plain search, no guard
        params = faiss.SearchParametersIVF(nprobe=rule.floor) if ivf_of(faiss, index) is not None else faiss.SearchParameters()
        if bits is not None:
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        _, cand = index.search(queries, kk, params=params)
        return cand, top, None

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities [B, k] float32, ids [B, k] int64) by inner product; -1 ids pad short rows.

        `allowed` is a boolean mask over entry ids (deleted entries and filters). A selective mask is
        answered by exact search over the allowed rows; otherwise the index searches with the mask.
        Queries the guard does not trust (see tune.py), or that come back with fewer results than
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
                if allowed is not None and self.gpu:
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
            rule = self.rule
            if allowed is not None and n_allowed < self.vault.n_entries:  # probe wider when the mask thins lists
                wider = min(max(1, int(round(self.vault.n_entries / n_allowed))), 8)
                rule = replace(rule, floor=rule.floor * wider, cap=rule.cap * wider, far_floor=rule.far_floor * wider)
            sims, ids, top = self.ann(self.index, queries, k, rule, self.state.k_factor, allowed)
            distrust = (ids >= 0).sum(axis=1) < min(k, n_allowed)
            if self.state.guard is not None:
                distrust |= top < self.state.guard
            if distrust.any():
                rows = np.flatnonzero(distrust)
                sims[rows], ids[rows] = exact_search(self.vault, queries[rows], k, allowed)
                self.exact_answers += len(rows)
            return sims, ids, distrust

    @property
    def advice(self) -> str:
        """What would make queries faster, in a line ("" when nothing): entries appended from regions the partition
        never trained on spread over many lists, and the re-tune that reaches them probes more lists for every query."""
        st = self.state
        if st is None or st.drift_rate is None or st.drift_rate <= REACH_RATE or st.trained_n >= st.ntotal:
            return ""
        return (f"{st.ntotal - st.trained_n:,} entries appended since the partition was trained (on {st.trained_n:,}) spread "
                f"over many of its lists, so the append tuned the index again to reach them: queries now probe "
                f"{self.rule.summary()} (~{st.mean_probe:.0f} on average). `luna-vault rebuild` trains a new partition "
                f"that includes them, for faster queries near them")

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec, "exact": self.exact, "gpu": self.gpu}
        if self.state is not None:
            st = self.state
            d.update(nprobe=st.nprobe, drop=st.drop, max_probe=st.max_probe, far_floor=st.far_floor, far_score=st.far_score, mean_probe=st.mean_probe, reach=st.reach, k_factor=st.k_factor, guard=st.guard, recall_at_5=st.recall,
                     miss_share=st.gap_share, exact_share=st.exact_share, tuned_ms=st.tune_ms, exact_ms=st.exact_ms,
                     target_met=st.target_met, note=st.note, tuned_on=st.tuned_n, tune_queries=st.tune_queries,
                     outliers=len(st.outliers or []), advice=self.advice, cache=str(self.folder))
        d.update(queries=self.queries, exact_answers=self.exact_answers)
        return d


def _physical_memory() -> int:
    """Bytes of memory this machine has (4 GiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 4 << 30

