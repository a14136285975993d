"""Dataset readers: sidecars, ComfyUI's PNG prompt graph, A1111 parameters, EXIF UserComment, categories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from luna_vault.extraction.readers import describe, list_images, parse_a1111, parse_comfy_prompt, read_embedded

GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": ["20", 0], "positive": ["12", 0], "negative": ["7", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ponyXL_v6.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "amber eye, macro", "clip": ["10", 1]}},
    "8": {"class_type": "CLIPTextEncode", "inputs": {"text": ["21", 0], "clip": ["10", 1]}},
    "12": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["8", 0]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["10", 1]}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "eyes_v2.safetensors", "strength_model": 0.6,
                                                    "model": ["4", 0], "clip": ["4", 1]}},
    "20": {"class_type": "PrimitiveInt", "inputs": {"value": 4242}},
    "21": {"class_type": "PrimitiveString", "inputs": {"value": "gold ring"}},
    "30": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
}


def test_comfy_graph_follows_positive_through_combine_and_primitives() -> None:
    prompt, meta = parse_comfy_prompt(GRAPH)
    assert prompt == "amber eye, macro, gold ring"
    assert meta == {"seed": 4242, "checkpoint": "ponyXL_v6.safetensors", "negative": "blurry",
                    "loras": [{"name": "eyes_v2.safetensors", "strength": 0.6}]}


def test_sdxl_text_encoder_fields() -> None:
    graph = {"1": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 9, "positive": ["2", 0], "negative": ["2", 0]}},
             "2": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "steel gauntlet", "text_l": "steel"}}}
    assert parse_comfy_prompt(graph) == ("steel gauntlet", {"seed": 9, "negative": "steel gauntlet"})


def test_a1111_parameters() -> None:
    text = ("portrait, <lora:detailEyes:0.8> violet eyes,\nsoft light\n"
            "Negative prompt: lowres, bad anatomy\n"
            'Steps: 30, Sampler: DPM++ 2M, CFG scale: 7, Seed: 987654, Size: 512x512, Model: juggernautXL, Lora hashes: "a: 1"')
    prompt, meta = parse_a1111(text)
    assert prompt == "portrait, violet eyes,\nsoft light"
    assert meta == {"negative": "lowres, bad anatomy", "loras": [{"name": "detailEyes", "strength": 0.8}],
                    "seed": 987654, "checkpoint": "juggernautXL"}
    assert parse_a1111("just a prompt") == ("just a prompt", {})


def _img() -> Image.Image:
    return Image.fromarray(np.full((16, 16, 3), 128, np.uint8))


def test_read_embedded_png_and_exif(tmp_path: Path) -> None:
    info = PngInfo()
    info.add_text("prompt", json.dumps(GRAPH))
    _img().save(tmp_path / "c.png", pnginfo=info)
    with Image.open(tmp_path / "c.png") as im:
        assert read_embedded(im)[0] == "amber eye, macro, gold ring"
    info = PngInfo()
    info.add_text("parameters", "red eye\nSteps: 20, Seed: 5")
    _img().save(tmp_path / "a.png", pnginfo=info)
    with Image.open(tmp_path / "a.png") as im:
        assert read_embedded(im) == ("red eye", {"seed": 5})
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "green eye\nSteps: 10, Seed: 77".encode("utf-16-be")
    _img().save(tmp_path / "x.jpg", exif=exif)
    with Image.open(tmp_path / "x.jpg") as im:
        assert read_embedded(im) == ("green eye", {"seed": 77})
    _img().save(tmp_path / "none.png")
    with Image.open(tmp_path / "none.png") as im:
        assert read_embedded(im) == (None, {})


def test_sidecars_and_category_rules(tmp_path: Path) -> None:
    (tmp_path / "eyes").mkdir()
    for name in ("a.png", "b.webp", "c.jpg"):
        _img().save(tmp_path / "eyes" / name)
    (tmp_path / "eyes" / "a.txt").write_text("blue eye\n")
    (tmp_path / "eyes" / "b.json").write_text(json.dumps({"prompt": "grey eye", "category": "irises", "quality_score": 0.9,
                                                          "seed": 3, "mood": "calm"}))
    (tmp_path / "eyes" / "c.txt").write_text("from txt")
    (tmp_path / "eyes" / "c.json").write_text(json.dumps({"prompt": "from json", "checkpoint": "x"}))
    (tmp_path / "eyes" / "notes.txt").write_text("not an image")
    images = list_images(tmp_path)
    assert [p.name for p in images] == ["a.png", "b.webp", "c.jpg"]
    a, b, c = (describe(p, tmp_path, None) for p in images)
    assert (a.prompt, a.metadata) == ("blue eye", {"category": "eyes", "source": "eyes/a.png"})
    assert (b.prompt, b.metadata) == ("grey eye", {"category": "irises", "quality": 0.9, "seed": 3, "mood": "calm",
                                                    "source": "eyes/b.webp"})
    assert (c.prompt, c.metadata["checkpoint"]) == ("from json", "x")
    assert describe(images[0], tmp_path, "eyes-flag").metadata["category"] == "eyes-flag"
    (tmp_path / "eyes" / "a.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        describe(images[0], tmp_path, None)
