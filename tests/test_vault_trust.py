"""Vaults from strangers: every malicious or damaged vault below is refused with one clear line, or answered
correctly; nothing crashes, nothing outside the vault folder is read, no raw exception reaches the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

from helpers import clustered
from luna_vault.cli import main
from luna_vault.vault import (
    DimensionError,
    EncoderFingerprint,
    QueryError,
    Vault,
    VaultCorruptError,
    VaultError,
    VaultFormatError,
    VaultWriter,
    append,
    build,
    compact,
    delete_where,
    get_index,
    parse_filter,
    search,
)
from luna_vault.vault.manifest import MAX_SEGMENTS
from luna_vault.vault.preview import entry_thumbnails
from luna_vault.vault.thumbnails import decode_thumbnail, make_thumbnail

D = 16
ENC = EncoderFingerprint("test-vit", D, "w1")


def _thumb(i: int) -> bytes:
    return make_thumbnail(np.full((8, 8, 3), (i * 37) % 255, np.uint8))


@pytest.fixture()
def vault(tmp_path: Path) -> Path:
    """Three segments (a build and two appends), thumbnails, and two deleted entries."""
    path = tmp_path / "v.vault"
    x = clustered(90, D, seed=1)
    metas = [{"quality": (i % 10) / 10, "checkpoint": "a" if i % 2 else "b"} for i in range(90)]
    build(path, x[:30], [f"p{i}" for i in range(30)], metas[:30], [_thumb(i) for i in range(30)], encoder=ENC, category="eyes")
    append(path, x[30:60], [f"p{i}" for i in range(30, 60)], metas[30:60], [_thumb(i) for i in range(30, 60)], encoder=ENC)
    append(path, x[60:], [f"p{i}" for i in range(60, 90)], metas[60:], [_thumb(i) for i in range(60, 90)], encoder=ENC)
    delete_where(path, "quality>=0.9, checkpoint=a")  # ids 9, 19, ..., 89: nine deleted, 81 live
    return path


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def edit_manifest(path: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    d = manifest(path)
    fn(d)
    (path / "manifest.json").write_text(json.dumps(d))


def rewrite_segment(path: Path, file: str, tensors: Callable[[dict[str, np.ndarray]], None] | None = None,
                    meta: Callable[[dict[str, str]], None] | None = None) -> None:
    """Change a segment file and record its new size and checksum, as an attacker who knows the format would."""
    with safe_open(str(path / file), framework="numpy") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        m = dict(f.metadata())
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    save_file(t, str(path / file), metadata=m)
    data = (path / file).read_bytes()

    def fix(d: dict[str, Any]) -> None:
        for s in d["segments"] + ([d["deleted"]] if d.get("deleted") else []):
            if s["file"] == file:
                s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()

    edit_manifest(path, fix)


def tensor_start(raw: bytes | bytearray, name: str = "embeddings") -> int:
    """Byte offset of a tensor's data in a safetensors file."""
    hlen = struct.unpack("<Q", raw[:8])[0]
    return 8 + hlen + json.loads(bytes(raw[8 : 8 + hlen]))[name]["data_offsets"][0]


def refused(path: Path, match: str) -> str:
    with pytest.raises(VaultError, match=match) as e:
        Vault.open(path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600
    return msg


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


# ---- the manifest --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, why", [
    ("RR100000,Flat", "not a known index family"),
    ("Bogus123", "not a known index family"),
    ("IVF999999,Flat", "999999 lists is outside"),
    ("IVF64_HNSW512,PQ8x4fs", "HNSW M 512 is outside"),
    ("IVF64,PQ7x4fs", "PQ7 does not divide the 16-d"),
    ("IVF16,PQ8x4fs;rm -rf /", "not a known index family"),
])
def test_index_strings_outside_the_allowlist_are_refused(vault: Path, spec: str, why: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    edit_manifest(vault, lambda d: d.update(index=spec))
    refused(vault, why)
    rc, _, err = cli(["info", str(vault)], capsys)
    assert rc == 2 and err.count("\n") == 1 and why in err


def test_cli_refuses_a_bad_index_before_writing_it(vault: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (vault / "manifest.json").read_bytes()
    rc, _, err = cli(["rebuild", str(vault), "--index", "Bogus123"], capsys)
    assert rc == 2 and "index 'Bogus123' cannot be used" in err
    assert (vault / "manifest.json").read_bytes() == before
    assert cli(["info", str(vault)], capsys)[0] == 0 and cli(["verify", str(vault)], capsys)[0] == 0
    emb = tmp_path / "e.safetensors"
    save_file({"embeddings": clustered(5, D)}, str(emb))
    (tmp_path / "e.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    rc, _, err = cli(["build", str(tmp_path / "new.vault"), "--embeddings", str(emb), "--entries",
                      str(tmp_path / "e.jsonl"), "--category", "x", "--index", "RR100000,Flat"], capsys)
    assert rc == 2 and "cannot be used" in err and not (tmp_path / "new.vault" / "manifest.json").exists()


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "sub/seg-000001-0000-00000000.safetensors",
                                  "seg-1.safetensors", "manifest.json"])
