"""The shipped detailer graphs really sample, and `luna-vault ab` runs end to end, in a real headless ComfyUI
with random-initialised models of the real architectures built here: an SD1.5 checkpoint (UNet, CLIP-L,
VAE), CLIP-vision ViT-L (and ViT-H with random IP-Adapter Plus weights for the IPAdapter graph), at
64 px and 1 step. The workflows keep their real model names; only this test's copies are changed."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from comfy_server import ComfyServer, execution_error, require_comfyui, save_random_models
from detail_graphs import CKPT, api, detail_check, for_this_machine, picture, saved
from helpers import SHARED

pytestmark = pytest.mark.slow
require_comfyui("transformers")

IPADAPTER_PACK = SHARED / "custom_nodes" / "ComfyUI_IPAdapter_plus"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.bin"  # the name IPAdapterUnifiedLoader looks for


def save_random_ipadapter(path: Path) -> None:
    """ip-adapter-plus_sd15 with random weights: the pack's own Resampler (768-d, 16 queries, ViT-H's 1280-d
    hidden states in) and to_k_ip / to_v_ip for SD1.5's 16 cross-attention layers, in the pack's order."""
    sys.path.insert(0, str(SHARED / "comfyui-tools"))
    sys.path.insert(0, str(IPADAPTER_PACK))
    try:
        import torch
        from image_proj_models import Resampler
        from make_clip_vision import build_sd
    finally:
        sys.path.remove(str(IPADAPTER_PACK))
    with torch.device("meta"):
        proj = Resampler(dim=768, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=1280, output_dim=768,
                         ff_mult=4)
    shapes = {"image_proj." + k: tuple(v.shape) for k, v in proj.state_dict().items()}
    dims = [320, 320, 640, 640, 1280, 1280] + [1280, 1280, 1280, 640, 640, 640, 320, 320, 320] + [1280]
    for number, dim in enumerate(dims):
        for kind in ("k", "v"):
            shapes[f"ip_adapter.{number * 2 + 1}.to_{kind}_ip.weight"] = (dim, 768)
    flat = build_sd(shapes, "pt", seed=3)
    nested: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for k, v in flat.items():
        part, _, rest = k.partition(".")
        nested[part][rest] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nested, path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from random_models import save_sd15_checkpoint

    s = ComfyServer(tmp_path_factory.mktemp("comfyui-sampling"))
    s.prepare()
    save_random_models(s.base)
    save_sd15_checkpoint(s.base / "models" / "checkpoints" / CKPT)
    if IPADAPTER_PACK.is_dir():
        shutil.copytree(IPADAPTER_PACK, s.base / "custom_nodes" / IPADAPTER_PACK.name,
                        ignore=shutil.ignore_patterns("__pycache__", ".git"))
        sys.path.insert(0, str(SHARED / "comfyui-tools"))
        from make_clip_vision import build_sd, save, vision_shapes

        save(build_sd(vision_shapes("vith"), "pt", seed=2), str(s.base / "models" / "clip_vision" / VIT_H), "pt")
        save_random_ipadapter(s.base / "models" / "ipadapter" / "ip-adapter-plus_sd15.bin")
    picture(0).save(s.base / "input" / "example.png")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def eyes_vault(server: ComfyServer) -> Path:
    """The build-from-generation graph: SD1.5 samples 6 images, the Builder stores them in models/vaults/eyes."""
    entry = server.run(for_this_machine(api("luna_build_vault_from_generation")), timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    images = saved(entry)
    assert len(images) == 6
    for im in images:
        with Image.open(server.base / "output" / im["subfolder"] / im["filename"]) as pic:
            assert pic.size == (64, 64)
            assert np.isfinite(np.asarray(pic, np.float32)).all()
    summary = next(o["text"][0] for o in entry["outputs"].values() if "text" in o)
    assert summary.startswith("eyes.vault: +6 entries (0 already present)"), summary
    from luna_vault.vault import Vault

    path = server.base / "models" / "vaults" / "eyes.vault"
    v = Vault.open(path)
    assert len(v) == 6 and v.verify() == [] and v.metadata(0)["checkpoint"] == "sd_xl_base_1.0"
    return path


def test_crop_detailer_samples_with_the_vault(server: ComfyServer, eyes_vault: Path) -> None:
    entry = server.run(for_this_machine(api("luna_crop_detailer_vault")), timeout=600)
    detail_check(server, entry)
    query = entry["outputs"]["10"]  # the Query shows the matched images and their similarities
    assert query["images"] and query["text"][0].startswith("crop 0: eyes  ")


def test_vision_translator_hybrid_samples(server: ComfyServer, eyes_vault: Path, tmp_path: Path) -> None:
    from luna_vault.projector.model import TARGETS
    from luna_vault.projector.synthetic import make_synthetic_vault
    from luna_vault.projector.train import TrainConfig, train
    from luna_vault.vault import Vault

    fp = Vault.open(eyes_vault).encoder
    make_synthetic_vault(tmp_path / "pairs.vault", TARGETS["sd15"], 768, n_prompts=30, per_prompt=2, encoder=fp,
                         family="sd15")
    train(tmp_path / "pairs.vault", server.base / "models" / "luna_projectors" / "eyes-sd15.safetensors",
          TrainConfig(epochs=1, batch_size=16), resume=False, progress=False, model_overrides={"hidden": 64, "linear": 32})
    g = for_this_machine(api("luna_vision_translator_hybrid"))
    t = next(n for n in g.values() if n["class_type"] == "LunaVisionTranslator")
    t["inputs"]["projector"] = "eyes-sd15.safetensors"  # the workflow names an SDXL projector
    entry = server.run(g, timeout=600)
    detail_check(server, entry)
    crop = json.loads(entry["outputs"]["11"]["text"][0])["crops"][0]  # the graph previews the Translator's report
    assert crop["path"] == ("vault" if crop["best_similarity"] >= 0.9 else "projector")


@pytest.mark.skipif(not IPADAPTER_PACK.is_dir(), reason="needs ../shared/custom_nodes/ComfyUI_IPAdapter_plus")
def test_ipadapter_with_vault_samples(server: ComfyServer, tmp_path: Path) -> None:
    # a vault in the IP-Adapter's CLIP vision (ViT-H), built by the Builder node in this ComfyUI
    build = {"cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": VIT_H}}}
    for i in range(3):
        picture(10 + i).save(server.base / "input" / f"h{i}.png")
        build[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"h{i}.png"}}
        build[f"b{i}"] = {"class_type": "LunaVaultBuilder", "inputs": {
            "clip_vision": ["cv", 0], "vault_name": "eyes-h", "mode": "append", "category": "eyes", "thumbnails": True,
            "images": [f"img{i}", 0], "prompts": f"vit-h eye {i}", "metadata": "{}"}}
    entry = server.run(build, timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    g = for_this_machine(api("luna_ipadapter_with_vault"), clip_vision=VIT_H)
    q = next(n for n in g.values() if n["class_type"] == "LunaVaultQuery")
    q["inputs"].update(vault="eyes-h", k=3)
    entry = server.run(g, timeout=600)
    detail_check(server, entry)


# ---- luna-vault ab ------------------------------------------------------------------------------
def _cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHARED / "comfyui-tools"), env.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "luna_vault.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _ab_setup(server: ComfyServer, tmp_path: Path, arms: dict[str, Any], **extra: Any) -> Path:
    template = for_this_machine(api("luna_crop_detailer_vault"))
    (tmp_path / "detailer_api.json").write_text(json.dumps(template))
    for i in range(2):
        picture(20 + i, size=80).save(tmp_path / f"portrait{i}.png")
    config = {"name": "eyes-ab", "template": "detailer_api.json", "servers": [server.url],
              "vault": str(server.base / "models" / "vaults" / "eyes.vault"),
              "seeds": [7, 8], "references": [{"image": "portrait0.png", "region": [8, 8, 48, 48]},
                                              {"image": "portrait1.png", "region": [24, 16, 48, 48], "category": "eyes"}],
              "arms": arms, **extra}
    path = tmp_path / "ab.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_ab_end_to_end_with_the_server_killed_and_resumed(server: ComfyServer, eyes_vault: Path, tmp_path: Path) -> None:
    cfg = _ab_setup(server, tmp_path, {"no-vault": {"vault": "off"},
                                       "vault-0.5": {"set": {"LunaVaultQuery.strength": 0.5}}})
    out = tmp_path / "run"
    proc = _cli("ab", str(cfg), "--out", str(out), "--give-up-after", "300")
    deadline = time.time() + 400
    while time.time() < deadline and not list(out.glob("*/*.png")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    first = sorted(out.glob("*/*.png"))
    assert first, "no output within the time limit"
    stamps = {p: p.stat().st_mtime_ns for p in first}
    server.proc.kill()  # mid-run: the in-flight prompt is lost with the server
    server.proc.wait(timeout=30)
    time.sleep(1.0)
    server.start()  # the same port: the run re-queues what was lost and goes on
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "is not answering" in stderr and "is back" in stderr
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "finished outputs were rewritten"
    rows = list(csv.DictReader((out / "ab_scores.csv").open()))
    assert len(rows) == 8 and {r["arm"] for r in rows} == {"no-vault", "vault-0.5"}
    assert {(r["reference"], r["seed"]) for r in rows} == {(f"portrait{i}", s) for i in (0, 1) for s in ("7", "8")}
    for r in rows:
        for score in ("clip_similarity", "ciede2000", "hue_distance", "vault_agreement", "ssim"):
            assert r[score] != "", (r["job_id"], score)
        assert -1.0 <= float(r["clip_similarity"]) <= 1.0 and float(r["ciede2000"]) >= 0.0
        assert 0.0 <= float(r["hue_distance"]) <= 1.0 and float(r["vault_agreement"]) in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
        assert float(r["comfy_seconds"]) > 0
    summary = json.loads((out / "ab_summary.json").read_text())
    assert summary["meta"]["checkpoint"] == CKPT and summary["meta"]["arms"]["no-vault"]["vault"] == "off"
    pair = summary["summary"]["all"]["vault-0.5"]["ciede2000"]
    assert pair["pairs"] == 4 and pair["ci"][0] <= pair["diff"] <= pair["ci"][1] and 0.0 <= pair["win_rate"] <= 1.0
    assert set(summary["summary"]) == {"all", "(none)", "eyes"}  # every reference, then per category
    assert any("Only 4 paired sample(s)" in w for w in summary["meta"]["warnings"])
    page = (out / "ab_report.html").read_text()
    assert "Only 4 paired sample(s)" in page and page.count("<svg") == 3 and "data:image/jpeg;base64," in page
    assert not re.findall(r"""(?:src|href)=['"](?!data:|#)""", page), "the report must be self-contained"

    # run again: nothing is queued, nothing re-scored; the report is rewritten from the cached scores
    proc = _cli("ab", str(cfg), "--out", str(out), "--json")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    data = json.loads(stdout)
    assert data["outputs"] == 8 and data["timings"]["comfy_this_run_s"] == 0.0
    assert data["timings"]["scoring_s"] < 1e-9

    # --write-defaults: the vault arm is stored if it beat the baseline on CLIP similarity, else nothing is
    from luna_vault.vault import Vault

    proc = _cli("ab", str(cfg), "--out", str(out), "--write-defaults")
    stdout, stderr = proc.communicate(timeout=300)
    diff = summary["summary"]["all"]["vault-0.5"]["clip_similarity"]["diff"]
    tuned = Vault.open(eyes_vault).manifest.tuned
    if diff > 0:
        assert proc.returncode == 0 and "wrote tuned defaults" in stdout, stderr
        assert (tuned.strength, tuned.k, tuned.temperature, tuned.checkpoint, tuned.samples) == (0.5, 5, 0.05, CKPT, 4)
    else:
        assert proc.returncode == 1 and "no vault arm beat the baseline 'no-vault'" in stderr and tuned is None


def test_ab_bad_input_is_named(server: ComfyServer, eyes_vault: Path, tmp_path: Path) -> None:
    cfg = _ab_setup(server, tmp_path, {"base": {"vault": "off"}, "ipa": {"set": {"IPAdapterAdvanced.weight": 0.6}}})
    proc = _cli("ab", str(cfg), "--out", str(tmp_path / "x"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "arm 'ipa', set IPAdapterAdvanced.weight: the template has no node 'IPAdapterAdvanced'" in stderr
    assert not (tmp_path / "x").exists()

    raw = yaml.safe_load(cfg.read_text())
    del raw["references"][1]["region"]
    cfg.write_text(yaml.safe_dump(raw))
    proc = _cli("ab", str(cfg))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "reference 2 (portrait1.png) has no region" in stderr

    # an arm that fails inside ComfyUI: named with its node; the other arm's outputs are kept
    cfg = _ab_setup(server, tmp_path, {"ok": {"vault": "off"}, "broken": {"set": {"LunaVaultQuery.filter": "seed>="}}})
    proc = _cli("ab", str(cfg), "--out", str(tmp_path / "y"), "--retries", "0")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert "arm 'broken', reference portrait0, seed 7: node 10 (LunaVaultQuery):" in stderr
    assert len(list((tmp_path / "y" / "ok").glob("*.png"))) == 4 and not list((tmp_path / "y").glob("broken/*.png"))
    assert "broken" in (tmp_path / "y" / "ab_report.html").read_text()
