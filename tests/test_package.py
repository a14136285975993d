"""Vault packages: a round trip, and every malformed or hostile package refused with nothing installed."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers import clustered
from luna_vault.cli import main
from luna_vault.vault import EncoderFingerprint, Vault, VaultError, VaultExistsError, append, build, delete_where, search
from luna_vault.vault.package import PackageError, describe_package, install, pack, write_card
from luna_vault.vault.thumbnails import make_thumbnail

D = 16
ENC = EncoderFingerprint("test-vit", D, "w1")


def _thumb(i: int) -> bytes:
    return make_thumbnail(np.full((8, 8, 3), (i * 37) % 255, np.uint8))


def _build(path: Path, thumbs: list[bytes] | None = None) -> Path:
    x = clustered(60, D, seed=2)
    metas = [{"checkpoint": "ponyXL" if i % 3 else "sdxl_base", "loras": ["detail"] if i % 2 else []} for i in range(60)]
    build(path, x[:40], [f"eye {i}" for i in range(40)], metas[:40], thumbs or [_thumb(i) for i in range(40)],
          encoder=ENC, category="eyes")
    append(path, x[40:], [f"eye {i}" for i in range(40, 60)], metas[40:], [_thumb(i) for i in range(40, 60)], encoder=ENC)
    return path


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    src = _build(tmp_path / "src" / "eyes.vault")
    out = tmp_path / "eyes.lvault"
    pack(src, out, author="Luna", licence="CC-BY-4.0", description="Eye crops.")
    return out


def _nothing_installed(to: Path) -> None:
    assert not to.exists() or list(to.iterdir()) == [], f"left behind: {list(to.iterdir())}"


def repack(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None] | None = None,
           extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (), compress: int = zipfile.ZIP_STORED,
           fix_card: bool = False) -> Path:
    """A copy of a package with members edited (None drops one), extra members, and optionally a card
    whose sizes and checksums match the edited files (an attacker can always recompute them)."""
    with zipfile.ZipFile(src) as z:
        files = {i.filename: z.read(i) for i in z.infolist()}
    if edit:
        files = {n: b for n, data in files.items() if (b := edit(n, data)) is not None}
    if fix_card:
        card = json.loads(files["card.json"])
        card["files"] = [{"name": n, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                         for n, b in files.items() if n.startswith("vault/")]
        files["card.json"] = json.dumps(card).encode()
    with zipfile.ZipFile(dst, "w", compress) as z:
        for n, b in files.items():
            z.writestr(n, b)
        for info, b in extra:
            z.writestr(info, b)
    return dst


def test_round_trip_keeps_every_entry_and_writes_a_card(package: Path, tmp_path: Path) -> None:
    src = Vault.open(tmp_path / "src" / "eyes.vault")
    to = tmp_path / "models" / "vaults"
    path = install(package, to)
    assert path == to / "eyes.vault" and sorted(p.name for p in to.iterdir()) == ["eyes.vault"]
    v = Vault.open(path)
    assert (len(v), v.n_prompts, v.category, v.encoder) == (60, 60, "eyes", ENC)
    ids = np.arange(60)
    np.testing.assert_array_equal(v.embeddings(ids), src.embeddings(ids))
    assert [v.prompt(int(p)) for p in v.prompt_ids(ids)] == [src.prompt(int(p)) for p in src.prompt_ids(ids)]
    assert [v.metadata(i) for i in range(60)] == [src.metadata(i) for i in range(60)]
    assert [v.thumbnail(i) for i in range(60)] == [src.thumbnail(i) for i in range(60)]
    q = clustered(5, D, seed=9)
    assert [r.ids.tolist() for r in search(v, q, k=3)] == [r.ids.tolist() for r in search(src, q, k=3)]
    card = json.loads((path / "card.json").read_text())
    assert card["entries"] == 60 and card["claims"]["author"] == "Luna" and card["claims"]["licence"] == "CC-BY-4.0"
    assert card["verified"] is True and card["claims"]["name"] == "eyes"
    assert card["checkpoints"] == {"ponyXL": 40, "sdxl_base": 20} and card["loras"] == {"detail": 30}
    assert {f["name"] for f in card["files"]} == {"vault/manifest.json"} | {f"vault/{s.file}" for s in src.manifest.segments}
    readme = (path / "README.md").read_text()
    assert "**60 entries**" in readme and "contact_sheet.webp" in readme and "| ponyXL | 40 |" in readme
    assert (path / "contact_sheet.webp").read_bytes()[8:12] == b"WEBP"
    assert v.verify() == []
    assert describe_package(package)["entries"] == 60
    with pytest.raises(VaultExistsError, match="already exists"):
        install(package, to)
    assert install(package, to, name="eyes-copy") == to / "eyes-copy.vault"
    assert install(package, to, overwrite=True) == to / "eyes.vault" and len(Vault.open(to / "eyes.vault")) == 60
    assert sorted(p.name for p in to.iterdir()) == ["eyes-copy.vault", "eyes.vault"]  # no temporary folders left


def test_pack_refuses_deleted_entries_and_existing_files(tmp_path: Path, package: Path) -> None:
    src = tmp_path / "src" / "eyes.vault"
    with pytest.raises(VaultExistsError):
        pack(src, package)
    delete_where(src, "checkpoint=sdxl_base")
    with pytest.raises(VaultError, match="20 deleted entries.*--compact"):
        pack(src, tmp_path / "other.lvault")
    assert not (tmp_path / "other.lvault").exists()


def _png_claiming(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _first_segment(name: str) -> bool:
    return name.startswith("vault/seg-")


def _flip(name: str, data: bytes) -> bytes:
    if not _first_segment(name):
        return data
    b = bytearray(data)
    b[-5] ^= 0xFF  # same size, different bytes (inside the metadata/thumbnail region at the end)
    return bytes(b)


def _manifest(fn: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name != "vault/manifest.json":
            return data
        d = json.loads(data)
        fn(d)
        return json.dumps(d).encode()
    return edit


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16  # a symbolic link
    return info


CASES = {
    "traversal name": (dict(extra=[("vault/../../evil.txt", b"x")]), "unexpected file"),
    "absolute path": (dict(extra=[("/tmp/evil.txt", b"x")]), "unexpected file"),
    "folder part": (dict(extra=[("vault/sub/seg-000001-0001-0123abcd.safetensors", b"x")]), "unexpected file"),
    "extra unknown file": (dict(extra=[("notes.txt", b"hello")]), "unexpected file"),
    "unlisted segment": (dict(extra=[("vault/seg-000099-0001-0123abcd.safetensors", b"x")]), "not on the card"),
    "symbolic link": (dict(extra=[(_link("README.md"), b"/etc/passwd")], edit=lambda n, d: None if n == "README.md" else d),
                      "not a plain file"),
    "duplicate member": (dict(extra=[("card.json", b"{}")]), "appears twice"),
    "compressed members": (dict(compress=zipfile.ZIP_DEFLATED), "is compressed"),
    "missing card": (dict(edit=lambda n, d: None if n == "card.json" else d), "has no card.json"),
    "missing segment": (dict(edit=lambda n, d: None if _first_segment(n) else d), "missing from the package"),
    "wrong checksum": (dict(edit=_flip), "checksum differs from the card"),
    "oversized count, checksums recomputed": (
        dict(edit=_manifest(lambda d: d["counts"].update(entries=1 << 40, live=1 << 40)), fix_card=True),
        "manifest is not valid"),
    "segment count edited, checksums recomputed": (
        dict(edit=_manifest(lambda d: d["segments"][0].update(entries=41)), fix_card=True), "manifest is not valid"),
    "segment of another vault, checksums recomputed": (
        dict(edit=_manifest(lambda d: d.update(vault_id="ab" * 8)), fix_card=True), "does not open|damaged"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's, when the test writes the duplicate
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_malformed_packages_are_refused_and_nothing_is_installed(package: Path, tmp_path: Path, case: str) -> None:
    kwargs, match = CASES[case]
    bad = repack(package, tmp_path / "bad.lvault", **kwargs)
    to = tmp_path / "vaults"
    with pytest.raises(PackageError, match=match):
        install(bad, to)
    _nothing_installed(to)


def test_a_bomb_thumbnail_is_refused(tmp_path: Path) -> None:
    bomb = _png_claiming(50_000, 50_000)
    src = _build(tmp_path / "bomb.vault", thumbs=[bomb] + [_thumb(i) for i in range(1, 40)])
    pack(src, tmp_path / "bomb.lvault")
    to = tmp_path / "vaults"
    with pytest.raises(PackageError, match="entry 0: stored preview is 50000 x 50000 pixels"):
        install(tmp_path / "bomb.lvault", to)
    _nothing_installed(to)


def test_bytes_damaged_inside_the_zip_are_refused(package: Path, tmp_path: Path) -> None:
    """A flipped byte in a stored member: zipfile's CRC check or our SHA-256, either way one clear error."""
    raw = bytearray(package.read_bytes())
    with zipfile.ZipFile(package) as z:
        seg = next(i for i in z.infolist() if i.filename.startswith("vault/seg-"))
    raw[seg.header_offset + 30 + len(seg.filename) + 200] ^= 0xFF  # inside the member's data
    bad = tmp_path / "flipped.lvault"
    bad.write_bytes(bytes(raw))
    with pytest.raises(PackageError, match="damaged|checksum"):
        install(bad, tmp_path / "vaults")
    _nothing_installed(tmp_path / "vaults")


def test_not_a_package(tmp_path: Path) -> None:
    junk = tmp_path / "junk.lvault"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PackageError, match="not a readable package"):
        install(junk, tmp_path / "vaults")
    _nothing_installed(tmp_path / "vaults")


def test_cli_pack_install_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _build(tmp_path / "eyes.vault")
    out = tmp_path / "eyes.lvault"
    assert main(["pack", str(src), "-o", str(out), "--author", "me", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["card"]["claims"]["author"] == "me"
    assert main(["install", str(out), "--card-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 60
    assert main(["install", str(out), "--to", str(tmp_path / "vaults"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 60
    assert main(["install", str(out), "--to", str(tmp_path / "vaults")]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = repack(out, tmp_path / "bad.lvault", extra=[("../x", b"x")])
    assert main(["install", str(bad), "--to", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected file '../x'") and "Traceback" not in err
    assert main(["card", str(src), "-o", str(tmp_path / "card")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "card" / "card.json").read_text())["files"] == []
    assert write_card(src) == src and (src / "README.md").is_file()
    assert Vault.open(src).verify() == []  # card files beside the vault's own do not disturb it
