"""Issue 28's hostile inputs, kept as a corpus: vaults, packages and image folders from a stranger.

Each case is refused in one line (exit 2 on the command line, no traceback) or answered correctly.
While a case runs, an audit hook records every file opened and every program started: nothing
outside the vault (a canary folder, /etc/passwd, /proc/self/environ) is opened, no program runs
(a fake `gs` would leave a marker), nothing is lost, nothing is left behind. Sizes are checked
before anything large is read (tracemalloc peaks, decoders never entered); no timed assertions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile
from safetensors import safe_open
from safetensors.numpy import save_file
from test_vault_trust import edit_manifest, manifest

from helpers import clustered
from luna_vault.cli import main
from luna_vault.core.content import pil_pixels_hash, pixels_hash
from luna_vault.core.images import ImageRefused, decode_rgb, header_size
from luna_vault.extraction.encoders import RandomImageEncoder
from luna_vault.extraction.pipeline import Extractor, write_report
from luna_vault.vault import (
    EncoderFingerprint,
    Vault,
    VaultCorruptError,
    VaultError,
    VaultWriter,
    append,
    build,
    parse_filter,
    search,
)
from luna_vault.vault import package as package_mod
from luna_vault.vault import store as store_mod
from luna_vault.vault.manifest import MAX_GENERATION, SEGMENT_NAME, file_generation
from luna_vault.vault.package import PackageError, describe_package, install, pack
from luna_vault.vault.thumbnails import decode_thumbnail, make_thumbnail

D = 16
ENC = EncoderFingerprint("test-vit", D, "w1")

# ---- watching a case: files opened, programs started ---------------------------------------------------
_WATCH: dict[str, Any] = {"on": False, "opened": [], "spawned": []}
_SPAWN_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile"}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCH["on"]:
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _WATCH["opened"].append(os.path.realpath(os.fsdecode(args[0])))
    elif event in _SPAWN_EVENTS:
        _WATCH["spawned"].append((event, str(args)[:200]))


sys.addaudithook(_audit)  # (a hook cannot be removed: it records only inside `watched`)


@contextlib.contextmanager
def watched(*forbidden: Path | str) -> Iterator[dict[str, Any]]:
    """Record what the block opens and starts; afterwards assert it opened nothing under `forbidden` (files or
    folders, compared after resolving links) and started no program."""
    _WATCH.update(on=True, opened=[], spawned=[])
    try:
        yield _WATCH
    finally:
        _WATCH["on"] = False
    bad = [os.path.realpath(f) for f in forbidden]
    touched = [p for p in _WATCH["opened"] if any(p == b or p.startswith(b + os.sep) for b in bad)]
    assert not touched, f"opened outside the vault: {touched[:3]}"
    assert not _WATCH["spawned"], f"started a program: {_WATCH['spawned'][:3]}"


def one_line_refusal(args: list[str], capsys: pytest.CaptureFixture[str], match: str) -> str:
    """Run the CLI; assert exit 2 with one `error:` line matching `match` and no traceback."""
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(match, err), err
    return err


# ---- building blocks ------------------------------------------------------------------------------------
def _thumb(i: int) -> bytes:
    return make_thumbnail(np.full((8, 8, 3), (i * 37) % 255, np.uint8))


def small_vault(path: Path, n: int = 12, seed: int = 1, metas: list[dict[str, Any]] | None = None,
                thumbs: list[bytes] | None = None, prompts: list[str] | None = None, category: str = "eyes") -> Path:
    x = clustered(n, D, seed=seed)
    build(path, x, prompts or [f"p{i}" for i in range(n)], metas or [{"seed": 30 + i} for i in range(n)],
          thumbs if thumbs is not None else [_thumb(i) for i in range(n)], encoder=ENC, category=category)
    return path


def rewrite_segment(path: Path, fn: Callable[[dict[str, np.ndarray]], None], index: int = 0) -> str:
    """Change a segment's tensors as an attacker who knows the format would, keeping size and checksum right."""
    file = manifest(path)["segments"][index]["file"]
    with safe_open(str(path / file), framework="numpy") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    fn(t)
    save_file(t, str(path / file), metadata=meta)
    data = (path / file).read_bytes()

    def fix(d: dict[str, Any]) -> None:
        for s in d["segments"]:
            if s["file"] == file:
                s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    edit_manifest(path, fix)
    return file


