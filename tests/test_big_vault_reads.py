"""How a vault too big to map ahead is read: rows on demand for queries (MADV_RANDOM), one request per block for scans."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import ivf_queries, ivf_vault
from luna_vault.vault import Vault, search
from luna_vault.vault import store as store_mod
from luna_vault.vault.index import core as core_mod

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
