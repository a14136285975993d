"""The shipped Qwen-Image detailer graph samples through Luna Vault Query in a real headless ComfyUI, for every
family whose diffusion model can be built small at its real architecture: Qwen-Image, Lumina 2, Chroma, Wan 2.1,
HunyuanImage 2.1 and SD3.5 (tests/random_families.py: ComfyUI's own classes, one block per stack, random weights,
loaded by UNETLoader / VAELoader from files). The text encoder is each family's own (ComfyUI's classes, full width,
fewer layers: tests/family_clips.py) from a test-only loader node, since the released ones (7-8B parameters) do not
fit here; the rest of the graph is the shipped one with this family's model files, its sampling patch, 64 px and
1 step. HiDream is not sampled: ComfyUI's detection builds it at 17B parameters whatever the file holds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from comfy_server import ComfyServer, execution_error, require_comfyui, save_random_models
from detail_graphs import api, detail_check, for_this_machine, picture

pytestmark = pytest.mark.slow
require_comfyui("transformers", "sentencepiece")

TESTS = Path(__file__).resolve().parents[1]
# family -> the model-sampling patch its ComfyUI template uses (None: the model's own sampling)
PATCH: dict[str, tuple[str, float] | None] = {
    "qwen_image": ("ModelSamplingAuraFlow", 3.1), "lumina2": ("ModelSamplingAuraFlow", 6.0), "chroma": None,
    "wan": ("ModelSamplingSD3", 8.0), "hunyuan_image": ("ModelSamplingSD3", 5.0), "sd3": ("ModelSamplingSD3", 3.0),
}
CLIP_NODE = f'''"""Test only: each family's text encoder as ComfyUI builds it, fewer layers (tests/family_clips.py)."""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, {str(TESTS)!r})
from family_clips import FAMILIES, build_clip  # noqa: E402


class LunaTestFamilyCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"family": (sorted(FAMILIES),)}}}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, family):
        return (build_clip(family, Path(tempfile.mkdtemp())),)


NODE_CLASS_MAPPINGS = {{"LunaTestFamilyCLIP": LunaTestFamilyCLIP}}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from random_families import VAE_OF, diffusion_shapes, save_random, vae_shapes

    s = ComfyServer(tmp_path_factory.mktemp("comfyui-families"))
    s.prepare()
    save_random_models(s.base)
    pack = s.base / "custom_nodes" / "luna_test_family_clip"
    pack.mkdir()
    (pack / "__init__.py").write_text(CLIP_NODE)
    for i, family in enumerate(PATCH):
        save_random(s.base / "models" / "diffusion_models" / f"{family}-random.pt", diffusion_shapes(family), seed=i)
    for kind in sorted(set(VAE_OF.values())):
        save_random(s.base / "models" / "vae" / f"{kind}-random.pt", vae_shapes(kind), seed=7)
    picture(0).save(s.base / "input" / "example.png")
    s.start()
    build = {"cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-l-random.pt"}}}
    for i in range(3):  # a text-mode vault (no CLIP on the Builder): any family encodes its prompts
        picture(30 + i).save(s.base / "input" / f"v{i}.png")
        build[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"v{i}.png"}}
        build[f"b{i}"] = {"class_type": "LunaVaultBuilder", "inputs": {
            "clip_vision": ["cv", 0], "vault_name": "eyes", "mode": "append", "category": "eyes", "thumbnails": False,
            "images": [f"img{i}", 0], "prompts": f'an amber eye number {i}, a tag reading "EYE {i}"', "metadata": "{}"}}
    entry = s.run(build, timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    yield s
    s.stop()


def family_graph(family: str) -> dict[str, Any]:
    """The shipped Qwen-Image detailer with this family's files, sampling patch and text encoder (see module doc)."""
    from random_families import VAE_OF

    g = copy.deepcopy(for_this_machine(api("luna_qwen_image_detailer_vault")))
    for nid, node in list(g.items()):
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "UNETLoader":
            inputs["unet_name"] = f"{family}-random.pt"
            unet = nid
        elif ct == "VAELoader":
            inputs["vae_name"] = f"{VAE_OF[family]}-random.pt"
        elif ct == "CLIPLoader":
            g[nid] = {"class_type": "LunaTestFamilyCLIP", "inputs": {"family": family}}
        elif ct == "LunaVaultQuery":
            inputs.update(vault="eyes", k=2)
    patch = next(nid for nid, n in g.items() if n["class_type"] == "ModelSamplingAuraFlow")
    if PATCH[family] is None:
        del g[patch]
        for node in g.values():
            node["inputs"] = {k: ([unet, 0] if v == [patch, 0] else v) for k, v in node["inputs"].items()}
    else:
        g[patch]["class_type"], g[patch]["inputs"]["shift"] = PATCH[family]
    return g


@pytest.mark.parametrize("family", list(PATCH))
def test_family_detailer_samples_through_the_vault(server: ComfyServer, family: str) -> None:
    server.post("/free", {"unload_models": True, "free_memory": True})  # one family's models in memory at a time
    entry = server.run(family_graph(family), timeout=900)
    detail_check(server, entry)
    query = next(o for o in entry["outputs"].values() if "text" in o and o["text"][0].startswith("crop 0: eyes"))
    assert query["images"] and query["text"][0].splitlines()[0].count(" #") == 2  # k = 2 matches, text mode