def set_blobs(t: dict[str, np.ndarray], kind: str, items: list[bytes]) -> None:
    t[f"{kind}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in items])]).astype(np.int64)
    t[f"{kind}_blob"] = np.frombuffer(b"".join(items), np.uint8).copy()


def blobs(t: dict[str, np.ndarray], kind: str) -> list[bytes]:
    offs, blob = t[f"{kind}_offsets"], t[f"{kind}_blob"]
    return [bytes(blob[offs[i]: offs[i + 1]]) for i in range(len(offs) - 1)]


def embeddings_file(path: Path, x: np.ndarray) -> Path:
    save_file({"embeddings": np.ascontiguousarray(x, np.float32)}, str(path))
    return path


def png_claiming(w: int, h: int, chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG header claiming w x h pixels (no pixel data): what a decoder would have to allocate for."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + b"".join(chunk(k, b) for k, b in chunks) + chunk(b"IEND", b""))


def with_text(png: bytes, key: bytes, value: bytes) -> bytes:
    """The PNG with a tEXt chunk key=value before its IEND."""
    body = key + b"\0" + value
    return png[:-12] + struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body)) + png[-12:]


def eps_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (200, 10, 10)).save(buf, "EPS")
    return buf.getvalue()


def png_bytes(seed: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def fake_gs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pillow's Ghostscript made a script that leaves a marker: where an EPS reached it, the marker exists."""
    marker = tmp_path / "gs-ran"
    gs = tmp_path / "bin" / "gs"
    gs.parent.mkdir()
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(gs))
    with pytest.raises(subprocess.CalledProcessError):  # the canary works: Pillow left to itself hands an EPS to "gs"
        Image.open(io.BytesIO(eps_bytes())).load()
    assert marker.exists()
    marker.unlink()
    return marker


# ---- images: the gate ------------------------------------------------------------------------------------
def test_an_eps_file_never_reaches_ghostscript(tmp_path: Path, fake_gs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eps = eps_bytes()
    with pytest.raises(ImageRefused, match=r"is a file starting b'%!PS-Ado', not a PNG, JPEG, WebP, GIF or BMP"):
        decode_rgb(eps)
    # as a stored preview: the card's contact sheet shows a blank cell
    vault = small_vault(tmp_path / "v.vault", thumbs=[eps] + [_thumb(i) for i in range(1, 12)])
    with watched():
        assert main(["card", str(vault)]) == 0
        with pytest.raises(ValueError, match="not a WebP, PNG or JPEG"):
            decode_thumbnail(eps)
    capsys.readouterr()
    with pytest.raises(PackageError, match=r"entry 0: stored preview is a file starting b'%!PS-Ado'"):
        install(_package(tmp_path, "eyes", 12, seed=1, thumbs=[eps] + [_thumb(i) for i in range(1, 12)]), tmp_path / "to")
    # as a package's contact sheet
    pkg = _package(tmp_path, "clean", 12, seed=1)
    evil = tmp_path / "evil.lvault"
    with zipfile.ZipFile(pkg) as z, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            out.writestr(info.filename, eps if info.filename == "contact_sheet.webp" else z.read(info))
    capsys.readouterr()
    with watched():
        one_line_refusal(["install", str(evil), "--to", str(tmp_path / "to")], capsys, "contact_sheet.webp: stored preview is")
    # named .png in a folder: extract and read
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "evil.png").write_bytes(eps)
    (folder / "evil.txt").write_text("a red square")
    (folder / "good.png").write_bytes(png_bytes(1))
    (folder / "good.txt").write_text("noise")
    with watched():
        report = Extractor(RandomImageEncoder(dim=D), vault=tmp_path / "x.vault", workers=0).run(folder)
    assert report.total_added == 1 and dict(report.skipped)["evil.png"].startswith("unreadable image: the file is a file starting")
    capsys.readouterr()
    with watched():
        one_line_refusal(["read", str(folder / "evil.png")], capsys, "evil.png is not an image Pillow can open here")
    assert not fake_gs.exists()


