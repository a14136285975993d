"""The vault's FAISS index: chosen by size, tuned on queries that are not stored vectors, guarded at query time.

Rule (like autofaiss, but the vectors are never stored twice):
- up to FLAT_MAX entries: exact inner-product search over the stored fp16 vectors, built in memory
  at open (no file);
- above: IVF over about LIST_SIZE entries per list with 4-bit fast-scan PQ codes (D/4 bytes per
  entry); a coarse step (coarse.py) that scores the centroids with fast-scan codes and re-scores the
  best exactly, then probes per query every list within a tuned drop of its best (a floor, a cap);
  the entries least like their own list's centroid (outliers.py: a small look that k-means gave no
  list) scanned for every query as well; an exact re-rank of `k * k_factor` candidates and their
  prompt siblings (siblings.py) against the memory-mapped fp16 embeddings.

Why small lists: every natural cluster of the data should own a centroid; a cluster smaller than a
list shares one with others and its members scatter over lists that no query of it probes. Why an
exact re-score of the best centroids: an HNSW graph over the centroids (an earlier choice) walks
greedily and, when centroids are nearly equidistant, stops in the wrong region whatever nprobe says.

The probing rule, `k_factor` and a query-time guard are tuned together (tune.py) on four query sets
that are not stored vectors (queries.py), scored by counts, not timings; no rule may miss the
tuning queries' neighbourhoods more often than REACH_RATE, extrapolated (reach.py); the guard
(guard.py) answers a query whose best centroid score is as low as where tuning saw poor answers by
exact search instead (exact.py), and counts it. Every returned similarity is exact.

A FAISS binary is only ever loaded from this machine's cache (state.py). Appends add only the new
entries to a cached index. One process builds or extends an index at a time (a lock in the cache
folder): the others wait, then load it. Any FAISS factory string of the allowed families can be
given instead of "auto" (inner-product metric).

Modules: choice (which index), state (the cache files), train (the partition), assign (entries to
lists), queries (tuning queries), coarse (which lists a query probes), split (one query's scan on
several threads while that pays), outliers, siblings, reach, guard, tune, exact (brute force and
re-rank), measure (recall, gap), gpu, core (VaultIndex: load or build, then search).
"""

from .choice import FLAT_MAX, choose_index, pq_subquantizers
from .core import EXACT_SUBSET_MAX, VaultIndex
from .exact import exact_search, rerank
from .gpu import gpu_available
from .measure import GAP_LIMIT, recall_per_query, similarity_gap
from .reach import reach_from_needs
from .state import IndexState, default_cache_dir, index_cache_folder
from .tune import RECALL_TARGET

__all__ = [
    "EXACT_SUBSET_MAX", "FLAT_MAX", "GAP_LIMIT", "IndexState", "RECALL_TARGET", "VaultIndex",
    "choose_index", "default_cache_dir", "exact_search", "gpu_available", "index_cache_folder", "pq_subquantizers",
    "reach_from_needs", "recall_per_query", "rerank", "similarity_gap",
]
