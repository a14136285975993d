"""The shipped detailer graphs, adapted to a test ComfyUI's random models, and what a detail pass must do."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from comfy_server import ComfyServer, execution_error

REPO = Path(__file__).resolve().parents[1]
API = REPO / "workflows" / "api"
CKPT = "sd15-random.ckpt"


def picture(seed: int, size: int = 96) -> Image.Image:
    """A colour field with an 'iris': a disc of another colour, so crops differ in hue and structure."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), np.float32) + rng.uniform(0.2, 0.8, 3)
    yy, xx = np.mgrid[:size, :size]
    arr[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2] = rng.uniform(0, 1, 3)
    arr += rng.normal(0, 0.03, arr.shape)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))


def _link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2


def for_this_machine(graph: dict[str, Any], clip_vision: str = "vit-l-random.pt", ckpt: str = CKPT) -> dict[str, Any]:
    """A shipped graph with this server's random models, 64 px, 1 step and a 48 px crop at (16, 16)."""
    g = copy.deepcopy(graph)
    for n in g.values():
        ct, i = n["class_type"], n["inputs"]
        if ct == "CheckpointLoaderSimple":
            i["ckpt_name"] = ckpt
        elif ct == "CLIPVisionLoader":
            i["clip_name"] = clip_vision
        elif ct == "EmptyLatentImage":
            i.update(width=64, height=64, batch_size=6)
        elif ct == "ImageScale" and not _link(i["width"]):
            i.update(width=64, height=64)
        elif ct == "KSampler":
            i["steps"] = 1
        elif ct == "ImageCrop":
            for key, value in (("x", 16), ("y", 16), ("width", 48), ("height", 48)):
                if _link(i[key]):
                    g[i[key][0]]["inputs"]["value"] = value
    return g


def api(name: str) -> dict[str, Any]:
    return json.loads((API / f"{name}.json").read_text())


def saved(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [im for o in entry["outputs"].values() for im in o.get("images", []) if im.get("type") == "output"]


def detail_check(server: ComfyServer, entry: dict[str, Any]) -> np.ndarray:
    """One saved image, the 96 px example with only the 48 px crop at (16, 16) re-drawn."""
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    images = saved(entry)
    assert len(images) == 1
    with Image.open(server.base / "output" / images[0]["subfolder"] / images[0]["filename"]) as pic:
        out = np.asarray(pic.convert("RGB"), np.int16)
    before = np.asarray(picture(0), np.int16)
    assert out.shape == before.shape == (96, 96, 3)
    outside = np.ones((96, 96), bool)
    outside[16:64, 16:64] = False
    assert np.array_equal(out[outside], before[outside]), "pixels outside the crop changed"
    assert np.abs(out[16:64, 16:64] - before[16:64, 16:64]).mean() > 1.0, "the crop was not re-drawn"
    return out