def test_header_sizes_agree_with_pillow() -> None:
    rng = np.random.default_rng(1)
    for w, h in [(96, 64), (17, 96), (1, 1), (300, 7)]:
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cases = [("WEBP", {"quality": 80}), ("WEBP", {"lossless": True}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
                 ("JPEG", {"quality": 90}), ("JPEG", {"progressive": True, "exif": Image.Exif().tobytes()})]
        for fmt, kw in cases:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format=fmt, **kw)
            assert header_size(buf.getvalue()) == (w, h) == Image.open(io.BytesIO(buf.getvalue())).size, (fmt, kw)
        alpha = io.BytesIO()
        Image.fromarray(np.dstack([arr, arr[..., :1]])).save(alpha, format="WEBP", quality=80)  # VP8X
        assert header_size(alpha.getvalue()) == (w, h)
    assert header_size(png_claiming(50_000, 50_000)) == (50_000, 50_000)
    assert header_size(b"\xff\xd8\xff\xe0\x00") is None and header_size(b"%!PS-Adobe-3.0") is None


def test_the_content_hash_of_a_decoded_image_is_the_arrays() -> None:
    for w, h in [(1, 1), (37, 53), (3000, 7), (7, 3000)]:
        a = np.random.default_rng(w).integers(0, 255, (h, w, 3), dtype=np.uint8)
        assert pil_pixels_hash(Image.fromarray(a)) == pixels_hash(a) == pil_pixels_hash(Image.fromarray(a), band_bytes=100)


