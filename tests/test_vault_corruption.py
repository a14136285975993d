"""Damaged, foreign and future vaults produce clear errors, and verify() finds silent damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import clustered
from luna_vault.core.atomic import atomic_write_bytes, check_name
from luna_vault.vault import (
    EncoderFingerprint,
    UnsafeNameError,
    Vault,
    VaultCorruptError,
    VaultFormatError,
    VaultNotFoundError,
    build,
)

ENC = EncoderFingerprint("test-vit", 16, "w1")


@pytest.fixture()
def vault(tmp_path: Path) -> Path:
    path = tmp_path / "v.vault"
    build(path, clustered(30, 16), [f"p{i}" for i in range(30)], encoder=ENC, category="eyes")
    return path


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_missing_folder_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(VaultNotFoundError, match="does not exist"):
        Vault.open(tmp_path / "nope.vault")
    (tmp_path / "empty.vault").mkdir()
    with pytest.raises(VaultNotFoundError, match="no manifest.json"):
        Vault.open(tmp_path / "empty.vault")


def test_newer_format_version_asks_for_an_upgrade(vault: Path) -> None:
    _edit_manifest(vault, format_version=7)
    with pytest.raises(VaultFormatError, match="version 7.*Upgrade luna-vault"):
        Vault.open(vault)


def test_foreign_json_is_not_a_vault(vault: Path) -> None:
    (vault / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(VaultFormatError, match="not a Luna Vault manifest"):
        Vault.open(vault)


def test_garbled_manifest(vault: Path) -> None:
    (vault / "manifest.json").write_text('{"format": "luna-vault", "format_vers')
    with pytest.raises(VaultCorruptError, match="not valid JSON"):
        Vault.open(vault)


def test_counts_disagreeing_with_segments(vault: Path) -> None:
    _edit_manifest(vault, counts={"entries": 31, "live": 31, "prompts": 30})
    with pytest.raises(VaultCorruptError, match="disagree"):
        Vault.open(vault)


def test_truncated_segment_is_caught_before_mapping(vault: Path) -> None:
    seg = next(vault.glob("seg-*.safetensors"))
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    with pytest.raises(VaultCorruptError, match="truncated"):
        Vault.open(vault)


def test_missing_segment(vault: Path) -> None:
    next(vault.glob("seg-*.safetensors")).unlink()
    with pytest.raises(VaultCorruptError, match="missing"):
        Vault.open(vault)


def test_bad_header_in_segment(vault: Path) -> None:
    seg = next(vault.glob("seg-*.safetensors"))
    data = bytearray(seg.read_bytes())
    data[8:20] = b"!!!!!!!!!!!!"
    seg.write_bytes(bytes(data))
    with pytest.raises(VaultCorruptError, match="header"):
        Vault.open(vault)


def test_flipped_data_byte_is_found_by_verify(vault: Path) -> None:
    seg = next(vault.glob("seg-*.safetensors"))
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0xFF  # same size, so open() cannot notice; the checksum does
    seg.write_bytes(bytes(data))
    problems = Vault.open(vault).verify()
    assert any("checksum differs" in p for p in problems)


def test_wrong_embedding_dim_in_manifest(vault: Path) -> None:
    m = json.loads((vault / "manifest.json").read_text())
    m["encoder"]["dim"] = 32
    (vault / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VaultCorruptError, match=r"embeddings are \(30, 16\).*\(30, 32\)"):
        Vault.open(vault)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")
    from luna_vault.core.atomic import atomic_write

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/b", "a\\b", "..", "", "x" * 300, "nul\0"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        check_name(name, "vault name")


def test_plain_names_pass() -> None:
    assert check_name("eyes v2.vault") == "eyes v2.vault"
    assert check_name("hands_sdxl-1") == "hands_sdxl-1"


def test_index_cache_of_a_different_vault_is_not_used(tmp_path: Path) -> None:
    """A cached index is bound to the vault's id and content: replacing the vault forces a rebuild."""
    from luna_vault.vault import get_index

    path = tmp_path / "v.vault"
    x = clustered(600, 16, seed=1)
    build(path, x, [f"p{i}" for i in range(600)], encoder=ENC, category="eyes", index="IVF8,Flat")
    first = get_index(Vault.open(path))
    assert first.state is not None
    y = clustered(600, 16, seed=2)
    build(path, y, [f"q{i}" for i in range(600)], encoder=ENC, category="eyes", index="IVF8,Flat", overwrite=True)
    v = Vault.open(path)
    second = get_index(v)
    assert second.state.vault_id != first.state.vault_id and second.state.covered_digest != first.state.covered_digest
    assert second.state.built_at > first.state.built_at
    sims, ids = second.search(y[:3], 1)
    assert list(ids[:, 0]) == [0, 1, 2]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=2e-3)
