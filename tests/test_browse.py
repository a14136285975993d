"""The vault browser's library: pages, text search, more like this, delete / restore with a version check, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import clustered
from luna_vault.vault import EncoderFingerprint, QueryError, TextSpec, Vault, build, compact, search
from luna_vault.vault.browse import StaleViewError, delete, entry, export, page, restore, similar, summary

D = 16
ENC = EncoderFingerprint("test-vit", D, "w1")
COLOURS = ["green", "Amber", "blue"]


@pytest.fixture()
def vault(tmp_path: Path) -> Path:
    path = tmp_path / "eyes.vault"
    x = clustered(300, D, seed=3, clusters=10)
    prompts = [f"{COLOURS[i % 3]} eye number {i // 2}" for i in range(300)]  # two entries per prompt
    metas = [{"quality": (i % 10) / 10} for i in range(300)]
    build(path, x, prompts, metas, encoder=ENC, category="eyes")
    return path


def test_pages_and_text_search(vault: Path) -> None:
    v = Vault.open(vault)
    first = page(v, 0, 50)
    assert first["total"] == 300 and [e["id"] for e in first["entries"]] == list(range(50))
    assert first["entries"][3]["prompt"] == "green eye number 1" and first["entries"][3]["metadata"]["quality"] == 0.3
    assert [e["id"] for e in page(v, 290, 50)["entries"]] == list(range(290, 300))
    amber = page(v, 0, 200, text="aMbEr")  # case-insensitive substring over prompts
    want = [i for i in range(300) if i % 3 == 1]
    assert amber["total"] == len(want) and [e["id"] for e in amber["entries"]] == want[:200]
    both = page(v, 0, 200, text="amber", filter="quality>=0.8")
    assert [e["id"] for e in both["entries"]] == [i for i in want if (i % 10) >= 8]
    assert page(v, 0, 10, text="no such words")["total"] == 0
    for bad in (dict(limit=0), dict(limit=201), dict(offset=-1), dict(text="x" * 201), dict(filter="quality>>1")):
        with pytest.raises(QueryError):
            page(v, **{"offset": 0, "limit": 10, **bad})
    s = summary(v)
    assert (s["entries"], s["mode"], s["encoder"], s["deleted"], s["tuned"]) == (300, "text", "test-vit", 0, None)


def test_more_like_this_uses_the_stored_embedding(vault: Path) -> None:
    v = Vault.open(vault)
    got = similar(v, 7, k=5)
    ids = [e["id"] for e in got["entries"]]
    assert 7 not in ids and len(ids) == 5
    x = v.embeddings(np.arange(300)).astype(np.float32)
    sims = x @ x[7]
    sims[7] = -np.inf
    want = np.argsort(-sims)[:5]
    assert ids == want.tolist()
    np.testing.assert_allclose([e["similarity"] for e in got["entries"]], sims[want], atol=2e-3)
    with pytest.raises(QueryError, match="entry ids must lie in 0..299"):
        similar(v, 300)
    for huge in (2 ** 63, 2 ** 70, -(2 ** 70)):  # checked before any int64 conversion (was an OverflowError)
        with pytest.raises(QueryError, match="entry ids must lie in 0..299"):
            similar(v, huge)
        with pytest.raises(QueryError, match="entry ids must lie in 0..299"):
            entry(v, huge)


def test_delete_and_restore_check_the_version_the_client_saw(vault: Path) -> None:
    seen = page(Vault.open(vault), 0, 10)["generation"]
    assert page(Vault.open(vault), 0, 5, text="green")["entries"][0]["id"] == 0  # builds the prompt index
    out = delete(vault, [0, 1, 2], seen)
    assert page(Vault.open(vault), 0, 5, text="green")["entries"][0]["id"] == 3  # a new snapshot, a new index
    assert out["deleted"] == 3 and out["entries"] == 297
    v = Vault.open(vault)
    assert entry(v, 1)["deleted"] and page(v, 0, 5)["entries"][0]["id"] == 3
    assert all(0 not in r.ids for r in search(v, v.embeddings([0]).astype(np.float32), k=3))
    with pytest.raises(StaleViewError, match="vault 'eyes' changed since you looked at it"):
        delete(vault, [5], seen)  # a stale view changes nothing
    with pytest.raises(QueryError, match="entry ids must lie in 0..299, got 18446744073709551616"):
        delete(vault, [5, 2 ** 64], out["generation"])
    assert len(Vault.open(vault)) == 297
    back = restore(vault, [1, 2], out["generation"])
    assert back["restored"] == 2 and back["entries"] == 299
    again = restore(vault, [0], back["generation"])
    assert again["entries"] == 300 and Vault.open(vault).manifest.deleted is None
    v = Vault.open(vault)
    assert v.verify() == [] and not entry(v, 0)["deleted"]
    delete(vault, [9], again["generation"])
    compact(vault)  # after a compaction the deleted data is gone for good
    assert len(Vault.open(vault)) == 299


def test_export_a_selection_as_a_new_vault(tmp_path: Path) -> None:
    src = tmp_path / "baked.vault"
    x = clustered(40, D, seed=5, clusters=4)

    def encode(prompt: str) -> tuple[np.ndarray, np.ndarray]:
        seed = int(prompt.split()[-1])
        rng = np.random.default_rng(seed)
        return rng.standard_normal((77, 768)).astype(np.float32), rng.standard_normal(768).astype(np.float32)

    build(src, x, [f"p {i}" for i in range(40)], [{"i": i} for i in range(40)], encoder=ENC, category="eyes",
          text=TextSpec.for_family("sd15"), encode_text=encode)
    g = Vault.open(src).manifest.generation
    delete(src, [4], g)
    out = export(src, [3, 4, 5, 39], tmp_path / "picked.vault")
    assert out["entries"] == 3  # the deleted one is not exported
    v, s = Vault.open(tmp_path / "picked.vault"), Vault.open(src)
    assert [v.metadata(i)["i"] for i in range(3)] == [3, 5, 39]
    np.testing.assert_array_equal(v.embeddings([1]), s.embeddings([5]))
    np.testing.assert_array_equal(v.baked(int(v.prompt_ids([2])[0]))[0], s.baked(int(s.prompt_ids([39])[0]))[0])
    with pytest.raises(QueryError, match="nothing to export"):
        export(src, [4], tmp_path / "none.vault")