def test_huge_images_are_refused_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    loads: list[Any] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (loads.append(self.size), real_load(self))[1])
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "big.png").write_bytes(png_claiming(9_400, 9_400))
    (folder / "big.txt").write_text("a huge upscale")
    (folder / "huge.png").write_bytes(png_claiming(30_000, 30_000, ((b"tEXt", b"parameters\0a cat\nSteps: 20"),)))
    (folder / "huge.txt").write_text("x")
    (folder / "good.png").write_bytes(png_bytes(2))
    (folder / "good.txt").write_text("noise")
    tracemalloc.start()
    report = Extractor(RandomImageEncoder(dim=D), vault=tmp_path / "x.vault", workers=0).run(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    reasons = dict(report.skipped)
    assert report.total_added == 1 and "9400 x 9400 pixels (88.4 MP), over the" in reasons["big.png"]
    assert "30000 x 30000" in reasons["huge.png"]
    assert (24, 24) in loads and all(size == (24, 24) for size in loads)  # no decoder entered for the big ones
    assert peak < 64 << 20
    assert main(["read", str(folder / "huge.png"), str(folder / "good.png")]) == 0
    out = capsys.readouterr().out
    assert "huge.png: no prompt: not read: the file is 30000 x 30000 pixels" in out and "Traceback" not in out


# ---- the vault's files: links, pipes, the writer lock ---------------------------------------------------
def test_links_pipes_and_devices_in_a_vault_are_refused_unopened(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = small_vault(tmp_path / "good.vault")
    outside = tmp_path / "outside"
    outside.mkdir()
    seg = manifest(good)["segments"][0]["file"]

    def fresh() -> Path:
        v = tmp_path / "v.vault"
        shutil.rmtree(v, ignore_errors=True)
        shutil.copytree(good, v)
        return v

    # a segment that is a link to a perfectly valid copy of itself elsewhere: still refused, the copy unread
    v = fresh()
    shutil.copy(v / seg, outside / seg)
    (v / seg).unlink()
    (v / seg).symlink_to(outside / seg)
    with watched(outside):
        one_line_refusal(["info", str(v)], capsys, rf"{seg} is a link \(links are not followed")
    for target in ("/etc/passwd", "/proc/self/environ"):
        v = fresh()
        (v / seg).unlink()
        (v / seg).symlink_to(target)
        with watched(target, outside):
            one_line_refusal(["info", str(v)], capsys, "is a link")
        v = fresh()
        (v / "manifest.json").unlink()
        (v / "manifest.json").symlink_to(target)
        with watched(target, outside):
            one_line_refusal(["info", str(v)], capsys, "manifest.json: manifest.json is a link")
    # a pipe would block a plain open() forever; a folder is no file either
    for make in (os.mkfifo, os.mkdir):
        v = fresh()
        (v / seg).unlink()
        make(v / seg)
        done = threading.Event()
        th = threading.Thread(target=lambda v=v, done=done: (main(["info", str(v)]), done.set()), daemon=True)
        th.start()
        th.join(60)
        assert done.is_set(), "opening a vault whose segment is a pipe hung"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("a pipe" in err or "a folder" in err), err
    # the writer lock linked to one of your files: refused, the file neither opened nor truncated
    canary = outside / "precious.txt"
    canary.write_text("precious")
    v = fresh()
    (v / ".lock").unlink(missing_ok=True)
    (v / ".lock").symlink_to(canary)
    with watched(outside):
        with pytest.raises(VaultError, match=r"\.lock is not a plain file"):
            append(v, clustered(1, D, seed=5), ["new"], encoder=ENC)
    assert canary.read_text() == "precious"


# ---- writers: install against a live appender, generations, leftovers ------------------------------------
def _package(tmp_path: Path, name: str, n: int, seed: int, thumbs: list[bytes] | None = None) -> Path:
    src = small_vault(tmp_path / "src" / f"{name}.vault", n=n, seed=seed, thumbs=thumbs)
    out = tmp_path / f"{name}-{seed}.lvault"
    pack(src, out)
    return out


def test_install_overwrite_against_a_live_appender(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both orders: the vault ends wholly old (+ the append, then replaced as asked) or wholly new (+ an append
    that came after); the appender never writes into the new vault on the old one's terms."""
    to = tmp_path / "to"
    new_pkg = _package(tmp_path, "eyes", 20, seed=2)
    extra = clustered(3, D, seed=9)
    real_lock = package_mod.writer_lock

    # 1. the appender holds the lock first: install waits, then replaces the vault (with the append in it)
    install(_package(tmp_path / "a", "eyes", 10, seed=1), to)
    target = to / "eyes.vault"
    waiting = threading.Event()

    def lock_spy(folder: Path, *a: Any, **k: Any) -> Any:
        if Path(folder) == target:
            waiting.set()
        return real_lock(folder, *a, **k)
    monkeypatch.setattr(package_mod, "writer_lock", lock_spy)
    result: list[Any] = []
    with VaultWriter.open(target) as w:
        th = threading.Thread(target=lambda: result.append(install(new_pkg, to, overwrite=True)))
        th.start()
        assert waiting.wait(60)
        w.add(extra, ["late 1", "late 2", "late 3"])
        assert th.is_alive()  # still waiting for this writer
    th.join(60)
    assert result == [target]
    v = Vault.open(target)
    assert (len(v), manifest(target)["vault_id"]) == (20, describe_package(new_pkg)["vault_id"])  # wholly new
    assert sorted(p.name for p in to.iterdir()) == ["eyes.vault"]

    # 2. install swaps while an appender waits for the lock: the appender then appends to the new vault
    shutil.rmtree(to)
    install(_package(tmp_path / "b", "eyes", 10, seed=3), to)
    monkeypatch.setattr(package_mod, "writer_lock", real_lock)
    appender_waits = threading.Event()
    real_store_lock = store_mod.writer_lock

    def appender_lock(folder: Path, *a: Any, **k: Any) -> Any:
        appender_waits.set()
        return real_store_lock(folder, *a, **k)
    monkeypatch.setattr(store_mod, "writer_lock", appender_lock)
    real_swap = package_mod._swap_in
    reports: list[Any] = []
    threads: list[threading.Thread] = []

    def swap_spy(*a: Any) -> None:  # runs holding the old vault's lock
        th = threading.Thread(target=lambda: reports.append(append(target, extra, ["late 1", "late 2", "late 3"], encoder=ENC)))
        th.start()
        threads.append(th)
        assert appender_waits.wait(60)
        real_swap(*a)
    monkeypatch.setattr(package_mod, "_swap_in", swap_spy)
    install(new_pkg, to, overwrite=True)
    threads[0].join(60)
    v = Vault.open(target)
    assert reports[0].added == 3 and len(v) == 23 and v.manifest.vault_id == describe_package(new_pkg)["vault_id"]
    assert [v.prompt(int(p)) for p in v.prompt_ids(range(20, 23))] == ["late 1", "late 2", "late 3"]
    assert v.verify() == [] and sorted(p.name for p in to.iterdir()) == ["eyes.vault"]


@pytest.mark.parametrize("generation", [0, 999_998, 999_999, 1_000_000, 10**9, MAX_GENERATION - 1])
def test_every_generation_a_writer_reaches_reads_back(tmp_path: Path, generation: int) -> None:
    v = small_vault(tmp_path / "v.vault", n=4)
    edit_manifest(v, lambda d: d.update(generation=generation))
    append(v, clustered(2, D, seed=7), ["a", "b"], encoder=ENC)
    m = Vault.open(v).manifest
    assert (len(Vault.open(v)), m.generation) == (6, generation + 1)
    newest = m.segments[-1].file
    assert SEGMENT_NAME.match(newest) and file_generation(newest) == generation + 1


def test_the_generation_limit_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = small_vault(tmp_path / "v.vault", n=4)
    edit_manifest(v, lambda d: d.update(generation=MAX_GENERATION))
    assert len(Vault.open(v)) == 4  # readable...
    with pytest.raises(VaultError, match="committed 999,999,999,999 times, the most a vault records"):
        append(v, clustered(1, D, seed=7), ["a"], encoder=ENC)  # ...but no writer starts on it
    assert len(Vault.open(v)) == 4
    edit_manifest(v, lambda d: d.update(generation=MAX_GENERATION + 1))
    one_line_refusal(["info", str(v)], capsys, r"generation 1000000000000 is outside 0\.\.999999999999")


def _run_killed(code: str, ready: Callable[[], bool], tmp_path: Path) -> None:
    """Run `code` in a child Python, kill -9 it once `ready()` holds (or it ends)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)


@pytest.mark.slow
def test_kill_9_during_install_and_pack_leaves_nothing_the_next_run_keeps(tmp_path: Path) -> None:
    pkg = _package(tmp_path, "eyes", 200, seed=4)
    to = tmp_path / "to"
    slow = "lambda d, t: __import__('time').sleep(0.5)"
    for _ in range(2):  # killed while copying; then again over an installed vault (overwrite)
        _run_killed(f"from luna_vault.vault.package import install; install({str(pkg)!r}, {str(to)!r}, "
                    f"overwrite=True, progress={slow})",
                    lambda: any(to.glob(".eyes.installing-*/seg-*")), tmp_path)  # killed mid-copy, lock held
        assert any(p.name.startswith(".eyes.installing-") for p in to.iterdir())  # what kill -9 leaves...
        install(pkg, to, overwrite=True)
        assert sorted(p.name for p in to.iterdir()) == ["eyes.vault"]  # ...the next install removes
        assert len(Vault.open(to / "eyes.vault")) == 200
    old = to / ".eyes.installing-fromanolderversion"  # no lock file: removed once it is old enough
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    install(pkg, to, overwrite=True)
    assert sorted(p.name for p in to.iterdir()) == ["eyes.vault"]

    src = to / "eyes.vault"
    out = tmp_path / "packs" / "again.lvault"
    _run_killed(f"from luna_vault.vault.package import pack; pack({str(src)!r}, {str(out)!r}, progress={slow})",
                lambda: any(out.parent.glob(".again.lvault.tmp-*")), tmp_path)
    assert list(out.parent.glob(".again.lvault.tmp-*"))
    pack(src, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["again.lvault"]
    install(out, tmp_path / "to2")
    assert len(Vault.open(tmp_path / "to2" / "eyes.vault")) == 200


# ---- what a vault says: metadata, prompts, norms, numbers ----------------------------------------------
def test_metadata_of_two_lines_is_refused_not_shifted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = small_vault(tmp_path / "v.vault")  # entry i has seed 30 + i
    q = embeddings_file(tmp_path / "q.safetensors", clustered(1, D, seed=1))

    def two_lines(t: dict[str, np.ndarray]) -> None:
        items = blobs(t, "meta")
        items[3] = b'{"seed":99}\n' + items[3]  # entry 3 holds two objects: every later one would shift by one
        set_blobs(t, "meta", items)
    rewrite_segment(v, two_lines)
    one_line_refusal(["query", str(v), "--embeddings", str(q), "--filter", "seed=37"], capsys,
                     r"entry 3's metadata: it is not exactly one JSON value followed by a newline")
    assert main(["verify", str(v)]) == 1
    assert "entry 3's metadata" in capsys.readouterr().out
    with pytest.raises(VaultCorruptError, match="entry 3: entry metadata: it is not valid JSON"):
        Vault.open(v).metadata(3)


def test_entries_that_trade_bytes_cannot_realign(tmp_path: Path) -> None:
    """Entry 1 opens a string that entry 2 closes, entry 5 holds two objects: the counts add up, yet each entry
    is parsed on its own, so the vault is refused rather than read with shifted metadata."""
    v = small_vault(tmp_path / "v.vault")

    def trade(t: dict[str, np.ndarray]) -> None:
        items = blobs(t, "meta")
        items[1], items[2], items[5] = b'{"seed":"\n', b'"}\n', b'{},{}\n'
        set_blobs(t, "meta", items)
    rewrite_segment(v, trade)
    with pytest.raises(VaultCorruptError, match="entry 1's metadata"):
        Vault.open(v).filter_mask("seed=31")


@pytest.mark.parametrize("bad, why", [
    (b'[1, 2]\n', "is a JSON list, not an object"),
    (b'{"seed": NaN}\n', "NaN is not a number JSON may hold"),
    (b'{"seed": 1e999}\n', "not finite"),
    (b'{"seed": ' + b"9" * 400 + b'}\n', "400-digit integer"),
    (b'{"a":' * 100 + b'1' + b'}' * 100 + b'\n', "nests more than 32 levels"),
    (b'{"p": "\xff\xfe"}\n', "not UTF-8"),
])
def test_metadata_a_reader_cannot_trust_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: bytes,
                                                    why: str) -> None:
    v = small_vault(tmp_path / "v.vault")
    q = embeddings_file(tmp_path / "q.safetensors", clustered(1, D, seed=1))

    def swap(t: dict[str, np.ndarray]) -> None:
        items = blobs(t, "meta")
        items[4] = bad
        set_blobs(t, "meta", items)
    rewrite_segment(v, swap)
    for args in (["query", str(v), "--embeddings", str(q), "--filter", "seed=37"], ["card", str(v)],
                 ["pack", str(v), "-o", str(tmp_path / "v.lvault")]):
        one_line_refusal(args, capsys, re.escape(why))
    assert not (tmp_path / "v.lvault").exists()
    assert main(["verify", str(v)]) == 1 and why in capsys.readouterr().out


def test_a_prompt_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = small_vault(tmp_path / "v.vault")
    x = clustered(12, D, seed=1)

    def swap(t: dict[str, np.ndarray]) -> None:
        items = blobs(t, "prompt")
        items[2] = b"p\xff\xfe2"
        set_blobs(t, "prompt", items)
    rewrite_segment(v, swap)
    assert main(["verify", str(v)]) == 1 and "prompt 2 is not UTF-8 text" in capsys.readouterr().out
    q = embeddings_file(tmp_path / "q.safetensors", x[2:3])
    one_line_refusal(["query", str(v), "--embeddings", str(q), "-k", "1"], capsys, "prompt 2 is not UTF-8 text")
    # a package of it is refused by install (pack copies the files as they are)
    edit_manifest(v, lambda d: None)
    pkg = tmp_path / "v.lvault"
    pack(v, pkg)
    with pytest.raises(PackageError, match="prompt 2 is not UTF-8 text"):
        install(pkg, tmp_path / "to")
    assert not (tmp_path / "to").exists() or not any((tmp_path / "to").iterdir())


def test_no_similarity_above_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = clustered(12, D, seed=1)
    v = small_vault(tmp_path / "v.vault")
    scaled = tmp_path / "scaled.vault"
    shutil.copytree(v, scaled)
    rewrite_segment(scaled, lambda t: t["embeddings"].__setitem__(5, (t["embeddings"][5].astype(np.float32) * 1.009).astype(np.float16)))
    one_line_refusal(["info", str(scaled)], capsys, r"not unit length \(entry 5 has norm 1\.009")
    rewrite_segment(v, lambda t: t["embeddings"].__setitem__(5, (t["embeddings"][5].astype(np.float32) * 1.0009).astype(np.float16)))
    [r] = search(Vault.open(v), x[5], k=3)
    assert r.ids[0] == 5 and r.similarities.max() == 1.0  # clamped, never above


def test_numbers_no_program_should_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = small_vault(tmp_path / "v.vault")
    raw = (v / "manifest.json").read_text().replace('"dim": 16', '"dim": Infinity')
    (v / "manifest.json").write_text(raw)
    one_line_refusal(["info", str(v)], capsys, "Infinity is not a number JSON may hold")
    (v / "manifest.json").write_text(raw.replace('"dim": Infinity', '"dim": 16.7'))
    one_line_refusal(["info", str(v)], capsys, r"encoder dim is 16\.7, not a whole number")
    flt = parse_filter("seed=37, seed>=1")  # metadata made elsewhere (not a vault's): no OverflowError either
    assert not flt.matches({"seed": 10**400}) and flt.matches({"seed": 37})


# ---- packages --------------------------------------------------------------------------------------------
def test_a_card_is_advisory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = _package(tmp_path, "eyes", 12, seed=1)

    def recard(fn: Callable[[dict[str, Any]], None], out: Path) -> Path:
        with zipfile.ZipFile(pkg) as z, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as o:
            for info in z.infolist():
                data = z.read(info)
                if info.filename == "card.json":
                    card = json.loads(data)
                    fn(card)
                    data = json.dumps(card).encode()
                o.writestr(info.filename, data)
        return out

    lying = recard(lambda c: c["encoder"].update(name="ViT-bigG (official)"), tmp_path / "lying.lvault")
    assert describe_package(lying)["verified"] is False  # --card-only: the card as its packager wrote it
    with pytest.raises(PackageError, match=r"the card says encoder .*ViT-bigG \(official\).*the vault holds .*test-vit"):
        install(lying, tmp_path / "to")
    claims = recard(lambda c: (c.update(official=True, endorsed_by={"nested": "dropped"}), c["claims"].update(licence="MIT")),
                    tmp_path / "claims.lvault")
    path = install(claims, tmp_path / "to")
    card = json.loads((path / "card.json").read_text())
    assert card["verified"] is True and card["encoder"]["name"] == "test-vit" and card["entries"] == 12
    assert card["claims"]["official"] is True and card["claims"]["licence"] == "MIT" and "endorsed_by" not in card["claims"]
    assert "official" not in card and "as the packager states them" in (path / "README.md").read_text()


def _sparse_zip(path: Path, count: int, cd_size: int, zip64: bool = False) -> Path:
    """A file whose end record declares `count` members in a `cd_size`-byte directory (a sparse file: no disk)."""
    with open(path, "wb") as f:
        f.truncate(cd_size)
        f.seek(cd_size)
        if zip64:
            f.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, 0))
            f.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, cd_size, 1))
            f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        else:
            f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count & 0xFFFF, count & 0xFFFF, cd_size, 0, 0))
    return path


@pytest.mark.parametrize("count, cd_size, zip64, what", [
    (1_000_000, 46_000_000, True, "1,000,000 files"),
    (65_000, 46 * 65_000, False, "65,000 files"),
    (3, 46_000_000, False, "3 files in 46,000,000 bytes"),  # a count that lies: the size still tells
])
def test_a_zip_with_a_million_members_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str], count: int,
                                                                cd_size: int, zip64: bool, what: str) -> None:
    pkg = _sparse_zip(tmp_path / "many.lvault", count, cd_size, zip64)
    opened: list[Any] = []
    real = zipfile.ZipFile.__init__
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda self, *a, **k: (opened.append(a), real(self, *a, **k))[1])
    tracemalloc.start()
    one_line_refusal(["install", str(pkg), "--card-only"], capsys, f"declares {what}")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert not opened and peak < 4 << 20


# ---- extract: every bad file is a reported skip ---------------------------------------------------------
def test_extract_reports_each_bad_file_and_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "eyes").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(50))
    (outside / "secret.txt").write_text("my private notes")
    for i in range(3):
        (folder / "eyes" / f"good{i}.png").write_bytes(png_bytes(i))
        (folder / "eyes" / f"good{i}.txt").write_text(f"good {i}")
    bad_name = os.fsdecode(bytes(folder / "eyes") + b"/caf\xe9.png")
    Path(bad_name).write_bytes(png_bytes(10))
    sidecars = {"nan": '{"prompt": "x", "cfg": NaN}', "inf": '{"prompt": "x", "seed": 1e999}',
                "deep": '{"prompt": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}", "list": "[1]"}
    for j, (name, text) in enumerate(sidecars.items()):
        (folder / "eyes" / f"{name}.png").write_bytes(png_bytes(20 + j))
        (folder / "eyes" / f"{name}.json").write_text(text)
    (folder / "eyes" / "linked.png").symlink_to(outside / "secret.png")
    (folder / "eyes" / "sidecar.png").write_bytes(png_bytes(30))
    (folder / "eyes" / "sidecar.txt").symlink_to(outside / "secret.txt")
    # A1111 texts that once ended the run from inside a decode worker: now added, or one file's skip
    (folder / "eyes" / "a1111.png").write_bytes(with_text(png_bytes(31), b"parameters", b"a cat\nSteps: 20, CFG scale: nan, Seed: 1"))
    (folder / "eyes" / "lora.png").write_bytes(with_text(png_bytes(32), b"parameters", b"a cat <lora:x:.>\nSteps: 20, Seed: 1"))
    with watched(outside):
        report = Extractor(RandomImageEncoder(dim=D), vault=tmp_path / "x.vault", workers=0).run(folder)
    reasons = dict(report.skipped)
    assert reasons["eyes/caf\\xe9.png"] == "skipped: its file name is not UTF-8 text (rename the file)"
    assert "NaN is not a number" in reasons["eyes/nan.png"] and "not finite" in reasons["eyes/inf.png"]
    assert "nests more than 32" in reasons["eyes/deep.png"] and "holds list" in reasons["eyes/list.png"]
    assert "a link to a file outside the dataset folder" in reasons["eyes/linked.png"]
    assert "sidecar.txt is a link to a file outside" in reasons["eyes/sidecar.png"]
    v = Vault.open(tmp_path / "x.vault")
    prompts = sorted(v.prompt(int(p)) for p in v.prompt_ids(range(len(v))))
    assert {"good 0", "good 1", "good 2"} <= set(prompts) and "my private notes" not in prompts
    assert v.verify() == []  # a1111.png: added without a NaN, or skipped: never the end of the run
    write_report(report, tmp_path / "report.jsonl")
    assert len((tmp_path / "report.jsonl").read_text(encoding="utf-8").splitlines()) == len(report.skipped)


# ---- what reaches a terminal -----------------------------------------------------------------------------
def test_control_characters_are_escaped_on_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = "a cat\x1b]0;pwned\x07\x1b[2J\r\u202egnp.exe"
    v = small_vault(tmp_path / "v.vault", prompts=[evil] + [f"p{i}" for i in range(1, 12)], category="eyes\u202e")
    q = embeddings_file(tmp_path / "q.safetensors", clustered(12, D, seed=1)[:1])
    assert main(["query", str(v), "--embeddings", str(q), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "a cat\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\u202egnp.exe" in out and "\x1b" not in out and "\u202e" not in out
    assert main(["info", str(v)]) == 0
    out = capsys.readouterr().out
    assert "eyes\\u202e" in out and "\u202e" not in out
    assert main(["query", str(v), "--embeddings", str(q), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"][0]["matches"][0]["prompt"] == evil  # data itself unchanged
