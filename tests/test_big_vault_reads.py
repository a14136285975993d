"""How a vault too big to map ahead is read: re-ranked rows with pread (never mapped), other reads on demand (MADV_RANDOM), one request per block for scans."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import ivf_queries, ivf_vault
from luna_vault.core.errors import VaultCorruptError
from luna_vault.vault import Vault, search
from luna_vault.vault import segment as segment_mod
from luna_vault.vault import store as store_mod
from luna_vault.vault.index import core as core_mod
from luna_vault.vault.index.exact import rows_of

D = 32


@pytest.fixture()
def vault_path(tmp_path: Path) -> Path:
    return ivf_vault(tmp_path / "big.vault", d=D)


def test_vectors_bigger_than_a_quarter_of_memory_are_read_row_by_row_not_mapped_ahead(
        vault_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = ivf_queries(30, D)
    want = search(Vault.open(vault_path), q, k=5)  # mapped ahead: 1.5 MB of vectors, far below a quarter of memory
    advised, ahead = [], []
    monkeypatch.setattr(core_mod, "_physical_memory", lambda: 1 << 20)  # as if the machine had 1 MB
    monkeypatch.setattr(core_mod, "read_rows_only", lambda a: advised.append(a.shape))
    monkeypatch.setattr(core_mod, "prefetch", lambda a: ahead.append(a.shape))
    vault = Vault.open(vault_path)
    ix = vault.search_index()
    ix._prefetch.join()
    assert advised == [seg.embeddings.shape for seg in vault.segments] and ahead == []
    got = search(vault, q, k=5)
    assert [r.ids.tolist() for r in got] == [r.ids.tolist() for r in want]


def test_a_scan_reads_each_block_in_one_request(vault_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Vault.open(vault_path)
    asked = []
    monkeypatch.setattr(store_mod, "prefetch", lambda a: asked.append(len(a)))
    firsts = [first for first, _ in vault.iter_embedding_blocks(block=10000)]
    assert firsts == [0, 10000, 20000] and asked == [10000, 10000, 4000]
    asked.clear()  # from an entry on (an append's new entries): the blocks before it are never read
    assert [first for first, _ in vault.iter_embedding_blocks(block=10000, start=15000)] == [10000, 20000]
    assert asked == [10000, 4000]


def test_rows_of_a_vault_too_big_to_map_are_read_with_pread_and_match_the_mapped_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ivf_vault(tmp_path / "big.vault", d=D, segment=10000)
    mapped = Vault.open(path)
    monkeypatch.setattr(core_mod, "_physical_memory", lambda: 1 << 20)  # as if the machine had 1 MB
    vault = Vault.open(path)
    vault.search_index()._prefetch.join()
    assert len(vault.segments) == 3 and vault.rows_from_file and not mapped.rows_from_file
    reads = []
    real = os.preadv
    monkeypatch.setattr(segment_mod.os, "preadv", lambda fd, bufs, off: reads.append(off) or real(fd, bufs, off))
    ids = np.array([vault.n_entries - 1, 0, 7, 12345 % vault.n_entries, vault.segments[1].entry_base, 3, 3])
    got = vault.embeddings(ids)
    assert len(reads) == len(ids)  # one pread per row, none through the mapping
    assert got.dtype == np.float16 and got.shape == (len(ids), D)
    assert np.array_equal(got, mapped.embeddings(ids))  # the same bytes, in the asked order
    sorted_ids = np.unique(ids)
    assert np.array_equal(rows_of(vault, sorted_ids), mapped.embeddings(sorted_ids))
    with pytest.raises(IndexError):
        vault.embeddings([vault.n_entries])
    last = vault.segments[-1]
    with pytest.raises(IndexError):  # sorted: the ends bound the check, and the last row past the segment is caught
        last.rows(np.array([0, last.n]), np.empty((2, D), np.float16), in_order=True)
    q = ivf_queries(20, D)  # searching reads its re-ranked rows the same way, and finds the same answers
    reads.clear()
    want = search(mapped, q, k=5)
    got_results = search(vault, q, k=5)
    assert reads and [r.ids.tolist() for r in got_results] == [r.ids.tolist() for r in want]


def test_a_segment_replaced_after_the_vault_opened_is_refused_for_pread(tmp_path: Path) -> None:
    path = ivf_vault(tmp_path / "big.vault", d=D)
    vault = Vault.open(path)
    seg = vault.segments[0]
    copy = seg.path.with_suffix(".copy")
    shutil.copyfile(seg.path, copy)
    os.replace(copy, seg.path)  # same bytes, another file: not the one the vault mapped and the index was built on
    with pytest.raises(VaultCorruptError, match="replaced after this vault was opened"):
        seg.read_rows_from_file()
    assert not vault.rows_from_file
    assert vault.embeddings([0, 1]).shape == (2, D)  # still read through the mapping of the file it opened


def test_a_segment_truncated_under_pread_reads_is_a_clear_error(tmp_path: Path) -> None:
    path = ivf_vault(tmp_path / "big.vault", d=D, segment=10000)
    vault = Vault.open(path)
    seg = vault.segments[0]
    seg.read_rows_from_file()
    keep = seg.embeddings[:2].copy()
    row = D * 2
    with open(seg.path, "r+b") as f:  # in place (same inode), inside the last row: through the map that read is a SIGBUS
        f.truncate(segment_mod.mapping_of(seg.embeddings)[1] + (seg.n - 1) * row + row // 2)
    with pytest.raises(VaultCorruptError, match="truncated after the vault was opened"):
        vault.embeddings([seg.n - 1])
    assert np.array_equal(vault.embeddings([0, 1]), keep)  # rows still in the file read as before
