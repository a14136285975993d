"""VaultIndex: one opened vault's search structure, loaded from this machine's cache or built and tuned, then searched."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from filelock import FileLock

from ..entries import check_unit_block
from ..manifest import check_index_spec
from ..segment import prefetch
from . import state as state_mod
from .choice import choose_index
from .exact import exact_search, rerank
from .gpu import gpu_available, to_gpu
from .queries import TUNE_K
from .state import IndexState, content_digest, default_cache_dir, index_cache_folder, ivf_of, read_state
from .train import train
from .tune import LATENCY_BUDGET_MS, RECALL_TARGET, tune

if TYPE_CHECKING:
    from ..store import Vault

log = logging.getLogger(__name__)

EXACT_SUBSET_MAX = 32_768
ProgressFn = Callable[[int, int], None]


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
        self.gpu = False
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
        if not self._finds_itself(index):
            log.warning("the cached index at %s does not find the vault's own entries; rebuilding", self.folder)
            self.state = None
            return None
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
        sims, got, _ = self.ann(index, q, 1, self.state.nprobe, self.state.k_factor, None)
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
        self.state = IndexState(spec=self.spec, vault_path=str(vault.path.resolve()), trained_n=vault.n_entries,
                                train_share=share, built_at=time.time(), vault_id=vault.manifest.vault_id)
        self._extend(index, progress, tune_after=False)
        self._prefetch.join()
        tune(self, index)
        state_mod.save(self.folder, index, self.state)
        log.info("built %s for %d entries in %.1f s", self.spec, index.ntotal, time.perf_counter() - t0)
        return index

    def _extend(self, index: Any, progress: ProgressFn | None, tune_after: bool = True) -> None:
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
        self.state.covered_digest = content_digest(self.vault, index.ntotal)
        if tune_after and done:
            if index.ntotal > 1.25 * max(self.state.tuned_n, 1):
                self._prefetch.join()
                tune(self, index)
            state_mod.save(self.folder, index, self.state)

    def _maybe_gpu(self, index: Any) -> Any:
        out = to_gpu(index, self.spec)
        if out is None:
            return index
        import faiss

        if ivf_of(faiss, index) is not None:
            self.coarse_centroids(index)  # the guard needs centroid scores; GPU indexes do not hand them out
        self.gpu = True
        return out

    # ---- searching -----------------------------------------------------------------------------
    def ann(self, index: Any, queries: np.ndarray, k: int, nprobe: int, k_factor: int,
            allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Approximate top-k, re-ranked exactly: (sims [B, k], ids [B, k], best centroid score [B])."""
        import faiss

        B = len(queries)
        # candidates were tuned for TUNE_K results; a smaller k must not shrink the pool
        kk = min(max(k, TUNE_K) * k_factor, index.ntotal)
        top = np.full(B, np.inf, np.float32)
        bits = np.packbits(allowed, bitorder="little") if allowed is not None else None
        if self.gpu:
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
            coarse_s, coarse_i = self.coarse(index, queries, nprobe)
            dist = np.empty((B, kk), np.float32)
            cand = np.empty((B, kk), np.int64)
            with _faiss_threads(1 if B <= 256 else None):
                index.search_preassigned_c(B, faiss.swig_ptr(queries), kk, faiss.swig_ptr(coarse_i),
                                           faiss.swig_ptr(coarse_s), faiss.swig_ptr(dist), faiss.swig_ptr(cand), False,
                                           params)
            top = coarse_s[:, 0].copy()
        else:  # a custom factory string (pre-transforms, other index types): plain search, no guard
            params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else faiss.SearchParameters()
            if bits is not None:
                params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            _, cand = index.search(queries, kk, params=params)
        sims, ids = rerank(self.vault, queries, cand, k, allowed)
        return sims, ids, top

    def coarse(self, index: Any, queries: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The nprobe best lists per query, best first: (scores [B, nprobe] float32, list ids [B, nprobe] int64).

        One BLAS product with the centroids: faster than FAISS's own flat search below its BLAS
        threshold (20 queries), where a detailer's few crops always are.
        """
        centroids = self.coarse_centroids(index)
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

    def coarse_centroids(self, index: Any) -> np.ndarray:
        if self._centroids is None:
            import faiss

            ivf = ivf_of(faiss, index)
            self._centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)
        return self._centroids

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
            nprobe = self.state.nprobe
            if allowed is not None and n_allowed < self.vault.n_entries:  # probe wider when the mask thins lists
                nprobe = min(nprobe * max(1, int(round(self.vault.n_entries / n_allowed))), 8 * nprobe)
            sims, ids, top = self.ann(self.index, queries, k, nprobe, self.state.k_factor, allowed)
            distrust = (ids >= 0).sum(axis=1) < min(k, n_allowed)
            if self.state.guard is not None:
                distrust |= top < self.state.guard
            if distrust.any():
                rows = np.flatnonzero(distrust)
                sims[rows], ids[rows] = exact_search(self.vault, queries[rows], k, allowed)
                self.exact_answers += len(rows)
            return sims, ids, distrust

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec, "exact": self.exact, "gpu": self.gpu}
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