def test_segment_names_stay_inside_the_vault(vault: Path, name: str) -> None:
    edit_manifest(vault, lambda d: d["segments"][0].update(file=name))
    msg = refused(vault, "is not one a Luna Vault writer makes")
    assert "bytes" not in msg  # nothing about the outside file is revealed


def test_reordered_duplicated_or_foreign_segments(vault: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.vault"
    shutil.copytree(vault, good)
    edit_manifest(vault, lambda d: d["segments"].reverse())
    refused(vault, "the segment list was reordered or edited")
    shutil.rmtree(vault)
    shutil.copytree(good, vault)

    def twice(d: dict[str, Any]) -> None:
        d["segments"].insert(1, dict(d["segments"][0]))
        d["counts"]["entries"] += d["segments"][0]["entries"]
        d["counts"]["prompts"] += d["segments"][0]["prompts"]

    edit_manifest(vault, twice)
    refused(vault, "is listed more than once")
    shutil.rmtree(vault)
    shutil.copytree(good, vault)
    other = tmp_path / "other.vault"  # another vault's segment of the same size, checksum recorded
    build(other, clustered(30, D, seed=9), [f"q{i}" for i in range(30)], None, [_thumb(i) for i in range(30)],
          encoder=ENC, category="eyes")
    theirs = manifest(other)["segments"][0]
    shutil.copy(other / theirs["file"], vault / theirs["file"])
    edit_manifest(vault, lambda d: d["segments"].__setitem__(0, theirs))
    refused(vault, "belongs to another vault")


def test_dropped_deletions_do_not_resurrect_entries(vault: Path) -> None:
    assert manifest(vault)["deleted_count"] > 0
    edit_manifest(vault, lambda d: d.update(deleted=None))
    refused(vault, r"deleted_count \d+ does not match the deletion list \(none\)")
    edit_manifest(vault, lambda d: d.update(deleted_count=0, counts=dict(d["counts"], live=d["counts"]["entries"])))
    refused(vault, "holds a deletion list .* newer than the one the manifest names")


def test_counts_sizes_and_nesting(vault: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.vault"
    shutil.copytree(vault, good)
    for change, why in [
        (lambda d: d["segments"][0].update(entries=-5), "entries -5 is outside"),
        (lambda d: d["segments"][0].update(entries="30"), "is '30', not a whole number"),
        (lambda d: d["segments"][0].update(prompts=10**9), "is outside"),
        (lambda d: d["segments"][0].update(sha256="x" * 64), "is not a SHA-256 hex digest"),
        (lambda d: d["segments"][0].update(evil=1), "unknown fields"),
        (lambda d: d["encoder"].update(dim=10**9), "encoder dim 1000000000 is outside"),
        (lambda d: d.update(category="x" * 5000), "is not a short single-line text"),
        (lambda d: d.update(vault_id="../../x"), "is not the hex id"),
        (lambda d: d.update(segments=[d["segments"][0]] * (MAX_SEGMENTS + 1)), "over the 1000 a vault may have"),
    ]:
        shutil.rmtree(vault)
        shutil.copytree(good, vault)
        edit_manifest(vault, change)
        refused(vault, why)
    (vault / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(vault, "nested too deeply")


# ---- the segment files ------------------------------------------------------------------------------
def test_scaled_or_bit_flipped_embeddings_are_caught_on_open(vault: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.vault"
    shutil.copytree(vault, good)
    seg = manifest(vault)["segments"][1]["file"]
    rewrite_segment(vault, seg, lambda t: t["embeddings"].__setitem__(3, t["embeddings"][3] * 40))
    refused(vault, r"stored embeddings are not unit length \(entry 33 has norm 40")
    shutil.rmtree(vault)
    shutil.copytree(good, vault)
    raw = bytearray((vault / seg).read_bytes())  # one bit in the embeddings region, checksum not updated
    raw[tensor_start(raw) + 5 * D * 2 + 1] ^= 0x40  # an exponent bit of entry 35's first value
    (vault / seg).write_bytes(bytes(raw))
    refused(vault, "not unit length")


def test_damage_after_indexing_never_answers_with_an_impossible_similarity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large vault is not fully read on open: the index build and each query check instead."""
    import luna_vault.vault.store as store

    path = tmp_path / "big.vault"
    x = clustered(3000, D, seed=2)
    build(path, x, [f"p{i}" for i in range(3000)], encoder=ENC, category="x", index="IVF16,Flat")
    get_index(Vault.open(path))
    monkeypatch.setattr(store, "NORM_CHECK_MAX", 0)
    seg = manifest(path)["segments"][0]["file"]
    raw = bytearray((path / seg).read_bytes())
    a = tensor_start(raw)
    emb = np.frombuffer(bytes(raw[a : a + 3000 * D * 2]), np.float16).copy().reshape(3000, D)
    emb[1234] *= 40
    raw[a : a + 3000 * D * 2] = emb.tobytes()
    (path / seg).write_bytes(bytes(raw))
    v = Vault.open(path)
    with pytest.raises(VaultCorruptError, match="not unit length"):
        search(v, x[1234], k=3)
    rc = main(["verify", str(path)])
    assert rc == 1


def test_oversized_headers_shapes_and_prompt_ids(vault: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.vault"
    shutil.copytree(vault, good)
    seg = manifest(vault)["segments"][0]["file"]
    rewrite_segment(vault, seg, lambda t: t["prompt_ids"].__setitem__(4, 10**6))
    refused(vault, "prompt ids run outside")
    shutil.rmtree(vault)
    shutil.copytree(good, vault)
    # a header of 1.5M tensors (~90 MB): refused from its length, before it is parsed
    header = json.dumps({"__metadata__": {"kind": "luna-vault-segment"},
                         **{f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(1_500_000)}}).encode()
    (vault / seg).write_bytes(struct.pack("<Q", len(header)) + header)
    edit_manifest(vault, lambda d: d["segments"][0].update(bytes=len(header) + 8))
    t = time.perf_counter()
    refused(vault, "is not a vault segment's")
    assert time.perf_counter() - t < 1.0
    shutil.rmtree(vault)
    shutil.copytree(good, vault)
    raw = (vault / seg).read_bytes()
    hlen = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8 : 8 + hlen])
    head["embeddings"]["shape"] = [2**62, 2**62]
    new = json.dumps(head).encode()
    data = struct.pack("<Q", len(new)) + new + raw[8 + hlen :]
    (vault / seg).write_bytes(data)
    edit_manifest(vault, lambda d: d["segments"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    refused(vault, "impossible shape")


def test_decompression_bomb_thumbnail_is_a_missing_preview(vault: Path) -> None:
    bomb = _png_claiming(50_000, 50_000)
    assert len(bomb) < 100
    seg = manifest(vault)["segments"][0]["file"]

    def swap(t: dict[str, np.ndarray]) -> None:
        offs, blob = t["thumb_offsets"], t["thumb_blob"]
        items = [bytes(blob[offs[i] : offs[i + 1]]) for i in range(len(offs) - 1)]
        items[0] = bomb
        t["thumb_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in items])]).astype(np.int64)
        t["thumb_blob"] = np.frombuffer(b"".join(items), np.uint8).copy()

    rewrite_segment(vault, seg, swap)
    v = Vault.open(vault)
    with pytest.raises(ValueError, match="50000 x 50000 pixels .* over the 1,048,576 pixels a stored preview may have"):
        decode_thumbnail(v.thumbnail(0))
    sheet = entry_thumbnails(v, [0, 1], size=32)  # the Info node's previews: a blank cell, no crash
    assert sheet.shape == (2, 32, 32, 3)


def _png_claiming(w: int, h: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_many_appends_keep_few_segments(tmp_path: Path) -> None:
    """One append per image (a Builder in a generation graph) merges small segments; ids, prompts,
    metadata, thumbnails and deletions are unchanged."""
    path = tmp_path / "grow.vault"
    x = clustered(150, D, seed=4)
    build(path, x[:1], ["p0"], [{"seed": 0}], [_thumb(0)], encoder=ENC, category="x")
    for i in range(1, 150):
        append(path, x[i : i + 1], [f"p{i % 40}"], [{"seed": i}], [_thumb(i)], encoder=ENC)
        if i == 70:
            delete_where(path, "seed=3")
    v = Vault.open(path)
    assert len(v.manifest.segments) <= 65 and v.n_entries == 150 and len(v) == 149 and v.n_prompts == 40
    for i in (0, 5, 99, 149):
        assert v.metadata(i)["seed"] == i and v.prompt(int(v.prompt_ids([i])[0])) == f"p{i % 40}"
        assert v.thumbnail(i) == _thumb(i)
        np.testing.assert_allclose(v.embeddings([i])[0].astype(np.float32), x[i], atol=2e-3)
    [r] = search(v, x[77], k=1)
    assert r.matches[0].id == 77
    assert 3 not in search(v, x[3], k=5)[0].ids
    assert main(["verify", str(path)]) == 0


# ---- inputs and flags ---------------------------------------------------------------------------------
def test_bad_embeddings_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "e.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    base = ["build", str(tmp_path / "x.vault"), "--entries", str(tmp_path / "e.jsonl"), "--category", "x", "--embeddings"]
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    rc, _, err = cli(base + [str(tmp_path / "corrupt.safetensors")], capsys)
    assert rc == 2 and "is not a readable safetensors file" in err and err.count("\n") == 1
    for dtype in (np.uint8, np.int64, np.bool_):
        save_file({"embeddings": np.ones((4, D), dtype)}, str(tmp_path / "i.safetensors"))
        rc, _, err = cli(base + [str(tmp_path / "i.safetensors")], capsys)
        assert rc == 2 and "expected floating-point image embeddings" in err
    import torch
    from safetensors.torch import save_file as save_torch

    save_torch({"embeddings": torch.from_numpy(clustered(4, D)).bfloat16()}, str(tmp_path / "bf16.safetensors"))
    rc, _, _ = cli(base + [str(tmp_path / "bf16.safetensors"), "--json"], capsys)
    assert rc == 0 and len(Vault.open(tmp_path / "x.vault")) == 4
    with pytest.raises(DimensionError, match="expected floating-point"):
        with VaultWriter.open(tmp_path / "x.vault") as w:
            w.add(np.ones((1, D), np.int64), ["p"])


def test_filters_and_rows(vault: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = time.perf_counter()
    with pytest.raises(QueryError, match="at most 4096"):
        parse_filter(" " * 60_000 + "quality>0")
    assert str(parse_filter("quality" + " " * 3000 + ">=0.5")) == "quality>=0.5"
    assert time.perf_counter() - t < 0.5
    with pytest.raises(QueryError, match="has no condition"):
        parse_filter(",,,")
    emb = tmp_path / "q.safetensors"
    save_file({"embeddings": clustered(6, D)}, str(emb))
    for rows, why in [("3-", "is not a row or a range"), ("-1", "is not a row or a range"), ("a-b", "is not a row"),
                      ("4-2", "runs backwards"), ("9", "row 9 is outside 0..5")]:
        rc, _, err = cli(["query", str(vault), "--embeddings", str(emb), "--rows", rows], capsys)
        assert rc == 2 and why in err and err.count("\n") == 1, (rows, err)
    rc, _, err = cli(["delete", str(vault), "--filter", "quality>=0"], capsys)
    assert rc == 2 and "matches all 81 live entries" in err and "--yes" in err
    assert len(Vault.open(vault)) == 81
    rc, _, _ = cli(["delete", str(vault), "--filter", "quality>=0", "--yes"], capsys)
    assert rc == 0 and len(Vault.open(vault)) == 0


def test_exit_codes_verify_one_cannot_two(vault: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["verify", str(vault)], capsys)[0] == 0
    seg = manifest(vault)["segments"][2]["file"]
    raw = bytearray((vault / seg).read_bytes())
    raw[-3] ^= 1  # in a blob: only the checksum notices
    (vault / seg).write_bytes(bytes(raw))
    rc, out, _ = cli(["verify", str(vault)], capsys)
    assert rc == 1 and "checksum differs" in out
    edit_manifest(vault, lambda d: d["segments"].reverse())
    rc, out, _ = cli(["verify", str(vault)], capsys)
    assert rc == 1 and "reordered" in out
    rc, _, err = cli(["verify", str(tmp_path / "nothing.vault")], capsys)
    assert rc == 2 and err.startswith("error: no vault at")


# ---- readers and writers at once --------------------------------------------------------------------
def test_readers_during_deletes_and_compactions_never_fail(vault: Path) -> None:
    errors: list[str] = []
    opened = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                v = Vault.open(vault)
                if v.n_entries:
                    v.metadata(v.n_entries - 1)
                opened[0] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        for i in range(12):
            delete_where(vault, f"quality={(i % 9) / 10}")
            if i % 3 == 2:
                compact(vault)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not errors, errors[:3]
    assert opened[0] > 20


def test_one_process_builds_the_index_the_others_wait_and_load_it(tmp_path: Path) -> None:
    path = tmp_path / "ivf.vault"
    build(path, clustered(4000, D, seed=5), [f"p{i}" for i in range(4000)], encoder=ENC, category="x",
          index="IVF32,PQ8x4fs")
    code = ("import sys, json; from luna_vault.vault import Vault, get_index; "
            "i = get_index(Vault.open(sys.argv[1])); print(json.dumps(i.state.built_at))")
    env = dict(os.environ, LUNA_VAULT_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, env=env) for _ in range(3)]
    built = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(built) == 1  # built once, loaded twice


def test_a_cached_index_of_another_vault_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = tmp_path / "a.vault", tmp_path / "b.vault"
    xa, xb = clustered(3000, D, seed=6), clustered(3000, D, seed=7)
    for path, x in ((a, xa), (b, xb)):
        build(path, x, [f"p{i}" for i in range(3000)], encoder=ENC, category="x", index="IVF16,PQ8x4fs")
    ia, ib = get_index(Vault.open(a)), get_index(Vault.open(b))
    shutil.copy(ib.folder / "index.faiss", ia.folder / "index.faiss")  # same type, same count
    with caplog.at_level("WARNING"):
        again = get_index(Vault.open(a))
    assert "does not find the vault's own entries" in caplog.text
    [r] = search(Vault.open(a), xa[42], k=1)
    assert r.matches[0].id == 42 and again.index.ntotal == 3000


def test_upgrade_rewrites_a_version_one_vault(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = Vault.open(vault)
    want = [(before.metadata(i), before.prompt(int(before.prompt_ids([i])[0]))) for i in range(before.n_entries)]
    live = len(before)
    for s in manifest(vault)["segments"]:  # strip what version 2 added, as a version-1 writer left it
        rewrite_segment(vault, s["file"], meta=lambda m: [m.pop(k) for k in ("vault_id", "entry_base", "prompt_base")])
    edit_manifest(vault, lambda d: (d.pop("vault_id"), d.update(format_version=1)))
    refused(vault, "has format version 1.*luna-vault upgrade")
    rc, out, _ = cli(["upgrade", str(vault)], capsys)
    assert rc == 0 and "format version 2" in out
    v = Vault.open(vault)
    assert len(v) == live and [(v.metadata(i), v.prompt(int(v.prompt_ids([i])[0]))) for i in range(v.n_entries)] == want
    assert cli(["verify", str(vault)], capsys)[0] == 0
    assert sorted(p.name for p in vault.iterdir() if p.name.startswith(("seg-", "del-"))) == sorted(
        [s["file"] for s in manifest(vault)["segments"]] + [manifest(vault)["deleted"]["file"]])


def test_images_in_thumbnails_are_never_decoded_beyond_a_preview() -> None:
    img = Image.new("RGB", (2048, 2048))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    with pytest.raises(ValueError, match="over the 1,048,576 pixels a stored preview may have"):
        decode_thumbnail(buf.getvalue())
    with pytest.raises(ValueError, match="not a readable one"):
        decode_thumbnail(b"RIFF\x00\x00\x00\x00WEBPgarbage")
    assert VaultFormatError  # (imported: the family of errors every refusal above belongs to)
