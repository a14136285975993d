"""The shipped crop detailer (an SDXL workflow) samples with a random-initialised SDXL base checkpoint of
the real architecture (UNet 2.6B, CLIP-L + CLIP-G, VAE: ~12 GB of fp32 weights in the server) at 64 px,
1 step. Its own module, so its server starts after the SD1.5 one has stopped."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_server import ComfyServer, execution_error, require_comfyui, save_random_models
from detail_graphs import api, detail_check, for_this_machine, picture

pytestmark = pytest.mark.slow
require_comfyui("transformers")
CKPT = "sdxl-random.ckpt"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from random_models import save_sdxl_checkpoint

    s = ComfyServer(tmp_path_factory.mktemp("comfyui-sdxl"))
    s.prepare()
    save_random_models(s.base)
    save_sdxl_checkpoint(s.base / "models" / "checkpoints" / CKPT)
    picture(0).save(s.base / "input" / "example.png")
    for i in range(5):
        picture(30 + i).save(s.base / "input" / f"e{i}.png")
    s.start()
    yield s
    s.stop()


def test_sdxl_crop_detailer_samples(server: ComfyServer) -> None:
    build: dict[str, Any] = {"cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-l-random.pt"}}}
    for i in range(5):
        build[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"e{i}.png"}}
        build[f"b{i}"] = {"class_type": "LunaVaultBuilder", "inputs": {
            "clip_vision": ["cv", 0], "vault_name": "eyes", "mode": "append", "category": "eyes", "thumbnails": True,
            "images": [f"img{i}", 0], "prompts": f"eye {i}", "metadata": "{}"}}
    entry = server.run(build, timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    entry = server.run(for_this_machine(api("luna_crop_detailer_vault"), ckpt=CKPT), timeout=1200)
    detail_check(server, entry)
    assert entry["outputs"]["10"]["text"][0].startswith("crop 0: eyes  ")
