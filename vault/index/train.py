"""Training the partition: which entries train it (a tenth of the prompts never does), and the k-means that makes it."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .state import ivf_of

if TYPE_CHECKING:
    from ..store import Vault

log = logging.getLogger(__name__)

TRAIN_PER_LIST = 20  # k-means sample: points per centroid (at least 10,000)
TRAIN_MAX_SHARE = 0.9  # at least a tenth of the prompts never trains the partition: tuning queries come from them
KMEANS_ITERATIONS = 10


def unit_hash(keys: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per integer key (Knuth's multiplicative hash)."""
    return ((np.asarray(keys, dtype=np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) / float(1 << 32)


def train(faiss: Any, index: Any, vault: "Vault", spec: str) -> float:
    """Train `index` on a sample of the vault's live entries; returns the train share (see `untrained_mask`).

    A tenth of the prompts stays out of training, so that tuning can query a partition that never saw
    them; the sample is drawn from all the other prompts' entries (many prompts per cluster).
    """
    live = vault.live_mask()
    rng = np.random.default_rng(0)
    ivf = ivf_of(faiss, index)
    wanted = max(TRAIN_PER_LIST * (ivf.nlist if ivf is not None else 256), 10_000)
    share = TRAIN_MAX_SHARE
    pool = np.flatnonzero(live & (unit_hash(vault.all_prompt_ids()) < share))
    if len(pool) < min(wanted, int(live.sum())) // 2:  # a few prompts hold most entries: split by entry
        pool = np.flatnonzero(live & (unit_hash(np.arange(vault.n_entries)) < share))
        share = -share  # negative: the split is by entry id
    train_ids = np.sort(rng.choice(pool, wanted, replace=False)) if wanted < len(pool) else pool
    sample = vault.embeddings(train_ids).astype(np.float32)
    log.info("training %s on %d of %d vectors", spec, len(train_ids), vault.n_entries)
    if ivf is not None and ivf.nlist >= 1024 and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        ivf.quantizer.add(two_level_centroids(sample, ivf.nlist))  # then train() fits only the codes
    elif ivf is not None:
        ivf.cp.niter = KMEANS_ITERATIONS
    index.train(sample)
    return share


def untrained_mask(vault: "Vault", share: float, trained_n: int) -> np.ndarray:
    """Mask of entries that did not train the partition: held-out prompts and everything appended later."""
    keys = vault.all_prompt_ids() if share >= 0 else np.arange(vault.n_entries)
    return (unit_hash(keys) >= abs(share)) | (np.arange(vault.n_entries) >= trained_n)


def two_level_centroids(sample: np.ndarray, nlist: int) -> np.ndarray:
    """Spherical k-means in two levels (sqrt(nlist) groups, then each group split): nlist centroids.

    One level costs n * nlist * D per iteration, quadratic in nlist once n grows with it; two
    levels cost about sqrt(nlist) times less, with lists of the same quality for search.
    """
    from faiss.contrib.clustering import two_level_clustering

    # min_points_per_centroid only decides when faiss warns: ~TRAIN_PER_LIST points per list is the plan, and
    # faiss's default (39) printed one warning per group (~90 lines per build)
    centroids, _ = two_level_clustering(sample, int(math.sqrt(nlist)), nlist, clustering_niter=KMEANS_ITERATIONS,
                                        spherical=True, min_points_per_centroid=TRAIN_PER_LIST // 2)
    return np.ascontiguousarray(centroids, dtype=np.float32)
