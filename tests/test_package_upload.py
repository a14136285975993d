"""A package arriving in blocks (the sidebar's install upload): the card read from its first bytes, a
non-zip refused at its 4th byte, and the most bytes a package with that card can hold."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from helpers import small_package
from luna_vault.vault.package import PackageError, card_from_head, package_bytes_limit


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return small_package(tmp_path_factory.mktemp("pkg"), seed=1)


def _card_end(package: bytes) -> int:
    """Where card.json's bytes end in the file, from the zip's own directory."""
    with zipfile.ZipFile(io.BytesIO(package)) as z:
        info = z.getinfo("card.json")
    name_len = int.from_bytes(package[26:28], "little")
    extra_len = int.from_bytes(package[28:30], "little")
    assert info.header_offset == 0
    return 30 + name_len + extra_len + info.file_size


def test_the_card_is_read_the_moment_it_has_arrived(package: bytes) -> None:
    end = _card_end(package)
    for n in (0, 1, 3, 4, 29, 30, 39, end - 1):
        assert card_from_head(package[:n]) is None  # not yet, and nothing wrong so far
    card = card_from_head(package[:end])
    assert card is not None and card["claims"]["name"] == "eyes" and card["entries"] == 40
    assert card_from_head(package) == card
    with zipfile.ZipFile(io.BytesIO(package)) as z:
        assert card == json.loads(z.read("card.json"))
    limit = package_bytes_limit(card)
    vault_bytes = sum(f["bytes"] for f in card["files"])
    assert len(package) <= limit <= vault_bytes + (6 << 20) + 512 * (len(card["files"]) + 4)


@pytest.mark.parametrize("head, why", [
    (b"\x00", "starts with 00"), (b"P\x00", "starts with 50 00"), (b"PK\x05\x06" + bytes(40), "50 4b 05 06"),
    (b"%PDF-1.7", "25 50 44 46"), (b"\x89PNG\r\n", "not a package"),
])
def test_not_a_zip_is_refused_at_its_first_bytes(head: bytes, why: str) -> None:
    with pytest.raises(PackageError, match=why):
        card_from_head(head)


def _zip(members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


CARD = {"format": "luna-vault-package", "version": 1, "name": "x",
        "files": [{"name": "vault/manifest.json", "bytes": 10, "sha256": "0" * 64}]}


@pytest.mark.parametrize("data, why", [
    (_zip([("vault/manifest.json", b"{}"), ("card.json", json.dumps(CARD).encode())]), "first file is 'vault/manifest"),
    (_zip([("card.json", json.dumps(CARD).encode() * 50)], zipfile.ZIP_DEFLATED), "compressed"),
    (_zip([("card.json", b"{")]), "not valid JSON"),
    (_zip([("card.json", b"[" * 100_000)]), "not valid JSON"),
    (_zip([("card.json", json.dumps({**CARD, "version": 2}).encode())]), "not a version-1"),
    (_zip([("card.json", json.dumps({**CARD, "files": [{"name": "a", "bytes": -1}]}).encode())]), "sizes"),
    (_zip([("card.json", json.dumps({**CARD, "files": [{"name": "a", "bytes": True}]}).encode())]), "sizes"),
    (_zip([("card.json", json.dumps({**CARD, "files": []}).encode())]), "sizes"),
    (_zip([("card.json", b" " * ((1 << 20) + 1))]), "over 1048576 bytes"),
])
def test_a_bad_card_is_refused_when_it_arrives(data: bytes, why: str) -> None:
    with pytest.raises(PackageError, match=why):
        card_from_head(data)
