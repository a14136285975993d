"""Whether one query's long scan is split between threads, decided by how the last splits went.

On large CLIP-like vaults most of a query is the fast-scan of its lists' PQ codes, on one thread.
FAISS can split one query's lists between its OpenMP threads (its fast-scan implementations 14 and
15): measured on 2 idle cores, scan alone, p50 1.36 -> 0.78 ms at 1M CLIP-shaped entries and 14.1
-> 7.7 ms at 10M. But its threads meet at a barrier, so when other processes hold the cores a split
waits for a thread that has none: with two busy processes beside a 500k vault, always splitting took
the p90 from 6.9 to 31 ms (a split that waits costs ~20 ms; one that pays saves ~0.3). So a split is
not tried while more threads are runnable than there are cores (`cores_taken`), and only while it
pays: each query times its scan against the time per code of recent unsplit scans; a split that
takes SLOWER times that or more (the cores got busy between two reads) stops splitting for the next
`backoff` long scans; the backoff doubles each time that happens again and halves after a split
that pays (BACKOFF_MIN to BACKOFF_MAX). The time per code varies between queries (list sizes,
caches): at 1.0 a tenth of the splits on an idle machine at 10M counted as not paying, at 1.5 one in
250. Short scans, batches, and callers that allow FAISS one thread (faiss.omp_set_num_threads(1))
are never split.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, ContextManager, Iterator

from .faiss_calls import faiss_threads

SPLIT_MIN_CODES = 8192  # shorter scans (~0.15 ms) gain less than waking a thread costs
SLOWER = 1.5  # a split at this many times one thread's time per code or more did not pay (idle: ~0.6x)
BACKOFF_MIN, BACKOFF_MAX = 16, 1024  # long scans left unsplit after a split that did not pay
EMA = 0.1  # weight of the newest unsplit scan in the time per code
_UNSPLIT = contextlib.nullcontext()  # what `scan` returns for scans it never splits (no generator per query)


def cores_taken(loadavg: Path = Path("/proc/loadavg")) -> bool:
    """Whether more threads are runnable now than this process has cores (Linux's /proc/loadavg, ~10 us to read):
    then a split would wait at FAISS's barrier for a core. One runnable thread per core is allowed, since this
    query's own thread and FAISS's idle workers still spinning after the last split count among them. False where
    it cannot be read (then the timing alone decides)."""
    try:
        running = int(loadavg.read_bytes().split()[3].split(b"/")[0])
        return running > len(os.sched_getaffinity(0))
    except (OSError, ValueError, IndexError, AttributeError):
        return False


class SplitScans:
    """Splits one query's fast-scan between FAISS's threads while that pays (see the module docstring)."""

    def __init__(self) -> None:
        self.per_code = 0.0  # seconds per code of recent long unsplit scans (0: none yet)
        self.backoff = BACKOFF_MIN
        self.unsplit_left = 0  # long scans to run on one thread before the next try
        self.splits = self.splits_slow = 0

    def scan(self, faiss: Any, index: Any, B: int, k: int, codes: float, threads: int) -> ContextManager[None]:
        """Around one search_preassigned of `B` queries for `k` results over `codes` codes (estimated), with `threads`
        the FAISS threads the caller allows: splits it when it should, and learns from its time."""
        if B != 1 or codes < SPLIT_MIN_CODES or threads < 2 or not isinstance(index, faiss.IndexIVFFastScan):
            return _UNSPLIT
        return self._long_scan(faiss, index, k, codes, threads)

    @contextlib.contextmanager
    def _long_scan(self, faiss: Any, index: Any, k: int, codes: float, threads: int) -> Iterator[None]:
        split = self.per_code > 0 and self.unsplit_left == 0 and not cores_taken()
        if not split:
            self.unsplit_left = max(0, self.unsplit_left - 1)
        t = time.perf_counter()
        if split:
            before = index.implem
            index.implem = 14 if k <= 20 else 15  # 15: the reservoir variant, which FAISS picks above 20 results
            try:
                with faiss_threads(threads):
                    yield
            finally:
                index.implem = before
        else:
            yield
        self._learn(codes, time.perf_counter() - t, split)

    def _learn(self, codes: float, seconds: float, split: bool) -> None:
        per = seconds / codes
        if not split:
            self.per_code = per if self.per_code == 0 else (1 - EMA) * self.per_code + EMA * per
            return
        self.splits += 1
        if per > SLOWER * self.per_code:
            self.splits_slow += 1
            self.unsplit_left = self.backoff
            self.backoff = min(2 * self.backoff, BACKOFF_MAX)
        else:  # one split that pays on a busy machine is luck: the backoff comes down one step at a time
            self.backoff = max(BACKOFF_MIN, self.backoff // 2)
