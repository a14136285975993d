"""Extraction pipeline: folder -> vault; bad items reported, resumable, sharded + merged, baked, pairs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from helpers import make_folder, toy_encode
from luna_vault.cli import main
from luna_vault.extraction.encoders import RandomImageEncoder, resize_crop
from luna_vault.extraction.pairs import export_pairs
from luna_vault.extraction.pipeline import Extractor, in_shard, parse_shard
from luna_vault.vault import Vault, merge, search


class ToyText:
    family = "sd15"
    key = "toy"

    def encode(self, prompt: str):
        return toy_encode(prompt, dim=768, pooled_dim=768)


def test_folder_to_vault_with_bad_items(tmp_path: Path) -> None:
    data = tmp_path / "data"
    paths = make_folder(data, 20)
    (data / "eyes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "eyes" / "broken.txt").write_text("p")
    Image.new("RGB", (8, 8)).save(data / "eyes" / "noprompt.png")
    (data / "eyes" / "copy.png").write_bytes(paths[3].read_bytes())
    (data / "eyes" / "copy.txt").write_text("copy")
    enc = RandomImageEncoder(dim=32)
    report = Extractor(enc, vault=tmp_path / "eyes.vault", batch_size=8, workers=2).run(data)
    assert (report.total_added, report.images, len(report.skipped)) == (20, 23, 3)
    reasons = dict(report.skipped)
    assert reasons["eyes/broken.png"].startswith("unreadable image")
    assert reasons["eyes/noprompt.png"].startswith("missing prompt")
    assert "duplicate image" in reasons.get("eyes/img0003.png", "") + reasons.get("eyes/copy.png", "")
    v = Vault.open(tmp_path / "eyes.vault")
    assert (len(v), v.n_prompts, v.category) == (20, 8, "eyes")  # 7 prompts + "copy"
    assert v.has_thumbnails and v.thumbnail(0)
    # every stored embedding is the encoder's embedding of its own source image (the duplicate dropped
    # from the first batch's pixel block shifts no row)
    for i in range(len(v)):
        src = v.metadata(i)["source"]
        pixels = torch.from_numpy(np.asarray(Image.open(data / src).convert("RGB"), dtype=np.float32) / 255)[None]
        want = enc.encode(resize_crop(pixels, enc.input_size)).numpy()[0]
        np.testing.assert_allclose(v.embeddings([i])[0].astype(np.float32), want, atol=2e-3)
    [r] = search(v, want, k=1)
    assert r.matches[0].metadata["source"] == src


def test_embedded_prompts_of_every_kind_and_precise_skip_reasons(tmp_path: Path) -> None:
    """No sidecars: the prompt comes from each image (ComfyUI PNG, ComfyUI WebP, A1111 JPEG); what has
    none is skipped with its cause, and a compressed graph over Pillow's limit does not lose the image."""
    from PIL.PngImagePlugin import PngInfo
    from test_readers import GRAPH, enc

    data = tmp_path / "data" / "eyes"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def img() -> Image.Image:
        return Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))

    info = PngInfo()
    info.add_text("prompt", json.dumps(GRAPH))
    img().save(data / "comfy.png", pnginfo=info)
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + json.dumps(GRAPH)
    img().save(data / "comfy.webp", exif=exif)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + b"jade eye\nSteps: 20, Seed: 3"
    img().save(data / "a1111.jpg", exif=exif)
    big = PngInfo()
    big.add_text("prompt", json.dumps(dict(GRAPH, pad=enc("z" * 2_000_000))), zip=True)
    img().save(data / "big.png", pnginfo=big)
    llm = PngInfo()
    llm.add_text("prompt", json.dumps(dict(GRAPH, **{"21": {"class_type": "OllamaGenerate", "inputs": {"model": "m",
                                                                                                    "prompt": "p"}}})))
    img().save(data / "llm.png", pnginfo=llm)
    img().save(data / "plain.png")
    report = Extractor(RandomImageEncoder(dim=16), vault=tmp_path / "v.vault", batch_size=4, workers=1).run(tmp_path / "data")
    reasons = dict(report.skipped)
    assert report.total_added == 4 and set(reasons) == {"eyes/llm.png", "eyes/plain.png"}
    assert reasons["eyes/llm.png"] == ("missing prompt: no .txt/.json sidecar, and the text comes from a node this "
                                       "reader cannot evaluate: OllamaGenerate")
    assert reasons["eyes/plain.png"].startswith("missing prompt: no .txt/.json sidecar, and the image carries no "
                                                "generation metadata")
    v = Vault.open(tmp_path / "v.vault")
    got = {v.metadata(i)["source"]: (v.prompt(int(v.prompt_ids([i])[0])), v.metadata(i)) for i in range(len(v))}
    assert got["eyes/comfy.webp"][0] == got["eyes/big.png"][0] == "amber eye, macro, gold ring"
    assert got["eyes/comfy.png"][1]["checkpoint"] == "base.safetensors" and got["eyes/comfy.png"][1]["seed"] == 4242
    assert got["eyes/a1111.jpg"][0] == "jade eye"


