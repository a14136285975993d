"""The sidebar routes' helpers without a server: messages without server paths, leftovers of a killed server,
and a package upload checked block by block (not a zip, its card, the name, its declared size, the free disk)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import import_comfyui, small_package

import_comfyui()
from luna_vault.nodes import routes  # noqa: E402
from luna_vault.vault.package import PackageError  # noqa: E402


def test_messages_name_vaults_not_server_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "vaults"
    monkeypatch.setattr(routes, "vault_folders", lambda: [folder])
    msg = (f"vault {folder}/eyes.vault is damaged:\n  {folder}/eyes.vault/seg-1.safetensors is short; "
           "see '/etc/passwd' or C:\\Users\\me\\x.lvault (limit 1..200, 3/4 done)")
    assert routes.public(msg) == ("vault eyes.vault is damaged: eyes.vault/seg-1.safetensors is short; see 'passwd' or "
                                  "x.lvault (limit 1..200, 3/4 done)")


def test_uploads_a_killed_server_left_are_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old, fresh, other = tmp_path / ".upload-a.lvault", tmp_path / ".upload-b.lvault", tmp_path / "mine.lvault"
    for f in (old, fresh, other):
        f.write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    monkeypatch.setattr(routes, "vault_folders", lambda: [tmp_path, tmp_path / "absent"])
    routes._remove_stale_uploads()
    assert not old.exists() and fresh.exists() and other.exists()  # an upload in progress is written to all the time


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return small_package(tmp_path_factory.mktemp("pkg"), seed=2)


def _upload(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, free: int, names: list[str], **kw: Any) -> Any:
    monkeypatch.setattr(routes.shutil, "disk_usage", lambda _: type("Usage", (), {"free": free})())
    monkeypatch.setattr(routes, "vault_names", lambda: names)
    return routes._Upload(tmp_path, kw.get("name"), kw.get("overwrite", False), kw.get("length"))


def _feed(up: Any, data: bytes, block: int = 4096) -> None:
    for i in range(0, len(data), block):
        up.feed(data[i:i + block])


def test_an_upload_is_checked_as_it_arrives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, package: bytes) -> None:
    up = _upload(monkeypatch, tmp_path, 1 << 40, [], length=len(package))
    _feed(up, package)
    assert up.name == "eyes" and len(package) <= up.limit and up.target_folder() == tmp_path
    with pytest.raises(routes.HttpError, match="over the .* bytes its card declares") as e:
        _feed(up, bytes(up.limit - up.size + 1))  # one byte past what the card allows
    assert e.value.status == 413
    with pytest.raises(PackageError, match="not a package"):
        _upload(monkeypatch, tmp_path, 1 << 40, []).feed(b"GIF89a")


def test_a_taken_name_or_a_full_disk_is_refused_at_the_card(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             package: bytes) -> None:
    with pytest.raises(routes.HttpError, match="a vault named 'eyes' already exists") as e:
        _feed(_upload(monkeypatch, tmp_path, 1 << 40, ["eyes"]), package)
    assert (e.value.status, e.value.extra) == (409, {"exists": "eyes"})
    _feed(_upload(monkeypatch, tmp_path, 1 << 40, ["eyes"], name="eyes-2"), package)  # another name
    _feed(_upload(monkeypatch, tmp_path, 1 << 40, ["eyes"], overwrite=True), package)  # or replacing it
    with pytest.raises(routes.HttpError, match="needs about .* free beside the vaults") as e:
        _feed(_upload(monkeypatch, tmp_path, 1 << 20, []), package)  # the card's files and the upload do not fit
    assert e.value.status == 413
    with pytest.raises(routes.HttpError, match="installing it needs about"):
        _upload(monkeypatch, tmp_path, 1 << 20, [], length=1 << 20)  # announced too large: before any byte
    with pytest.raises(routes.HttpError, match="its card declares"):
        _feed(_upload(monkeypatch, tmp_path, 1 << 40, [], length=1 << 30), package[:70_000])
