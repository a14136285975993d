"""Which index a vault gets: exact search while small, else IVF with 4-bit fast-scan PQ codes, sized by entry count.

Lists hold about LIST_SIZE entries: on the CLIP-shaped benchmark data (bench/vault_data.py) smaller
lists need fewer entries scanned for the same recall (a neighbourhood spreads over lists either way;
small lists hold less of everything else), until the cost of each list probed (~1 us, about as much
as scanning 16 entries) and of scoring the centroids takes over. At most MAX_LISTS lists at any size:
at 10M CLIP-shaped entries, 65,536 lists (~150 entries each) made the tuner probe 13.6% of them
(p50 45-63 ms), 16,384 lists (~610 each) 8.2% (p50 17-23 ms, and a build of 21 minutes instead of 31),
with 0 misses and recall >= 0.99 both ways (docs/benchmarks.md, "1M and 10M entries").
"""

from __future__ import annotations

import math

FLAT_MAX = 20_000
LIST_SIZE = 48  # entries per IVF list the automatic choice aims at
MAX_LISTS = 16384  # the coarse step's fast pass over 16,384 x 1024-d centroids costs ~0.5 ms per query


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
    nlist = max(256, min(2 ** int(round(math.log2(n / LIST_SIZE))), MAX_LISTS))
    return f"IVF{nlist},PQ{pq_subquantizers(d)}x4fs"