def test_interrupt_commits_every_launched_batch(tmp_path: Path) -> None:
    """The batch still in flight when the run is interrupted is read back and committed, not lost."""
    data = tmp_path / "data"
    make_folder(data, 40)
    calls = []

    def interrupt_at_fourth_batch() -> None:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    ex = Extractor(RandomImageEncoder(dim=32), vault=tmp_path / "v.vault", batch_size=8, workers=1)
    with pytest.raises(KeyboardInterrupt):
        ex.run(data, check_interrupt=interrupt_at_fourth_batch)
    v = Vault.open(tmp_path / "v.vault")
    assert sorted(v.metadata(i)["source"] for i in range(len(v))) == [f"eyes/img{i:04d}.png" for i in range(24)]
    report = Extractor(RandomImageEncoder(dim=32), vault=tmp_path / "v.vault", batch_size=8, workers=1).run(data)
    assert (report.already_present, report.total_added) == (24, 16)


def test_rerun_skips_what_the_vault_has_and_adds_new_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_folder(data, 12)
    enc = RandomImageEncoder(dim=32)
    Extractor(enc, vault=tmp_path / "v.vault", workers=0).run(data)
    again = Extractor(enc, vault=tmp_path / "v.vault", workers=0).run(data)
    assert (again.total_added, again.already_present) == (0, 12)
    make_folder(data, 3, seed=9, sub="more")
    third = Extractor(enc, vault=tmp_path / "v.vault", workers=0).run(data, category="eyes")
    assert (third.total_added, third.already_present) == (3, 12)
    assert len(Vault.open(tmp_path / "v.vault")) == 15
    other = RandomImageEncoder(dim=32, seed=5)
    with pytest.raises(Exception, match="disagree on a test image"):
        Extractor(other, vault=tmp_path / "v.vault", workers=0).run(data)


