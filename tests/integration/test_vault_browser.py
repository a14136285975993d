"""The vault browser's routes on a real headless ComfyUI: list, pages, previews, more like this, delete with
a version check and undo, export, package install over HTTP; path tricks and bad input refused."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comfy_server import ComfyServer, require_comfyui
from helpers import clustered
from luna_vault.vault import EncoderFingerprint, Vault, build
from luna_vault.vault.package import pack
from luna_vault.vault.thumbnails import make_thumbnail

pytestmark = pytest.mark.slow
require_comfyui()

D = 16
ENC = EncoderFingerprint("test-vit", D, "w1")


def _vault(path: Path, n: int, word: str) -> None:
    x = clustered(n, D, seed=len(word), clusters=6)
    thumbs = [make_thumbnail(np.full((8, 8, 3), (i * 29) % 255, np.uint8)) for i in range(n)]
    build(path, x, [f"{word} eye {i}" for i in range(n)], [{"quality": (i % 10) / 10} for i in range(n)], thumbs,
          encoder=ENC, category=word)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = ComfyServer(tmp_path_factory.mktemp("comfyui-browser"))
    s.prepare()
    _vault(s.base / "models" / "vaults" / "eyes.vault", 150, "green")
    _vault(s.base / "models" / "vaults" / "rings.vault", 40, "gold")
    s.start()
    yield s
    s.stop()


def get(server: ComfyServer, path: str) -> tuple[int, Any, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as r:
            body = r.read()
            return r.status, r.headers.get("Content-Type", ""), body
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def post_raw(server: ComfyServer, path: str, data: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(server.url + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_list_pages_previews_and_more_like_this(server: ComfyServer) -> None:
    listing = server.get("/luna/vaults")
    assert [v["name"] for v in listing["vaults"]] == ["eyes", "rings"] and listing["problems"] == {}
    assert listing["vaults"][0]["entries"] == 150 and listing["vaults"][0]["thumbnails"]
    assert server.get("/api/luna/vaults") == listing  # the front end calls the /api twin
    page = server.get("/luna/vaults/eyes/entries?offset=11&limit=30&text=EYE%201")
    assert page["total"] == 61 and page["entries"][0]["prompt"] == "green eye 100"  # "eye 1", "eye 10".., "eye 100"..
    code, ctype, body = get(server, "/luna/vaults/eyes/thumbnails/3")
    assert code == 200 and ctype == "image/webp" and body[8:12] == b"WEBP"
    sim = server.get("/luna/vaults/eyes/similar/5?k=4")
    assert len(sim["entries"]) == 4 and 5 not in [e["id"] for e in sim["entries"]]
    assert sim["entries"][0]["similarity"] >= sim["entries"][-1]["similarity"]
    js = get(server, "/extensions/luna_vault/luna_vaults.js")
    assert js[0] == 200 and b"registerSidebarTab" in js[2]


@pytest.mark.parametrize("path, code", [
    ("/luna/vaults/nope/entries", 404),
    ("/luna/vaults/..%2F..%2Fuser/entries", 404),
    ("/luna/vaults/eyes/entries?limit=500", 400),
    ("/luna/vaults/eyes/entries?offset=x", 400),
    ("/luna/vaults/eyes/entries?filter=quality%3E%3E1", 400),
    ("/luna/vaults/eyes/thumbnails/99999", 404),
    ("/luna/vaults/eyes/similar/abc", 400),
])
def test_bad_requests_get_one_clear_error(server: ComfyServer, path: str, code: int) -> None:
    got, ctype, body = get(server, path)
    assert got == code and json.loads(body)["error"]


def test_delete_undo_and_stale_views(server: ComfyServer) -> None:
    seen = server.get("/luna/vaults/rings/entries?limit=5")["generation"]
    code, out = server.post("/luna/vaults/rings/delete", {"ids": [0, 1], "generation": seen})
    assert code == 200 and out["deleted"] == 2 and out["entries"] == 38
    assert len(Vault.open(server.base / "models" / "vaults" / "rings.vault")) == 38  # on disk
    code, out2 = server.post("/luna/vaults/rings/delete", {"ids": [2], "generation": seen})
    assert code == 409 and "changed since you looked" in out2["error"]
    code, bad = server.post("/luna/vaults/rings/delete", {"ids": [2]})
    assert code == 400 and "generation" in bad["error"]
    code, back = server.post("/luna/vaults/rings/restore", {"ids": [0, 1], "generation": out["generation"]})
    assert code == 200 and back["entries"] == 40
    code, ex = server.post("/luna/vaults/rings/export", {"ids": [3, 4, 5], "name": "picked"})
    assert code == 200 and ex["entries"] == 3
    code, dup = server.post("/luna/vaults/rings/export", {"ids": [3], "name": "picked"})
    assert code == 409
    code, evil = server.post("/luna/vaults/rings/export", {"ids": [3], "name": "../evil"})
    assert code == 400 and not (server.base / "models" / "evil.vault").exists()


def test_install_a_package_over_http(server: ComfyServer, tmp_path: Path) -> None:
    src = tmp_path / "hands.vault"
    _vault(src, 30, "open")
    pkg = tmp_path / "hands.lvault"
    pack(src, pkg)
    code, out = post_raw(server, "/luna/vaults/install", pkg.read_bytes())
    assert code == 200 and out["installed"] == "hands.vault"
    assert "hands" in [v["name"] for v in server.get("/luna/vaults")["vaults"]]
    code, again = post_raw(server, "/luna/vaults/install", pkg.read_bytes())
    assert code == 409 and "already exists" in again["error"]
    bad = tmp_path / "bad.lvault"
    with zipfile.ZipFile(pkg) as z, zipfile.ZipFile(bad, "w") as out_zip:
        for info in z.infolist():
            out_zip.writestr(info, z.read(info))
        out_zip.writestr("../../escape.txt", b"x")
    code, refused = post_raw(server, "/luna/vaults/install?name=bad", bad.read_bytes())
    assert code == 400 and "unexpected file" in refused["error"]
    vaults = server.base / "models" / "vaults"
    assert not (vaults / "bad.vault").exists() and not list(vaults.glob(".*"))  # nothing half-installed, no upload left
