"""Vault lifecycle: build, append, dedupe, metadata, thumbnails, delete, merge, compact, verify, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import clustered, toy_encode
from luna_vault.vault import (
    DimensionError,
    EncoderFingerprint,
    EncoderMismatchError,
    TextSpec,
    Vault,
    VaultError,
    VaultExistsError,
    VaultWriter,
    append,
    build,
    compact,
    delete_where,
    merge,
)
from luna_vault.vault.thumbnails import decode_thumbnail, make_thumbnail

ENC = EncoderFingerprint("test-vit", 16, "w1")


def _data(n: int = 50, seed: int = 0) -> tuple[np.ndarray, list[str], list[dict]]:
    x = clustered(n, 16, seed=seed)
    prompts = [f"prompt {i % 7}" for i in range(n)]
    metas = [{"source": f"img{i}.png", "checkpoint": "ponyXL" if i % 2 else "juggernaut", "seed": i,
              "quality": i / n, "loras": ["detail:0.6", {"name": "eyes", "strength": 1.0}], "colour": "blue"} for i in range(n)]
    return x, prompts, metas


def test_build_round_trip_dedupes_prompts_and_keeps_metadata(tmp_path: Path) -> None:
    x, prompts, metas = _data()
    report = build(tmp_path / "eyes.vault", x * 3.0, prompts, metas, encoder=ENC, category="eyes")
    assert (report.added, report.new_prompts, report.skipped) == (50, 7, [])
    v = Vault.open(tmp_path / "eyes.vault")
    assert (len(v), v.n_prompts, v.name, v.category, v.dim) == (50, 7, "eyes", "eyes", 16)
    # stored normalised, fp16
    np.testing.assert_allclose(v.embeddings(np.arange(50)).astype(np.float32), x, atol=1e-3)
    assert [v.prompt(int(p)) for p in v.prompt_ids([0, 8, 13])] == ["prompt 0", "prompt 1", "prompt 6"]
    m = v.metadata(3)
    assert m == {"category": "eyes", "source": "img3.png", "checkpoint": "ponyXL", "seed": 3, "quality": 0.06,
                 "loras": [{"name": "detail", "strength": 0.6}, {"name": "eyes", "strength": 1.0}], "colour": "blue"}
    assert v.verify() == []
    info = v.info()
    assert (info["entries"], info["prompts"], info["mode"], info["segments"]) == (50, 7, "text", 1)


def test_append_adds_segment_without_rewriting_and_reuses_prompts(tmp_path: Path) -> None:
    x, prompts, metas = _data()
    path = tmp_path / "a.vault"
    build(path, x[:30], prompts[:30], metas[:30], encoder=ENC, category="eyes")
    seg0 = next(path.glob("seg-*.safetensors"))
    before = (seg0.stat().st_mtime_ns, seg0.read_bytes())
    report = append(path, x[30:], prompts[30:] , metas[30:] , encoder=ENC)
    assert (report.added, report.new_prompts) == (20, 0)  # all 7 prompts already present
    assert (seg0.stat().st_mtime_ns, seg0.read_bytes()) == before
    v = Vault.open(path)
    assert (len(v), v.n_prompts, len(v.manifest.segments)) == (50, 7, 2)
    assert v.prompt(int(v.prompt_ids([45])[0])) == prompts[45]
    report = append(path, x[:2], ["a brand new prompt", "prompt 1"], None, encoder=ENC)
    assert report.new_prompts == 1
    v = Vault.open(path)
    assert v.prompt(int(v.prompt_ids([50])[0])) == "a brand new prompt"
    assert v.metadata(51) == {"category": "eyes"}


def test_bad_items_are_skipped_and_reported_good_ones_kept(tmp_path: Path) -> None:
    x, prompts, metas = _data(10)
    x[2] = np.nan
    x[3] = 0.0
    prompts[4] = "  "
    prompts[5] = None  # type: ignore[call-overload]
    metas[6] = {"quality": "not a number"}
    metas[7] = {"thing": object()}
    report = build(tmp_path / "v.vault", x, prompts, metas, encoder=ENC, category="eyes")
    reasons = {s.index: s.reason for s in report.skipped}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert reasons[4] == reasons[5] == "missing prompt"
    assert "not finite" in reasons[2] and "not finite" in reasons[3]
    assert reasons[6].startswith("bad metadata") and reasons[7].startswith("bad metadata")
    assert report.added == 4
    assert len(Vault.open(tmp_path / "v.vault")) == 4


def test_wrong_dim_and_length_mismatch_fail_loudly(tmp_path: Path) -> None:
    x, prompts, _ = _data(10)
    with pytest.raises(DimensionError, match=r"expects \[n, 16\]"):
        build(tmp_path / "v.vault", x[:, :8], prompts, encoder=ENC, category="eyes")
    assert not (tmp_path / "v.vault").exists()  # an aborted first build leaves nothing
    with pytest.raises(DimensionError, match="one prompt per embedding"):
        build(tmp_path / "v.vault", x, prompts[:5], encoder=ENC, category="eyes")
    build(tmp_path / "v.vault", x, prompts, encoder=ENC, category="eyes")
    with pytest.raises(DimensionError, match="expects"):
        append(tmp_path / "v.vault", np.ones((2, 32)), ["a", "b"])


def test_create_refuses_existing_vault_unless_overwrite(tmp_path: Path) -> None:
    x, prompts, _ = _data(10)
    build(tmp_path / "v.vault", x, prompts, encoder=ENC, category="eyes")
    with pytest.raises(VaultExistsError, match="already exists"):
        build(tmp_path / "v.vault", x, prompts, encoder=ENC, category="eyes")
    build(tmp_path / "v.vault", x[:3], ["x", "y", "z"], encoder=ENC, category="hands", overwrite=True)
    v = Vault.open(tmp_path / "v.vault")
    assert (len(v), v.category, v.n_prompts) == (3, "hands", 3)
    assert len(list((tmp_path / "v.vault").glob("seg-*"))) == 1  # the old segment was removed


def test_append_checks_encoder_fingerprint(tmp_path: Path) -> None:
    x, prompts, _ = _data(10)
    build(tmp_path / "v.vault", x, prompts, encoder=ENC, category="eyes")
    with pytest.raises(EncoderMismatchError, match="different model"):
        append(tmp_path / "v.vault", x, prompts, encoder=EncoderFingerprint("other-vit", 16, "w2"))
    with pytest.raises(EncoderMismatchError, match="32-d"):
        append(tmp_path / "v.vault", x, prompts, encoder=EncoderFingerprint("big-vit", 32, "w3"))


def test_thumbnails_round_trip(tmp_path: Path) -> None:
    x, prompts, _ = _data(4)
    img = np.zeros((40, 80, 3), np.float32)
    img[..., 0] = 1.0  # red
    thumbs = [make_thumbnail(img, 32), None, make_thumbnail(img * 0.5, 32), b""]
    build(tmp_path / "v.vault", x, prompts, None, thumbs, encoder=ENC, category="eyes")
    v = Vault.open(tmp_path / "v.vault")
    assert v.thumbnail(1) is None and v.thumbnail(3) is None
    pic = decode_thumbnail(v.thumbnail(0))
    assert pic.size == (32, 16)
    r, g, b = np.asarray(pic, dtype=np.float32).reshape(-1, 3).mean(0)
    assert r > 230 and g < 25 and b < 25


def test_baked_conditioning_is_stored_per_unique_prompt(tmp_path: Path) -> None:
    x, prompts, _ = _data(20)
    prompts[0] = "a very long prompt that goes past the sixty character mark for two chunks"
    spec = TextSpec("sd15", 8, 6)
    calls: list[str] = []

    def enc(p: str):
        calls.append(p)
        return toy_encode(p)

    build(tmp_path / "b.vault", x, prompts, encoder=ENC, category="eyes", text=spec, encode_text=enc)
    assert sorted(calls) == sorted(set(prompts))  # each unique prompt encoded once
    v = Vault.open(tmp_path / "b.vault")
    assert v.info()["mode"] == "baked"
    for eid in (0, 1, 8):
        pid = int(v.prompt_ids([eid])[0])
        cond, pooled = v.baked(pid)
        want_c, want_p = toy_encode(prompts[eid])
        assert cond.dtype == np.float16 and cond.shape == tuple(want_c.shape)
        np.testing.assert_allclose(cond.astype(np.float32), want_c.numpy(), atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(pooled.astype(np.float32), want_p.numpy(), atol=2e-3, rtol=1e-3)
    assert v.baked(int(v.prompt_ids([0])[0]))[0].shape == (154, 8)
    with pytest.raises(VaultError, match="pass a text encoder"):
        append(tmp_path / "b.vault", x[:1], ["new"])
    with pytest.raises(DimensionError, match="sd15"):
        append(tmp_path / "b.vault", x[:1], ["new"], encode_text=lambda p: toy_encode(p, dim=12))
    text_vault = tmp_path / "t.vault"
    build(text_vault, x, prompts, encoder=ENC, category="eyes")
    with pytest.raises(VaultError, match="no baked conditioning"):
        Vault.open(text_vault).baked(0)


def test_delete_by_filter_then_compact(tmp_path: Path) -> None:
    x, prompts, metas = _data(40)
    path = tmp_path / "v.vault"
    build(path, x, prompts, metas, encoder=ENC, category="eyes")
    n = delete_where(path, "checkpoint=juggernaut, quality<0.5")
    assert n == 10  # even ids 0..18
    v = Vault.open(path)
    assert len(v) == 30 and v.n_entries == 40
    assert set(np.flatnonzero(~v.live_mask())) == set(range(0, 20, 2))
    assert delete_where(path, "checkpoint=juggernaut, quality<0.5") == 0
    with pytest.raises(Exception, match="empty filter"):
        delete_where(path, "")
    compact(path)
    v = Vault.open(path)
    assert (len(v), v.n_entries, v.manifest.deleted_count) == (30, 30, 0)
    kept = [i for i in range(40) if not (i % 2 == 0 and i < 20)]
    np.testing.assert_allclose(v.embeddings(np.arange(30)).astype(np.float32), x[kept], atol=1e-3)
    assert [v.metadata(i)["seed"] for i in range(30)] == kept
    assert v.verify() == []
    assert len(list(path.glob("*.safetensors"))) == 1


def test_merge_same_encoder_and_refusals(tmp_path: Path) -> None:
    x, prompts, metas = _data(20)
    build(tmp_path / "a.vault", x[:10], prompts[:10], metas[:10], encoder=ENC, category="eyes")
    build(tmp_path / "b.vault", x[10:], prompts[10:], metas[10:], encoder=ENC, category="eyes")
    delete_where(tmp_path / "b.vault", "seed=19")
    report = merge(tmp_path / "m.vault", [tmp_path / "a.vault", tmp_path / "b.vault"])
    assert report.added == 19
    m = Vault.open(tmp_path / "m.vault")
    assert (len(m), m.n_prompts) == (19, 7)
    np.testing.assert_allclose(m.embeddings(np.arange(19)).astype(np.float32), x[:19], atol=1e-3)
    assert [m.metadata(i)["seed"] for i in range(19)] == list(range(19))
    build(tmp_path / "c.vault", x[:3], prompts[:3], encoder=EncoderFingerprint("other", 16, "zz"), category="eyes")
    with pytest.raises(EncoderMismatchError, match="cannot merge"):
        merge(tmp_path / "n.vault", [tmp_path / "a.vault", tmp_path / "c.vault"])
    build(tmp_path / "d.vault", x[:3], prompts[:3], encoder=ENC, category="eyes", text=TextSpec("sd15", 8, 6),
          encode_text=toy_encode)
    with pytest.raises(VaultError, match="drop_baked"):
        merge(tmp_path / "n.vault", [tmp_path / "a.vault", tmp_path / "d.vault"])
    merge(tmp_path / "n.vault", [tmp_path / "a.vault", tmp_path / "d.vault"], drop_baked=True)
    assert Vault.open(tmp_path / "n.vault").text is None
    # baked + baked keeps the conditioning
    build(tmp_path / "e.vault", x[3:6], ["p a", "p b", "prompt 0"], encoder=ENC, category="eyes",
          text=TextSpec("sd15", 8, 6), encode_text=toy_encode)
    merge(tmp_path / "be.vault", [tmp_path / "d.vault", tmp_path / "e.vault"])
    be = Vault.open(tmp_path / "be.vault")
    assert be.n_prompts == 5
    for pid in range(be.n_prompts):
        np.testing.assert_allclose(be.baked(pid)[0].astype(np.float32), toy_encode(be.prompt(pid))[0].numpy(), atol=2e-3, rtol=1e-3)
    with pytest.raises(VaultError, match="must be a new vault"):
        merge(tmp_path / "a.vault", [tmp_path / "a.vault"])


def test_aborted_transaction_leaves_vault_unchanged(tmp_path: Path) -> None:
    x, prompts, _ = _data(10)
    path = tmp_path / "v.vault"
    build(path, x, prompts, encoder=ENC, category="eyes")
    manifest_before = (path / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError):
        with VaultWriter.open(path) as w:
            w.add(x, prompts)
            raise RuntimeError("boom")
    assert (path / "manifest.json").read_bytes() == manifest_before
    assert len(list(path.glob("seg-*"))) == 1
    assert len(Vault.open(path)) == 10
    w = VaultWriter.open(path)
    w.add(x, prompts)
    w.commit()
    with pytest.raises(VaultError, match="already committed"):
        w.add(x, prompts)


def test_writer_lock_blocks_a_second_writer(tmp_path: Path) -> None:
    x, prompts, _ = _data(4)
    path = tmp_path / "v.vault"
    build(path, x, prompts, encoder=ENC, category="eyes")
    from luna_vault.core import atomic

    with VaultWriter.open(path):
        with pytest.raises(VaultError, match="another process is writing"):
            with atomic.writer_lock(path, timeout=0.2):
                pass


def test_segment_files_are_plain_safetensors(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    x, prompts, metas = _data(5)
    build(tmp_path / "v.vault", x, prompts, metas, encoder=ENC, category="eyes")
    seg = load_file(str(next((tmp_path / "v.vault").glob("seg-*.safetensors"))))
    assert seg["embeddings"].shape == (5, 16) and seg["embeddings"].dtype == np.float16
    lines = bytes(seg["meta_blob"]).decode().splitlines()
    assert [json.loads(line)["seed"] for line in lines] == [0, 1, 2, 3, 4]
    manifest = json.loads((tmp_path / "v.vault" / "manifest.json").read_text())
    assert manifest["counts"] == {"entries": 5, "live": 5, "prompts": 5}
    assert manifest["encoder"] == {"name": "test-vit", "dim": 16, "weights_hash": "w1"}