def test_shards_split_deterministically_and_merge_to_the_whole(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_folder(data, 30)
    assert parse_shard("2/3") == (1, 3)
    with pytest.raises(ValueError):
        parse_shard("4/3")
    rels = [f"eyes/img{i:04d}.png" for i in range(30)]
    parts = [sum(in_shard(r, (i, 3)) for r in rels) for i in range(3)]
    assert sum(parts) == 30 and all(p > 0 for p in parts)
    enc = RandomImageEncoder(dim=32)
    for i in range(3):
        Extractor(enc, vault=tmp_path / "eyes.vault", shard=(i, 3), workers=0).run(data)
    shard_paths = sorted(tmp_path.glob("eyes.shard-*-of-3.vault"))
    assert [len(Vault.open(p)) for p in shard_paths] == parts
    merge(tmp_path / "eyes.vault", shard_paths)
    whole = Extractor(enc, vault=tmp_path / "single.vault", workers=0)
    whole.run(data)
    merged, single = Vault.open(tmp_path / "eyes.vault"), Vault.open(tmp_path / "single.vault")
    assert len(merged) == len(single) == 30
    assert sorted(map(bytes, merged.content_hashes())) == sorted(map(bytes, single.content_hashes()))


def test_bake_and_pairs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_folder(data, 14)
    calls: list[str] = []

    class Counting(ToyText):
        def encode(self, prompt: str):
            calls.append(prompt)
            return super().encode(prompt)

    Extractor(RandomImageEncoder(dim=32), vault=tmp_path / "b.vault", text_encoder=Counting(), workers=0,
              commit_every=5).run(data)
    assert sorted(calls) == sorted({f"eyes prompt {i}" for i in range(7)})  # de-duplicated, across commits too
    v = Vault.open(tmp_path / "b.vault")
    assert v.text is not None and v.text.family == "sd15" and len(v.manifest.segments) == 3
    info = export_pairs(v, tmp_path / "pairs", shard_size=6)
    assert info["pairs"] == 14 and [s["pairs"] for s in info["shards"]] == [6, 6, 2]
    shard = load_file(str(tmp_path / "pairs" / "pairs-00001.safetensors"))
    np.testing.assert_array_equal(shard["entry_ids"], np.arange(6, 12))
    np.testing.assert_array_equal(shard["embeddings"], v.embeddings(np.arange(6, 12)))
    pid = int(shard["prompt_ids"][0])
    cond, _ = v.baked(pid)
    np.testing.assert_allclose(cond.astype(np.float32), toy_encode(v.prompt(pid), dim=768, pooled_dim=768)[0].numpy(),
                               atol=2e-3, rtol=1e-3)
    assert json.loads((tmp_path / "pairs" / "pairs.json").read_text())["content_key"] == v.manifest.content_key


def test_cli_extract_per_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    make_folder(data, 6, sub="eyes")
    make_folder(data, 4, seed=3, sub="hands")
    Image.new("RGB", (8, 8)).save(data / "hands" / "lost.png")
    code = main(["extract", str(data), "--vault-dir", str(tmp_path / "vaults"), "--random-encoder", "32", "--workers", "0",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["images"] == 11
    assert {Path(k).name: n for k, n in out["added"].items()} == {"eyes.vault": 6, "hands.vault": 4}
    report = (tmp_path / "vaults" / "extract-report.jsonl").read_text().splitlines()
    assert json.loads(report[0])["path"] == "hands/lost.png"
    assert main(["extract", str(data), "--vault", str(tmp_path / "x.vault")]) == 2  # no encoder given
    assert "error: choose one image encoder" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_extraction_resumes_without_duplicates_or_loss(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_folder(data, 400)
    vault = tmp_path / "v.vault"
    cmd = [sys.executable, "-m", "luna_vault.cli", "extract", str(data), "--vault", str(vault), "--random-encoder", "32",
           "--workers", "1", "--batch-size", "8", "--commit-every", "16", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120  # kill on an event, not after a fixed time: the first commit (the manifest appears)
    while time.time() < deadline and not (vault / "manifest.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "extract exited early"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    partial = len(Vault.open(vault)) if (vault / "manifest.json").exists() else 0
    assert 0 < partial < 400, f"{partial} of 400 committed when killed: the kill must land mid-run"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    v = Vault.open(vault)
    assert out["already_present"] == partial and sum(out["added"].values()) == 400 - partial
    hashes = [bytes(h) for h in v.content_hashes()]
    assert len(v) == 400 and len(set(hashes)) == 400
    assert v.verify() == []


def test_shard_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard(None) == (2, 4)
    assert parse_shard("1/2") == (0, 2)  # an explicit --shard wins
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parse_shard(None) is None


def test_content_hash_is_one_definition_for_files_and_comfyui_images(tmp_path: Path) -> None:
    """extract (a file) and the Builder node (an IMAGE tensor, as LoadImage makes it) agree; file bytes do not matter."""
    from PIL import PngImagePlugin

    from luna_vault.core.content import image_hash, pixels_hash
    from luna_vault.extraction.pipeline import DecodeDataset
    from luna_vault.extraction.readers import Item

    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    plain, tagged = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rgb).save(plain)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a prompt")
    Image.fromarray(rgb).save(tagged, pnginfo=info, compress_level=1)
    assert plain.read_bytes() != tagged.read_bytes()
    ds = DecodeDataset([Item(plain, "p"), Item(tagged, "p")], 32, set(), thumbnails=False)
    h_file = ds[0].hash
    assert ds[1].hash == h_file == pixels_hash(rgb)
    loaded = torch.from_numpy(rgb.astype(np.float32) / 255.0)  # ComfyUI's LoadImage
    assert image_hash(loaded) == h_file
    rgba = torch.cat([loaded, torch.ones(40, 30, 1)], dim=2)
    assert image_hash(rgba) == h_file
    # a generated image: SaveImage truncates 255 * x, and so does the hash
    gen = torch.rand(40, 30, 3)
    saved = np.clip(255.0 * gen.numpy(), 0, 255).astype(np.uint8)
    assert image_hash(gen) == pixels_hash(saved)
    assert image_hash(gen) != image_hash(gen.flip(0))
    # what the vault already holds is skipped before any encoding
    known = DecodeDataset([Item(tagged, "p")], 32, {h_file}, thumbnails=False)[0]
    assert known.known and known.reason is None and known.pixels is None
    with pytest.raises(ValueError, match="uint8 RGB"):
        pixels_hash(rgb.astype(np.float32))


def test_decode_batches_are_typed_records_and_pinned_as_one_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data._utils.pin_memory import pin_memory

    from luna_vault.extraction.pipeline import DecodeDataset, DecodedBatch, decode_loader
    from luna_vault.extraction.readers import Item

    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(good)
    bad.write_bytes(b"not an image")
    [batch] = list(decode_loader(DecodeDataset([Item(bad, "x"), Item(good, "y")], 16, set(), False), 8, 0))
    assert isinstance(batch, DecodedBatch) and batch.pixels.shape == (1, 16, 16, 3) and batch.pixels.dtype == torch.uint8
    assert [r.row for r in batch.records] == [None, 0] and batch.records[0].reason.startswith("unreadable image")
    assert all(r.pixels is None for r in batch.records)  # handed over once, in the block
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: pinned.append(t.shape) or t)
    assert pin_memory(batch) is batch and pinned == [(1, 16, 16, 3)]  # what the DataLoader's pinning thread calls
