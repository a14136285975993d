"""One query's long scan split between FAISS's threads (vault/index/split.py): only when it should be, only while it
pays, with FAISS's settings restored, and with the same answers as one thread."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from helpers import clustered, ivf_queries, ivf_vault
from luna_vault.vault import Vault
from luna_vault.vault.index import split as split_mod
from luna_vault.vault.index.split import BACKOFF_MIN, SplitScans, cores_taken

D = 32


@pytest.fixture()
def faiss_two_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """FAISS allowed two threads, and the machine's other work ignored (see test_cores_taken_...)."""
    import faiss

    monkeypatch.setattr(split_mod, "cores_taken", lambda: False)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    yield faiss
    faiss.omp_set_num_threads(before)


def _fast_scan_index(faiss: object) -> object:
    x = clustered(2000, D, seed=1)
    index = faiss.index_factory(D, "IVF8,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    return index


def test_a_long_single_query_scan_is_split_once_one_thread_was_timed_and_faiss_is_left_as_it_was(
        faiss_two_threads: object) -> None:
    faiss = faiss_two_threads
    index = _fast_scan_index(faiss)
    s = SplitScans()
    faiss.omp_set_num_threads(1)  # the search holds FAISS to one thread around the scan; the caller allowed 2
    with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):
        assert index.implem == 0 and faiss.omp_get_max_threads() == 1  # no time per code yet: one thread first
    assert s.per_code > 0 and s.splits == 0
    s.per_code = 1.0  # as if one thread took a second per code: every split pays
    with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):
        assert index.implem == 15 and faiss.omp_get_max_threads() == 2  # above 20 results: the reservoir variant
    with s.scan(faiss, index, 1, 20, codes=1e6, threads=2):
        assert index.implem == 14 and faiss.omp_get_max_threads() == 2
    assert index.implem == 0 and faiss.omp_get_max_threads() == 1 and s.splits == 2 and s.splits_slow == 0
    flat = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, 8, faiss.METRIC_INNER_PRODUCT)
    for B, codes, threads, ix in ((2, 1e6, 2, index), (1, split_mod.SPLIT_MIN_CODES - 1, 2, index), (1, 1e6, 1, index),
                                  (1, 1e6, 2, flat)):  # a batch, a short scan, one thread allowed, not a fast-scan
        with s.scan(faiss, ix, B, 50, codes=codes, threads=threads):
            assert getattr(ix, "implem", 0) == 0 and faiss.omp_get_max_threads() == 1
    assert s.splits == 2


def test_no_split_is_tried_while_more_threads_are_runnable_than_there_are_cores(
        faiss_two_threads: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    loadavg = tmp_path / "loadavg"
    for running, taken in ((cores + 1, True), (cores, False), (1, False)):
        loadavg.write_text(f"0.52 1.20 1.61 {running}/86 519\n")
        assert cores_taken(loadavg) is taken
    for bad in ("", "0.52 1.20 1.61 x/86 519", "0.52"):
        loadavg.write_text(bad)
        assert cores_taken(loadavg) is False  # unreadable: the timing alone decides
    assert cores_taken(tmp_path / "missing") is False
    faiss = faiss_two_threads
    index = _fast_scan_index(faiss)
    s = SplitScans()
    s.per_code = 1.0  # every split would pay
    monkeypatch.setattr(split_mod, "cores_taken", lambda: True)
    with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):
        assert index.implem == 0
    monkeypatch.setattr(split_mod, "cores_taken", lambda: False)
    with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):
        assert index.implem == 15


def test_a_split_that_does_not_pay_stops_splitting_for_a_backoff_that_doubles_and_comes_down_when_splits_pay(
        faiss_two_threads: object) -> None:
    faiss = faiss_two_threads
    index = _fast_scan_index(faiss)
    s = SplitScans()
    s.per_code = 1e-12  # one thread is (as if) far faster than any split: the next split does not pay
    with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):
        assert index.implem == 15
    assert s.splits_slow == 1 and s.unsplit_left == BACKOFF_MIN and s.backoff == 2 * BACKOFF_MIN
    for _ in range(BACKOFF_MIN):
        with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):
            assert index.implem == 0
    s.per_code = 1e-12
    with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):  # tried again: still does not pay, twice as long off
        assert index.implem == 15
    assert s.unsplit_left == 2 * BACKOFF_MIN and s.backoff == 4 * BACKOFF_MIN
    s.unsplit_left, s.per_code = 0, 1.0
    with s.scan(faiss, index, 1, 50, codes=1e6, threads=2):  # pays: the backoff comes down one step
        assert index.implem == 15
    assert s.backoff == 2 * BACKOFF_MIN and s.unsplit_left == 0


def test_split_scans_give_the_same_answers_as_one_thread(tmp_path: Path, faiss_two_threads: object,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    faiss = faiss_two_threads
    ix = Vault.open(ivf_vault(tmp_path / "v.vault", d=D)).search_index()
    q = ivf_queries(40, D)
    faiss.omp_set_num_threads(1)
    want = [ix.search(q[i : i + 1], 5) for i in range(len(q))]
    assert ix.split.splits == 0
    faiss.omp_set_num_threads(2)
    monkeypatch.setattr(split_mod, "SPLIT_MIN_CODES", 0)
    ix.split.per_code = 1.0  # every split pays
    got = [ix.search(q[i : i + 1], 5) for i in range(len(q))]
    assert ix.split.splits == len(q) and faiss.omp_get_max_threads() == 2
    for (ws, wi), (gs, gi) in zip(want, got):
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_allclose(gs, ws, rtol=0, atol=1e-6)
