"""The Luna nodes inside a real, headless ComfyUI, driven over HTTP with small random-initialised models."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfy_server import ComfyServer, execution_error, require_comfyui, save_random_models

pytestmark = pytest.mark.slow
require_comfyui("transformers")

CROPS = 3


def _crop(i: int) -> Image.Image:
    """Three clearly different crops: a colour field with a bright disc at a different place."""
    rng = np.random.default_rng(i)
    arr = np.zeros((160, 160, 3), np.float32) + rng.uniform(0.1, 0.9, 3)
    yy, xx = np.mgrid[:160, :160]
    cy, cx = 40 + 40 * i, 120 - 40 * i
    arr[(yy - cy) ** 2 + (xx - cx) ** 2 < 30**2] = 1.0
    arr += rng.normal(0, 0.03, arr.shape)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    s.prepare()
    save_random_models(s.base)
    for i in range(CROPS):
        _crop(i).save(s.base / "input" / f"crop{i}.png")
    # a vault from another encoder (1024-d) for the mismatch test
    from luna_vault.vault import EncoderFingerprint, build

    x = np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)
    build(s.base / "models" / "vaults" / "bigdim.vault", x, ["a", "b", "c", "d"],
          encoder=EncoderFingerprint("vit-h", 1024, "h"), category="other")
    s.start()
    yield s
    s.stop()


def _loaders() -> dict[str, Any]:
    return {
        "cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-l-random.pt"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip-l-random.pt", "type": "stable_diffusion"}},
    }


def _query(vault: str, image: str, **over: Any) -> dict[str, Any]:
    g = _loaders()
    g.update({
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a detailed close-up", "clip": ["clip", 0]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "q": {"class_type": "LunaVaultQuery", "inputs": {
            "image": ["img", 0], "clip_vision": ["cv", 0], "vault": vault, "k": 3, "strength": 0.3,
            "blend_mode": "average", "temperature": 0.05, "conditioning": ["pos", 0], "clip": ["clip", 0], "filter": "",
            **over}},
        "prompts": {"class_type": "PreviewAny", "inputs": {"source": ["q", 2]}},
        "report": {"class_type": "PreviewAny", "inputs": {"source": ["q", 4]}},
        "thumbs": {"class_type": "PreviewImage", "inputs": {"images": ["q", 3]}},
    })
    return g


def test_object_info_lists_every_luna_node(server: ComfyServer) -> None:
    info = server.get("/object_info")
    luna = {k: v for k, v in info.items() if k.startswith("Luna")}
    assert set(luna) == {"LunaVaultQuery", "LunaVisionTranslator", "LunaVaultBuilder", "LunaEmbeddingExtractor",
                         "LunaVaultInfo", "LunaAbProbe"}
    q = luna["LunaVaultQuery"]
    assert q["display_name"] == "Luna Vault Query" and q["category"] == "Luna" and q["output_node"] is True
    assert list(q["input"]["required"]) == ["image", "clip_vision", "vault", "k", "strength", "blend_mode", "temperature"]
    assert list(q["input"]["optional"]) == ["conditioning", "clip", "filter", "use_tuned"]
    assert q["output"] == ["CONDITIONING", "CONDITIONING", "STRING", "IMAGE", "STRING"]
    assert q["output_name"] == ["blended", "retrieved", "prompts", "matches", "report"]
    vault_options = q["input"]["required"]["vault"][1]["options"] if isinstance(q["input"]["required"]["vault"][0], str) \
        else q["input"]["required"]["vault"][0]
    assert vault_options[0] == "auto-detect" and "bigdim" in vault_options
    assert q["input"]["required"]["k"][1]["default"] == 5 and q["input"]["required"]["strength"][1]["default"] == 0.3
    for node in luna.values():
        for group in ("required", "optional"):
            for name, spec in node["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{node['name']}.{name} has no tooltip"
    assert luna["LunaEmbeddingExtractor"]["output"] == ["LUNA_EMBEDDING", "CLIP_VISION_OUTPUT"]


def test_builder_graph_creates_a_vault_and_query_finds_the_crop(server: ComfyServer) -> None:
    g = _loaders()
    for i in range(CROPS):
        g[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"crop{i}.png"}}
        g[f"build{i}"] = {"class_type": "LunaVaultBuilder", "inputs": {
            "clip_vision": ["cv", 0], "vault_name": "eyes", "mode": "append", "category": "eyes", "thumbnails": True,
            "images": [f"img{i}", 0], "prompts": f"crop prompt {i}", "metadata": json.dumps({"seed": i})}}
    entry = server.run(g)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert any("eyes.vault: +1 entries" in entry["outputs"][f"build{i}"]["text"][0] for i in range(CROPS))
    from luna_vault.vault import Vault

    vault = Vault.open(server.base / "models" / "vaults" / "eyes.vault")
    assert len(vault) == CROPS and vault.has_thumbnails and vault.verify() == []

    entry = server.run(_query("eyes", "crop1.png"))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    out = entry["outputs"]
    assert out["prompts"]["text"][0] == "crop prompt 1"
    report = json.loads(out["report"]["text"][0])
    top = report["crops"][0]["matches"][0]
    assert top["prompt"] == "crop prompt 1" and top["metadata"]["seed"] == 1 and top["similarity"] > 0.999
    assert [m["similarity"] for m in report["crops"][0]["matches"]] == sorted(
        (m["similarity"] for m in report["crops"][0]["matches"]), reverse=True)
    assert len(out["thumbs"]["images"]) == 3
    [sheet] = out["q"]["images"]
    with urllib.request.urlopen(f"{server.url}/view?filename={sheet['filename']}&type={sheet['type']}&subfolder="
                                f"{sheet['subfolder']}", timeout=30) as r:
        png = r.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "crop 0: eyes" in out["q"]["text"][0]


def test_cli_and_node_embed_the_same_image_identically(server: ComfyServer, tmp_path: Path) -> None:
    data = tmp_path / "data" / "eyes"
    data.mkdir(parents=True)
    for i in range(CROPS):
        _crop(i).save(data / f"crop{i}.png")
        (data / f"crop{i}.txt").write_text(f"cli prompt {i}")
    res = subprocess.run(
        [sys.executable, "-m", "luna_vault.cli", "extract", str(tmp_path / "data"), "--vault",
         str(server.base / "models" / "vaults" / "cli.vault"), "--clip-vision",
         str(server.base / "models" / "clip_vision" / "vit-l-random.pt"), "--comfyui", str(server.app), "--workers", "0",
         "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sum(json.loads(res.stdout)["added"].values()) == CROPS
    entry = server.run(_query("cli", "crop2.png"))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    top = json.loads(entry["outputs"]["report"]["text"][0])["crops"][0]["matches"][0]
    assert top["prompt"] == "cli prompt 2" and top["similarity"] > 0.999
    # and the node path's embedding equals the stored one, value by value
    g = _loaders()
    g["img"] = {"class_type": "LoadImage", "inputs": {"image": "crop2.png"}}
    g["emb"] = {"class_type": "LunaEmbeddingExtractor", "inputs": {
        "image": ["img", 0], "clip_vision": ["cv", 0], "prompts": "x", "dataset": "cmp"}}
    entry = server.run(g)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    from safetensors.numpy import load_file

    from luna_vault.vault import Vault

    [part] = (server.base / "output" / "luna_embeddings" / "cmp").glob("*.safetensors")
    node_emb = load_file(str(part))["embeddings"][0]
    v = Vault.open(server.base / "models" / "vaults" / "cli.vault")
    stored = v.embeddings([i for i in range(len(v)) if v.metadata(i)["source"].endswith("crop2.png")])[0]
    np.testing.assert_allclose(node_emb, stored.astype(np.float32), atol=2e-3)


def test_bad_inputs_fail_readably_and_the_server_keeps_serving(server: ComfyServer) -> None:
    entry = server.run(_query("bigdim", "crop0.png"))
    assert entry["status"]["status_str"] == "error"
    err = execution_error(entry)
    assert err["node_type"] == "LunaVaultQuery"
    assert "1024-d" in err["exception_message"] and "768-d" in err["exception_message"]
    code, body = server.post("/prompt", {"prompt": _query("no-such-vault", "crop0.png")})
    assert code == 400 and "no-such-vault" in json.dumps(body)
    errors = body["node_errors"]["q"]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["vault"]  # one flag, on the input at fault
    code, body = server.post("/prompt", {"prompt": _query("bigdim", "crop0.png", k=0)})
    assert code == 400 and "smaller than min of 1" in json.dumps(body)
    assert [e["extra_info"]["input_name"] for e in body["node_errors"]["q"]["errors"]] == ["k"], body
    code, body = server.post("/prompt", {"prompt": _query("bigdim", "crop0.png", k=101)})
    assert code == 400 and "bigger than max of 100" in json.dumps(body)
    entry = server.run(_query("eyes", "crop0.png"))  # still serving
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert entry["outputs"]["prompts"]["text"][0] == "crop prompt 0"


def test_baked_vault_queried_without_clip(server: ComfyServer) -> None:
    g = _loaders()
    g["img"] = {"class_type": "LoadImage", "inputs": {"image": "crop0.png"}}
    g["build"] = {"class_type": "LunaVaultBuilder", "inputs": {
        "clip_vision": ["cv", 0], "vault_name": "baked", "mode": "overwrite", "category": "eyes", "thumbnails": False,
        "images": ["img", 0], "prompts": "baked prompt", "clip": ["clip", 0]}}
    entry = server.run(g)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    q = _query("baked", "crop0.png", k=1)
    del q["q"]["inputs"]["clip"]
    entry = server.run(q)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert json.loads(entry["outputs"]["report"]["text"][0])["mode"] == "baked"
    q = _query("eyes", "crop0.png", k=1)
    del q["q"]["inputs"]["clip"]
    entry = server.run(q)
    assert "no baked conditioning" in execution_error(entry)["exception_message"]


def test_vision_translator_hybrid_with_a_small_trained_projector(server: ComfyServer, tmp_path: Path) -> None:
    g = _loaders()
    for i in (0, 1):
        g[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"crop{i}.png"}}
        g[f"build{i}"] = {"class_type": "LunaVaultBuilder", "inputs": {
            "clip_vision": ["cv", 0], "vault_name": "hybrid", "mode": "append", "category": "eyes", "thumbnails": False,
            "images": [f"img{i}", 0], "prompts": f"hybrid prompt {i}", "clip": ["clip", 0]}}
    entry = server.run(g)
    assert entry["status"]["status_str"] == "success", execution_error(entry)

    # train a small CLIP-L projector for this ComfyUI's random ViT-L (synthetic pairs, the encoder's fingerprint)
    from luna_vault.projector.model import TARGETS
    from luna_vault.projector.synthetic import make_synthetic_vault
    from luna_vault.projector.train import TrainConfig, train
    from luna_vault.vault import EncoderFingerprint, Vault

    fp = Vault.open(server.base / "models" / "vaults" / "hybrid.vault").encoder
    make_synthetic_vault(tmp_path / "pairs.vault", TARGETS["sd15"], 768, n_prompts=40, per_prompt=2, encoder=fp,
                         family="sd15")
    projectors = server.base / "models" / "luna_projectors"
    summary = train(tmp_path / "pairs.vault", projectors / "eyes-l.safetensors", TrainConfig(epochs=2, batch_size=16),
                    resume=False, progress=False, model_overrides={"hidden": 64, "linear": 32})
    assert summary["best_epoch"] >= 1
    make_synthetic_vault(tmp_path / "other.vault", TARGETS["sd15"], 1024, n_prompts=20, per_prompt=2, family="sd15",
                         encoder=EncoderFingerprint("vit-h", 1024, "h"))
    train(tmp_path / "other.vault", projectors / "vit-h.safetensors", TrainConfig(epochs=1, batch_size=16), resume=False,
          progress=False, model_overrides={"hidden": 64, "linear": 32})

    def graph(projector: str) -> dict[str, Any]:
        g = _loaders()
        g.update({
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a detailed close-up", "clip": ["clip", 0]}},
            "a": {"class_type": "LoadImage", "inputs": {"image": "crop0.png"}},
            "b": {"class_type": "LoadImage", "inputs": {"image": "crop2.png"}},
            "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
            "t": {"class_type": "LunaVisionTranslator", "inputs": {
                "image": ["batch", 0], "clip_vision": ["cv", 0], "projector": projector, "strength": 0.3,
                "blend_mode": "average", "conditioning": ["pos", 0], "vault": "hybrid", "threshold": 0.999, "k": 2}},
            "report": {"class_type": "PreviewAny", "inputs": {"source": ["t", 2]}},
        })
        return g

    entry = server.run(graph("eyes-l.safetensors"))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    report = json.loads(entry["outputs"]["report"]["text"][0])
    crops = report["crops"]
    assert [c["path"] for c in crops] == ["vault", "projector"]  # crop0 is in the vault, crop2 is not
    assert crops[0]["prompt"] == "hybrid prompt 0" and crops[0]["best_similarity"] > 0.999 > crops[1]["best_similarity"]
    assert "crop 1: projector" in entry["outputs"]["t"]["text"][0]

    entry = server.run(graph("vit-h.safetensors"))
    assert entry["status"]["status_str"] == "error"
    err = execution_error(entry)
    assert err["node_type"] == "LunaVisionTranslator" and "1024-d" in err["exception_message"]
    assert "768-d" in err["exception_message"]
