"""The vault browser's routes on a real headless ComfyUI: list, pages, previews, more like this, delete with
a version check and undo, export, package install over HTTP; the attacks of other pages (Origin: null, a
foreign Origin, no Origin, text/plain, DNS rebinding) refused; a table of malformed requests to every route
answered below 500 with one line and no server path, the vault folder unchanged; uploads refused early."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comfy_server import ComfyServer, require_comfyui
from helpers import clustered, import_comfyui
from luna_vault.vault import EncoderFingerprint, Vault, build
from luna_vault.vault.package import pack
from luna_vault.vault.thumbnails import make_thumbnail

pytestmark = pytest.mark.slow
require_comfyui()

D = 16
ENC = EncoderFingerprint("test-vit", D, "w1")
TOKEN = "X-Luna-Vault-Token"
JSON_TYPE = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}


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


@pytest.fixture(scope="module")
def token(server: ComfyServer) -> str:
    return server.get("/luna/vaults/token")["token"]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("package")
    _vault(work / "hands.vault", 30, "open")
    pack(work / "hands.vault", work / "hands.lvault")
    return work / "hands.lvault"


def call(server: ComfyServer, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request exactly as given (path, headers, body): status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def change(server: ComfyServer, path: str, body: Any, token: str) -> tuple[int, Any]:
    code, _, raw = call(server, "POST", path, json.dumps(body).encode(), {**JSON_TYPE, TOKEN: token})
    return code, json.loads(raw)


def upload(server: ComfyServer, data: bytes, token: str, query: str = "") -> tuple[int, Any]:
    code, _, raw = call(server, "POST", "/luna/vaults/install" + query, data, {**OCTETS, TOKEN: token})
    return code, json.loads(raw)


def folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def vaults(server: ComfyServer) -> Path:
    return server.base / "models" / "vaults"


# ---- what a user does ----------------------------------------------------------------------------
def test_list_pages_previews_and_more_like_this(server: ComfyServer) -> None:
    listing = server.get("/luna/vaults")
    assert [v["name"] for v in listing["vaults"]] == ["eyes", "rings"] and listing["problems"] == {}
    assert listing["vaults"][0]["entries"] == 150 and listing["vaults"][0]["thumbnails"]
    assert listing["vaults"][0]["tuned"] is None and listing["folders"] == ["models/vaults"]  # no server path
    assert server.get("/api/luna/vaults") == listing  # the front end calls the /api twin
    page = server.get("/luna/vaults/eyes/entries?offset=11&limit=30&text=EYE%201")
    assert page["total"] == 61 and page["entries"][0]["prompt"] == "green eye 100"  # "eye 1", "eye 10".., "eye 100"..
    code, head, body = call(server, "GET", "/luna/vaults/eyes/thumbnails/3")
    assert code == 200 and head["Content-Type"] == "image/webp" and body[8:12] == b"WEBP"
    sim = server.get("/luna/vaults/eyes/similar/5?k=4")
    assert len(sim["entries"]) == 4 and 5 not in [e["id"] for e in sim["entries"]]
    assert sim["entries"][0]["similarity"] >= sim["entries"][-1]["similarity"]
    code, _, js = call(server, "GET", "/extensions/luna_vault/luna_vaults.js")
    assert code == 200 and b"registerSidebarTab" in js and TOKEN.encode() in js


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
    got, _, body = call(server, "GET", path)
    assert got == code and json.loads(body)["error"]


def test_delete_undo_and_stale_views(server: ComfyServer, token: str) -> None:
    seen = server.get("/luna/vaults/rings/entries?limit=5")["generation"]
    code, out = change(server, "/luna/vaults/rings/delete", {"ids": [0, 1], "generation": seen}, token)
    assert code == 200 and out["deleted"] == 2 and out["entries"] == 38
    assert len(Vault.open(vaults(server) / "rings.vault")) == 38  # on disk
    code, out2 = change(server, "/luna/vaults/rings/delete", {"ids": [2], "generation": seen}, token)
    assert code == 409 and out2["error"].startswith("vault 'rings' changed since you looked")
    code, bad = change(server, "/luna/vaults/rings/delete", {"ids": [2]}, token)
    assert code == 400 and "generation" in bad["error"]
    code, back = change(server, "/luna/vaults/rings/restore", {"ids": [0, 1], "generation": out["generation"]}, token)
    assert code == 200 and back["entries"] == 40
    code, ex = change(server, "/luna/vaults/rings/export", {"ids": [3, 4, 5], "name": "picked"}, token)
    assert code == 200 and ex["entries"] == 3 and ex["vault"] == "picked"
    code, dup = change(server, "/luna/vaults/rings/export", {"ids": [3], "name": "picked"}, token)
    assert code == 409 and dup["exists"] == "picked"
    code, evil = change(server, "/luna/vaults/rings/export", {"ids": [3], "name": "../evil"}, token)
    assert code == 400 and not (server.base / "models" / "evil.vault").exists()


def test_install_a_package_over_http(server: ComfyServer, token: str, package: Path, tmp_path: Path) -> None:
    data = package.read_bytes()
    code, out = upload(server, data, token)
    assert code == 200 and out == {"installed": "hands.vault", "vault": "hands"}
    assert "hands" in [v["name"] for v in server.get("/luna/vaults")["vaults"]]
    code, again = upload(server, data, token)  # the name is taken: the sidebar offers another name or overwriting
    assert code == 409 and again["exists"] == "hands" and "another name, or overwrite it" in again["error"]
    code, other = upload(server, data, token, "?name=hands-2")
    assert code == 200 and other["vault"] == "hands-2"
    old = (vaults(server) / "hands.vault").stat().st_ino
    code, replaced = upload(server, data, token, "?overwrite=1")
    assert code == 200 and replaced["vault"] == "hands" and (vaults(server) / "hands.vault").stat().st_ino != old
    assert len(Vault.open(vaults(server) / "hands.vault")) == 30
    bad = tmp_path / "bad.lvault"
    with zipfile.ZipFile(package) as z, zipfile.ZipFile(bad, "w") as out_zip:
        for info in z.infolist():
            out_zip.writestr(info, z.read(info))
        out_zip.writestr("../../escape.txt", b"x")
    code, refused = upload(server, bad.read_bytes(), token, "?name=bad")
    assert code == 400 and "unexpected file" in refused["error"] and str(server.base) not in refused["error"]
    assert not (vaults(server) / "bad.vault").exists() and not list(vaults(server).glob(".*"))  # nothing left behind


# ---- what other pages and other machines cannot do -------------------------------------------------
def test_no_request_without_our_page_changes_a_vault(server: ComfyServer, token: str, package: Path) -> None:
    """The attacks of the issue over plain HTTP (where Chromium is absent too): every one is 403 and nothing changes."""
    g = server.get("/luna/vaults/eyes/entries?limit=1")["generation"]
    port = server.port
    plain = {"Content-Type": "text/plain"}
    attacks: list[tuple[dict[str, str], bool]] = [  # headers, with a right token
        ({"Origin": "null", **plain}, False),  # a sandboxed iframe's simple request
        ({"Origin": "null", **JSON_TYPE}, True),  # ... even with the token
        ({"Origin": "http://evil.example", **JSON_TYPE}, True),
        ({"Origin": f"http://127.0.0.1:{port + 1}", **JSON_TYPE}, True),  # another port of this machine
        ({"Origin": f"http://localhost:{port}", **JSON_TYPE}, True),  # same machine, other name: another origin
        ({"Sec-Fetch-Site": "cross-site", **JSON_TYPE}, True),
        ({"Sec-Fetch-Site": "same-site", **JSON_TYPE}, True),
        ({"Host": f"evil.test:{port}", **JSON_TYPE}, True),  # DNS rebinding: the page is same-origin to itself
        ({"Host": f"evil.test:{port}", "Origin": f"http://evil.test:{port}", **JSON_TYPE}, True),
        ({**plain}, False),  # no Origin (a LAN peer, a script): no token, no change
        ({**JSON_TYPE}, False),
        ({**JSON_TYPE, TOKEN: "0" * 43}, False),  # a guessed token
    ]
    targets = [("/luna/vaults/eyes/delete", json.dumps({"ids": [0, 1, 2], "generation": g}).encode()),
               ("/luna/vaults/eyes/restore", json.dumps({"ids": [0], "generation": g}).encode()),
               ("/luna/vaults/eyes/export", json.dumps({"ids": [0, 1], "name": "stolen"}).encode()),
               ("/luna/vaults/install?name=planted", package.read_bytes())]
    before = folder_hash(vaults(server))
    for path, body in targets:
        for headers, with_token in attacks:
            sent = {**headers, **({TOKEN: token} if with_token else {})}
            for prefix in ("", "/api"):
                code, _, raw = call(server, "POST", prefix + path, body, sent)
                assert code == 403, (path, sent, code, raw[:200])
    for g_guess in range(0, 61):  # the brute force over generations, text/plain from Origin: null
        code, _, _ = call(server, "POST", "/luna/vaults/eyes/delete", json.dumps({"ids": [0], "generation": g_guess}).encode(),
                          {"Origin": "null", "Content-Type": "text/plain"})
        assert code == 403
    # the token is only read by a same-origin page: not by another origin, an opaque one or a rebinding name
    for headers in ({"Origin": "null"}, {"Origin": "http://evil.example"}, {"Host": f"evil.test:{port}"},
                    {"Sec-Fetch-Site": "cross-site"}):
        code, _, raw = call(server, "GET", "/luna/vaults/token", headers=headers)
        assert code == 403 and token.encode() not in raw
    assert folder_hash(vaults(server)) == before
    # the same requests from our own page (same origin, with the token) do act
    code, _, raw = call(server, "GET", "/luna/vaults/token", headers={"Origin": f"http://127.0.0.1:{port}",
                                                                      "Sec-Fetch-Site": "same-origin"})
    assert code == 200 and json.loads(raw)["token"] == token
    code, _, raw = call(server, "POST", "/luna/vaults/eyes/delete", json.dumps({"ids": [7], "generation": g}).encode(),
                        {**JSON_TYPE, TOKEN: token, "Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    assert code == 200 and json.loads(raw)["deleted"] == 1
    code, out = change(server, "/luna/vaults/eyes/restore", {"ids": [7], "generation": json.loads(raw)["generation"]}, token)
    assert code == 200 and out["entries"] == 150


def _route_table() -> list[tuple[str, str]]:
    """(method, path) of every route add_routes registers: the malformed-request table must cover them all."""
    import_comfyui()
    from aiohttp import web

    from luna_vault.nodes.route_guard import Guard
    from luna_vault.nodes.routes import add_routes

    table = web.RouteTableDef()
    add_routes(table, Guard("t", frozenset()))
    return sorted((r.method, r.path) for r in table)  # type: ignore[attr-defined]


BIG = 10 ** 25
MALFORMED_BODIES: list[bytes] = [
    b"", b"null", b"[]", b"1", b'"x"', b"{", b"[" * 100_000, b'{"a":' * 50_000, b"{" + b" " * (2 << 20) + b"}",
    b"NaN", b'{"ids": [1e400], "generation": 1}', json.dumps({"ids": [2 ** 70], "generation": 1}).encode(),
    b'{"ids": [-1], "generation": 1}', b'{"ids": [true], "generation": 1}', b'{"ids": "0", "generation": 1}',
    json.dumps({"ids": [0] * 20_000, "generation": 1}).encode(), json.dumps({"ids": [0], "generation": 2 ** 64}).encode(),
    b'{"ids": [0], "generation": -1}', b'{"ids": [0], "generation": 1.0}', b'{"ids": [0], "generation": 1, "extra": 1}',
    b'{"ids": [' + b"1" * 5000 + b'], "generation": 1}', b"\xff\xfe{\x00}\x00", b'{"ids": [0], "ids": [1]}',
    b'{"ids": [999999], "generation": 1}', b'{"ids": [0], "generation": 1, "name": 5}', b'{"ids": [0], "name": "../x"}',
    b'{"ids": [0], "name": "' + b"n" * 5000 + b'"}', b'{"ids": [0], "name": "eyes"}', b'{"ids": [0], "name": ""}',
    b'{"ids": [], "name": "empty-one"}', b"\x00" * 64,
]
BAD_NAMES = ["nope", "..%2F..%2Fx", "%00", "a" * 300, "%ED%A0%80", ".hidden", "%20", "eyes%2F..", "con"]
BAD_IDS = ["-1", str(BIG), "1e3", "0x10", "%201", "1_0", "%D9%A1", "9" * 5000, str(2 ** 63), "150", "%00"]
BAD_QUERIES = ["foo=1", "limit=1&limit=2", "limit=0", "limit=-1", "offset=1e309", f"offset={BIG}", "k=0", "k=abc",
               "text=" + "x" * 500, "filter=quality%3E%3D", "filter=((((", "filter=" + "a" * 5000,
               "filter=quality%3E%3Dnan", "filter=quality%20in%20%5B", "filter=%E2%80%AE", f"k={2 ** 63}",
               "text=%ED%A0%80", "filter=" + "quality>=0.1," * 30]


def _malformed(route: tuple[str, str], token: str, package: bytes) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """Requests to one route, each wrong in one way (with the token: the input checks are what is tested)."""
    method, path = route
    auth = {TOKEN: token}
    out: list[tuple[str, str, bytes | None, dict[str, str]]] = []

    def fill(name: str = "eyes", id_: str = "1") -> str:
        return path.replace("{name}", name).replace("{id}", id_)

    if "{name}" in path:
        out += [(method, fill(name=n), b"{}" if method == "POST" else None, {**JSON_TYPE, **auth}) for n in BAD_NAMES]
    if "{id}" in path:
        out += [(method, fill(id_=i), None, auth) for i in BAD_IDS]
    out += [(method, f"{fill()}?{q}", None, auth) for q in BAD_QUERIES]
    if method == "POST" and path != "/luna/vaults/install":
        out += [(method, fill(), b, {**JSON_TYPE, **auth}) for b in MALFORMED_BODIES]
        out += [(method, fill(), b'{"ids": [0], "generation": 1}', {"Content-Type": t, **auth})
                for t in ("text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded")]
    if path == "/luna/vaults/install":
        card_first = _card_only(package)
        out += [(method, path + q, package, {**OCTETS, **auth})
                for q in ("?name=../x", "?name=", "?overwrite=2", "?overwrite=1&overwrite=1", "?name=" + "n" * 300)]
        out += [(method, path + "?name=fresh", b, {**OCTETS, **auth}) for b in (
            b"", b"PK\x03", b"PK\x05\x06" + bytes(18), b"\x00" * 70_000, package[:100], package[:-10],
            card_first(b"{"), card_first(b"[" * 100_000), card_first(b'{"format": "luna-vault-package", "version": 1}'),
            card_first(json.dumps({"format": "luna-vault-package", "version": 1, "name": "../x",
                                   "files": [{"name": "vault/manifest.json", "bytes": 10, "sha256": "0" * 64}]}).encode()),
            _other_first(package))]
        out += [(method, path, package, {"Content-Type": t, **auth}) for t in ("text/plain", "application/zip")]
    return out


def _card_only(package: bytes) -> Any:
    """A zip whose first member is card.json with the given bytes (then the package's other members)."""
    import io

    def make(card: bytes) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(buf, "w") as z:
            z.writestr("card.json", card)
            for info in src.infolist():
                if info.filename != "card.json":
                    z.writestr(info, src.read(info))
        return buf.getvalue()
    return make


def _other_first(package: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(buf, "w") as z:
        for info in reversed(src.infolist()):
            z.writestr(info, src.read(info))
    return buf.getvalue()


def test_malformed_requests_to_every_route_never_get_a_500(server: ComfyServer, token: str, package: Path) -> None:
    routes = _route_table()
    assert ("POST", "/luna/vaults/install") in routes and len(routes) == 10
    cases = [c for r in routes for c in _malformed(r, token, package.read_bytes())]
    before = folder_hash(vaults(server))
    seen: dict[int, int] = {}
    for method, path, body, headers in cases:
        code, _, raw = call(server, method, path, body, headers)
        assert code < 500, (method, path[:120], (body or b"")[:80], code, raw[:300])
        seen[code] = seen.get(code, 0) + 1
        if code >= 400:
            err = json.loads(raw)["error"]
            assert err and "\n" not in err and str(server.workdir) not in err and "/tmp" not in err, (path[:120], err)
    assert folder_hash(vaults(server)) == before  # nothing was changed or left behind
    assert seen.get(200, 0) <= 40 and sum(seen.values()) == len(cases) > 300  # 200: a page with an odd but valid query
    log = server.log.read_text(errors="replace")
    assert "Luna Vault: " not in log and "Error handling request" not in log  # no handler failed


# ---- uploads: refused as soon as they can be ----------------------------------------------------------
def _raw_upload(server: ComfyServer, token: str, length: int, first: bytes, query: str = "") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    s.sendall((f"POST /luna/vaults/install{query} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
               f"Content-Type: application/octet-stream\r\n{TOKEN}: {token}\r\nContent-Length: {length}\r\n\r\n").encode())
    s.sendall(first)
    return s


def _answer(s: socket.socket) -> tuple[int, Any]:
    """The server's answer on a connection whose request body is not all sent."""
    r = http.client.HTTPResponse(s)
    r.begin()
    return r.status, json.loads(r.read())


def _no_leftovers(server: ComfyServer) -> bool:
    """Wait (bounded) until the server has cleaned up after a cut-off upload."""
    for _ in range(100):
        if not list(vaults(server).glob(".*")):
            return True
        time.sleep(0.1)
    return False


def test_uploads_are_refused_at_the_first_bytes_that_give_them_away(server: ComfyServer, token: str,
                                                                    package: Path) -> None:
    before = folder_hash(vaults(server))
    # 2 GiB announced, 64 KiB of zeros sent: the answer comes without another byte
    s = _raw_upload(server, token, 2 << 30, bytes(64 << 10))
    code, out = _answer(s)
    s.close()
    assert code == 400 and out["error"].startswith("not a package") and "00 00 00 00" in out["error"]
    # more announced than its card declares: refused once the card has arrived
    data = package.read_bytes()
    s = _raw_upload(server, token, len(data) + (64 << 20), data[:200_000], "?name=big")
    code, out = _answer(s)
    s.close()
    assert code == 413 and "its card declares" in out["error"]
    # one install at a time: a second one while the first is still arriving is refused
    first = _raw_upload(server, token, len(data), data[:1000], "?name=slow")
    for _ in range(100):  # the first has started (its upload file exists)
        if list(vaults(server).glob(".upload-*")):
            break
        time.sleep(0.1)
    code, busy = upload(server, data, token, "?name=second")
    assert code == 409 and "another package is being installed" in busy["error"]
    first.close()  # cut off: the server drops what it had
    assert _no_leftovers(server) and folder_hash(vaults(server)) == before
    code, out = upload(server, data, token, "?name=after")  # and the next install works
    assert code == 200 and out["vault"] == "after"
