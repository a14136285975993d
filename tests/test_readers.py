"""Prompt readers: ComfyUI graphs of every shape (typed edges), image formats, sidecars, precise skip reasons."""

from __future__ import annotations

import io
import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from luna_vault.extraction.comfy_graph import NodeTypes, read_graph
from luna_vault.extraction.comfy_workflow import api_from_workflow
from luna_vault.extraction.image_meta import parse_a1111, png_fields, read_prompt, strip_png_text
from luna_vault.extraction.readers import describe, list_images


def enc(text: str, clip: str = "4") -> dict[str, Any]:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": [clip, 1]}}


def saver(src: str = "8") -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": [src, 0]}}


def decode(samples: str) -> dict[str, Any]:
    return {"class_type": "VAEDecode", "inputs": {"samples": [samples, 0], "vae": ["4", 2]}}


def ksampler(pos: str, neg: str, model: str = "4", latent: str = "5", seed: Any = 7) -> dict[str, Any]:
    return {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                                 "scheduler": "normal", "denoise": 1.0, "model": [model, 0],
                                                 "positive": [pos, 0], "negative": [neg, 0], "latent_image": [latent, 0]}}


BASE = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
    "6": enc("amber eye, macro"),
    "7": enc("blurry, text, watermark"),
    "8": decode("3"),
    "9": saver(),
}

GRAPH = {  # combine + primitives + LoRA on the model path
    **BASE,
    "3": ksampler("12", "7", model="10", seed=["20", 0]),
    "11": {"class_type": "CLIPTextEncode", "inputs": {"text": ["21", 0], "clip": ["10", 1]}},
    "12": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["11", 0]}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "eyes_v2.safetensors", "strength_model": 0.6,
                                                    "strength_clip": 1.0, "model": ["4", 0], "clip": ["4", 1]}},
    "20": {"class_type": "PrimitiveInt", "inputs": {"value": 4242}},
    "21": {"class_type": "PrimitiveString", "inputs": {"value": "gold ring"}},
}


def test_graph_follows_the_positive_through_combine_and_primitives() -> None:
    r = read_graph(GRAPH)
    assert r.reason is None and r.prompt == "amber eye, macro, gold ring"
    assert r.negative == "blurry, text, watermark"
    assert r.metadata == {"seed": 4242, "steps": 20, "cfg": 7.0, "sampler": "euler", "scheduler": "normal",
                          "denoise": 1.0, "width": 512, "height": 768, "checkpoint": "base.safetensors",
                          "loras": [{"name": "eyes_v2.safetensors", "strength": 0.6}],
                          "negative": "blurry, text, watermark"}
    assert r.path[:3] == ["SaveImage #9", "VAEDecode #8", "KSampler #3"]


def test_sdxl_encoder_text_g_and_text_l_once() -> None:
    g = {**BASE, "3": ksampler("2", "7"),
         "2": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "steel gauntlet", "text_l": "steel gauntlet",
                                                              "width": 1024, "clip": ["4", 1]}}}
    assert read_graph(g).prompt == "steel gauntlet"


def test_custom_sampler_with_guider_flux_guidance_and_unet_loader() -> None:
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "metal.safetensors", "strength_model": 0.8,
                                                              "model": ["1", 0]}},
        "3": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5.safetensors", "clip_name2": "l.safetensors",
                                                         "type": "flux"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "brushed steel ring", "clip": ["3", 0]}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["2", 0], "conditioning": ["26", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": 123}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 28, "denoise": 1.0,
                                                          "model": ["2", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["25", 0], "guider": ["22", 0],
                                                                 "sampler": ["16", 0], "sigmas": ["17", 0],
                                                                 "latent_image": ["27", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9": saver(),
    }
    r = read_graph(g)
    assert r.prompt == "brushed steel ring"
    assert r.metadata["seed"] == 123 and r.metadata["steps"] == 28 and r.metadata["sampler"] == "euler"
    assert r.metadata["checkpoint"] == "flux1-dev.safetensors"
    assert r.metadata["loras"] == [{"name": "metal.safetensors", "strength": 0.8}]
    assert (r.metadata["width"], r.metadata["height"]) == (1024, 1024)
    assert "BasicGuider #22" in r.path and "FluxGuidance #26" in r.path
    cfg = dict(g, **{"22": {"class_type": "CFGGuider", "inputs": {"model": ["2", 0], "positive": ["26", 0],
                                                                  "negative": ["30", 0], "cfg": 4.5}},
                     "30": enc("lowres", "3")})
    r = read_graph(cfg)
    assert (r.prompt, r.negative, r.metadata["cfg"]) == ("brushed steel ring", "lowres", 4.5)


def test_positive_and_negative_outputs_never_mix() -> None:
    """ControlNetApplyAdvanced has outputs positive/negative: each continues through its own input."""
    g = {**BASE, "3": ksampler("30", "30"),
         "30": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["6", 0], "negative": ["7", 0],
                                                                    "control_net": ["31", 0], "image": ["32", 0],
                                                                    "strength": 1.0}},
         "31": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn.safetensors"}},
         "32": {"class_type": "LoadImage", "inputs": {"image": "pose.png"}}}
    g["3"]["inputs"]["negative"] = ["30", 1]
    r = read_graph(g)
    assert r.prompt == "amber eye, macro" and r.negative == "blurry, text, watermark"


def test_gligen_box_text_is_not_the_prompt() -> None:
    g = {**BASE, "3": ksampler("27", "7"),
         "27": {"class_type": "GLIGENTextBoxApply", "inputs": {"text": "sun", "width": 64, "height": 64, "x": 0, "y": 0,
                                                               "conditioning_to": ["6", 0], "clip": ["4", 1],
                                                               "gligen_textbox_model": ["28", 0]}},
         "28": {"class_type": "GLIGENLoader", "inputs": {"gligen_name": "g.safetensors"}}}
    assert read_graph(g).prompt == "amber eye, macro"


def _two_passes() -> dict[str, Any]:
    return {
        **BASE, "3": ksampler("6", "7"),
        "12": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "refiner.safetensors"}},
        "13": enc("amber eye, macro, sharp iris detail", "12"),
        "27": {"class_type": "LatentUpscaleBy", "inputs": {"upscale_method": "bislerp", "scale_by": 1.5,
                                                           "samples": ["3", 0]}},
        "32": ksampler("13", "7", model="12", latent="27", seed=99),
        "11": decode("32"),
        "10": saver("11"),  # the first pass's SaveImage is #9, earlier in the JSON
    }


def test_several_passes_the_one_that_made_the_image_by_its_size() -> None:
    g = _two_passes()
    second = read_graph(g, image_size=(768, 1152))  # 512x768 latent x 1.5
    assert second.prompt == "amber eye, macro, sharp iris detail"
    assert (second.metadata["seed"], second.metadata["checkpoint"]) == (99, "refiner.safetensors")  # one pass, one model
    first = read_graph(g, image_size=(512, 768))
    assert first.prompt == "amber eye, macro" and first.metadata["checkpoint"] == "base.safetensors"
    # order in the JSON does not decide: the saver of pass 2 listed first still gives pass 2 for its size
    reordered = dict(reversed(list(g.items())))
    assert read_graph(reordered, image_size=(768, 1152)).prompt == "amber eye, macro, sharp iris detail"


def test_impact_pipes_and_detailer() -> None:
    g = {**BASE,
         "40": {"class_type": "ToBasicPipe", "inputs": {"model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2],
                                                        "positive": ["6", 0], "negative": ["7", 0]}},
         "41": {"class_type": "FromBasicPipe", "inputs": {"basic_pipe": ["40", 0]}},
         "3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["41", 0], "positive": ["41", 3],
                                                    "negative": ["41", 4], "latent_image": ["5", 0]}},
         "50": {"class_type": "FaceDetailer", "inputs": {"image": ["8", 0], "model": ["41", 0], "clip": ["41", 1],
                                                         "vae": ["41", 2], "positive": ["51", 0], "negative": ["7", 0],
                                                         "seed": 1}},
         "51": enc("face, detailed skin"),
         "9": saver("50")}
    r = read_graph(g)  # the detailer is the pass nearest the saved image: its prompt re-drew it last
    assert r.prompt == "face, detailed skin" and r.negative == "blurry, text, watermark"
    assert r.path[:3] == ["SaveImage #9", "FaceDetailer #50", "CLIPTextEncode #51: encoder"]
    assert r.metadata["checkpoint"] == "base.safetensors" and r.metadata["seed"] == 1
    sampler_pipe = dict(g, **{"3": {"class_type": "ImpactKSamplerBasicPipe",
                                    "inputs": {"basic_pipe": ["40", 0], "seed": 6, "latent_image": ["5", 0]}},
                              "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 1], "vae": ["4", 2]}},
                              "9": saver("8")})
    r = read_graph(sampler_pipe)
    assert (r.prompt, r.metadata["seed"]) == ("amber eye, macro", 6)
    # a detailer on a loaded image, fed only by a pipe (FaceDetailerPipe): the pass that made the image
    loaded = dict(g, **{"8": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
                        "52": {"class_type": "BasicPipeToDetailerPipe", "inputs": {"basic_pipe": ["40", 0], "wildcard": ""}},
                        "50": {"class_type": "FaceDetailerPipe", "inputs": {"image": ["8", 0], "detailer_pipe": ["52", 0],
                                                                            "seed": 3}}})
    del loaded["3"]
    r = read_graph(loaded)
    assert (r.prompt, r.metadata["seed"]) == ("amber eye, macro", 3), r.reason
    assert "BasicPipeToDetailerPipe #52 (unpacking positive)" in r.path


def test_efficiency_loader_and_sampler() -> None:
    g = {"1": {"class_type": "Efficient Loader", "inputs": {"ckpt_name": "eff.safetensors", "lora_name": "None",
                                                            "positive": "violet iris", "negative": "lowres",
                                                            "empty_latent_width": 512, "empty_latent_height": 512}},
         "2": {"class_type": "KSampler (Efficient)", "inputs": {"model": ["1", 0], "positive": ["1", 1],
                                                                "negative": ["1", 2], "latent_image": ["1", 3],
                                                                "seed": 11, "steps": 20}},
         "3": saver("2")}
    g["3"]["inputs"]["images"] = ["2", 5]
    r = read_graph(g)
    assert (r.prompt, r.negative, r.metadata["checkpoint"], r.metadata["seed"]) == ("violet iris", "lowres",
                                                                                    "eff.safetensors", 11)
    del g["3"]  # no saver: the sampler shows its own image
    assert read_graph(g).prompt == "violet iris"


def test_text_from_concatenation_wildcards_and_an_unknowable_node() -> None:
    g = {**BASE, "3": ksampler("11", "7"),
         "11": {"class_type": "CLIPTextEncode", "inputs": {"text": ["12", 0], "clip": ["4", 1]}},
         "12": {"class_type": "StringConcatenate", "inputs": {"string_a": ["13", 0], "string_b": "macro lens",
                                                              "delimiter": ", "}},
         "13": {"class_type": "ImpactWildcardProcessor", "inputs": {"wildcard_text": "__eyes__ eye",
                                                                    "populated_text": "jade eye", "mode": True}}}
    assert read_graph(g).prompt == "jade eye, macro lens"
    g["13"] = {"class_type": "OllamaGenerate", "inputs": {"model": "llama3", "prompt": "describe an eye"}}
    r = read_graph(g)
    assert r.prompt is None and r.reason == "the text comes from a node this reader cannot evaluate: OllamaGenerate"


def test_unknown_custom_nodes_followed_by_their_workflow_types() -> None:
    """A node nobody knows: the UI workflow stored beside the graph gives its sockets' types."""
    g = {**BASE, "3": ksampler("60", "7"),
         "60": {"class_type": "MyPromptStyler", "inputs": {"style": "cinematic", "conditioning": ["6", 0]}}}
    ui = {"nodes": [{"id": 60, "type": "MyPromptStyler", "inputs": [{"name": "conditioning", "type": "CONDITIONING",
                                                                      "link": 1}],
                     "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING"}]}], "links": []}
    assert read_graph(g, ui).prompt == "amber eye, macro"


@pytest.mark.parametrize("graph, reason", [
    ({"6": enc("x"), "7": enc("y")}, "no output node that saves or previews an image"),
    ({"9": saver(), "8": decode("3"), "3": {"class_type": "EmptyLatentImage", "inputs": {}}},
     "no sampler upstream of its image output"),
    ({**BASE, "3": ksampler("99", "7")}, "links to node 99, which is not in the graph"),
    ({**BASE, "3": ksampler("30", "7"),
      "30": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["31", 0], "conditioning_2": ["6", 0]}},
      "31": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["30", 0]}}}, None),
    ({"1": [1, 2], "2": "x"}, "the graph holds no nodes"),
])
def test_bad_graphs_give_a_reason_never_a_hang(graph: dict[str, Any], reason: str | None) -> None:
    t = time.perf_counter()
    r = read_graph(graph)
    assert time.perf_counter() - t < 5
    if reason is None:  # a cycle: the text outside it is still found, the loop is not followed twice
        assert r.prompt == "amber eye, macro"
    else:
        assert r.prompt is None and reason in r.reason


def test_api_graph_from_the_ui_workflow() -> None:
    """Widgets get their names from the node types (a seed's control value skipped); reroutes, primitives
    and bypassed nodes are resolved; muted nodes dropped."""
    ui = {"nodes": [
        {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["base.safetensors"],
         "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"}, {"name": "VAE", "type": "VAE"}]},
        {"id": 6, "type": "CLIPTextEncode", "widgets_values": ["amber eye"], "inputs": [{"name": "clip", "link": 1}]},
        {"id": 7, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 2},
                                                       {"name": "text", "link": 7, "widget": {"name": "text"}}]},
        {"id": 20, "type": "PrimitiveNode", "widgets_values": ["blurry"], "outputs": [{"name": "STRING", "links": [7]}]},
        {"id": 15, "type": "Reroute", "inputs": [{"name": "", "link": 3}]},
        {"id": 16, "type": "ConditioningZeroOut", "mode": 4, "inputs": [{"name": "conditioning", "type": "CONDITIONING",
                                                                          "link": 4}]},
        {"id": 3, "type": "KSampler", "widgets_values": [42, "randomize", 20, 7.0, "euler", "normal", 1.0],
         "inputs": [{"name": "model", "link": 5}, {"name": "positive", "link": 6}, {"name": "negative", "link": 8}]},
        {"id": 99, "type": "CLIPTextEncode", "mode": 2, "widgets_values": ["muted"]},
    ], "links": [[1, 4, 1, 6, 0, "CLIP"], [2, 4, 1, 7, 0, "CLIP"], [3, 6, 0, 15, 0, "CONDITIONING"],
                 [4, 15, 0, 16, 0, "CONDITIONING"], [5, 4, 0, 3, 0, "MODEL"], [6, 16, 0, 3, 1, "CONDITIONING"],
                 [7, 20, 0, 7, 1, "STRING"], [8, 7, 0, 3, 2, "CONDITIONING"]]}
    api = api_from_workflow(ui)
    assert api["3"]["inputs"] == {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "seed": 42, "steps": 20,
                                  "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    assert api["7"]["inputs"]["text"] == "blurry" and "99" not in api and "16" not in api and "15" not in api


# ---- image formats ----------------------------------------------------------------------------------
def _img(size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8))


def _png(tmp_path: Path, name: str, **text: str) -> Path:
    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    _img().save(tmp_path / name, pnginfo=info)
    return tmp_path / name


def test_formats_comfyui_png_webp_a1111_novelai_invokeai_swarm_fooocus(tmp_path: Path) -> None:
    assert read_prompt(_png(tmp_path, "c.png", prompt=json.dumps(GRAPH))).prompt == "amber eye, macro, gold ring"
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + json.dumps(GRAPH)
    exif[0x010F] = "workflow:{}"
    _img().save(tmp_path / "c.webp", exif=exif)
    r = read_prompt(tmp_path / "c.webp")
    assert (r.prompt, r.generator) == ("amber eye, macro, gold ring", "comfyui")
    r = read_prompt(_png(tmp_path, "a.png", parameters="red eye\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512"))
    assert (r.prompt, r.generator, r.metadata) == ("red eye", "a1111", {"seed": 5, "steps": 20, "sampler": "Euler a",
                                                                        "cfg": 7.0, "width": 512, "height": 512})
    for where in ("exif", "ifd0"):  # A1111 text in EXIF UserComment, in the Exif sub-IFD or in IFD0
        exif = Image.Exif()
        comment = b"UNICODE\0" + "green eye\nSteps: 10, Seed: 77".encode("utf-16-be")
        (exif.get_ifd(0x8769) if where == "exif" else exif)[0x9286] = comment
        _img().save(tmp_path / f"{where}.jpg", exif=exif)
        assert read_prompt(tmp_path / f"{where}.jpg").prompt == "green eye", where
    nai = _png(tmp_path, "n.png", Software="NovelAI", Description="silver eye",
               Comment=json.dumps({"prompt": "silver eye", "uc": "lowres", "seed": 3, "steps": 28, "scale": 5}))
    r = read_prompt(nai)
    assert (r.prompt, r.generator, r.metadata["negative"], r.metadata["seed"]) == ("silver eye", "novelai", "lowres", 3)
    inv = _png(tmp_path, "i.png", invokeai_metadata=json.dumps({"positive_prompt": "hazel eye", "negative_prompt": "x",
                                                                "seed": 8, "model": {"name": "juggernaut"}}))
    r = read_prompt(inv)
    assert (r.prompt, r.generator, r.metadata["checkpoint"]) == ("hazel eye", "invokeai", "juggernaut")
    old = _png(tmp_path, "o.png", **{"sd-metadata": json.dumps({"model_weights": "sd15",
                                                                  "image": {"prompt": [{"prompt": "red iris [blurry]"}],
                                                                            "seed": 1}})})
    assert read_prompt(old).prompt == "red iris" and read_prompt(old).metadata["negative"] == "blurry"
    swarm = _png(tmp_path, "s.png", parameters=json.dumps({"sui_image_params": {"prompt": "gold eye", "seed": 2,
                                                                                 "model": "flux"}}))
    r = read_prompt(swarm)
    assert (r.prompt, r.generator, r.metadata["checkpoint"]) == ("gold eye", "swarmui", "flux")
    foo = _png(tmp_path, "f.png", parameters=json.dumps({"Prompt": "teal eye", "Negative Prompt": "bad", "Seed": 4,
                                                         "Base Model": "juggernautXL"}))
    r = read_prompt(foo)
    assert (r.prompt, r.generator, r.metadata["negative"]) == ("teal eye", "fooocus", "bad")


def test_workflow_only_png_and_broken_prompt_chunk(tmp_path: Path) -> None:
    ui = {"nodes": [
        {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["base.safetensors"]},
        {"id": 6, "type": "CLIPTextEncode", "widgets_values": ["opal eye"], "inputs": [{"name": "clip", "link": 1}]},
        {"id": 5, "type": "EmptyLatentImage", "widgets_values": [16, 16, 1]},
        {"id": 3, "type": "KSampler", "widgets_values": [1, "fixed", 20, 7.0, "euler", "normal", 1.0],
         "inputs": [{"name": "model", "link": 2}, {"name": "positive", "link": 3}, {"name": "latent_image", "link": 6}]},
        {"id": 8, "type": "VAEDecode", "inputs": [{"name": "samples", "link": 4}]},
        {"id": 9, "type": "SaveImage", "inputs": [{"name": "images", "link": 5}]},
    ], "links": [[1, 4, 1, 6, 0, "CLIP"], [2, 4, 0, 3, 0, "MODEL"], [3, 6, 0, 3, 1, "CONDITIONING"],
                 [4, 3, 0, 8, 0, "LATENT"], [5, 8, 0, 9, 0, "IMAGE"], [6, 5, 0, 3, 3, "LATENT"]]}
    # only the UI workflow, and exactly the size the graph makes (16x16): a saved output
    r = read_prompt(_png(tmp_path, "w.png", workflow=json.dumps(ui)))
    assert (r.prompt, r.generator, r.metadata["checkpoint"]) == ("opal eye", "comfyui-workflow", "base.safetensors")
    # only the UI workflow on a picture of another size: a canvas export, whose pixels show the graph
    info = PngInfo()
    info.add_text("workflow", json.dumps(ui))
    _img((1200, 700)).save(tmp_path / "canvas.png", pnginfo=info)
    r = read_prompt(tmp_path / "canvas.png")
    assert r.prompt is None and r.reason.startswith("only the UI workflow is embedded, as in a canvas export: the image "
                                                    "is 1200x700, the graph saves 16x16")
    r = read_prompt(_png(tmp_path, "b.png", prompt='{"3": {"class_type": "KSampler", ', workflow=json.dumps(ui)))
    assert r.prompt == "opal eye"  # the broken API graph falls back to the workflow
    r = read_prompt(_png(tmp_path, "bad.png", prompt='{"3": {"class_type": "KSampler", '))
    assert r.prompt is None and r.reason.startswith("the prompt chunk is not valid JSON at char 33")
    r = read_prompt(_png(tmp_path, "list.png", prompt="[1, 2]"))
    assert r.reason == "the prompt chunk holds a JSON list, not a graph object"
    deep = read_prompt(_png(tmp_path, "deep.png", prompt="[" * 100_000 + "]" * 100_000))
    assert deep.prompt is None and "nested too deeply" in deep.reason
    r = read_prompt(_png(tmp_path, "none.png"))
    assert r.prompt is None and r.reason.startswith("the image carries no generation metadata")


def test_huge_and_compressed_chunks(tmp_path: Path) -> None:
    """A 10 MB graph reads in well under a second; a compressed chunk over Pillow's 1 MB limit still reads,
    and the pixels still decode; a decompression bomb in a chunk is refused with a reason."""
    big = dict(GRAPH, **{str(1000 + i): enc("filler " * 20) for i in range(60_000)})
    path = _png(tmp_path, "big.png", prompt=json.dumps(big))
    assert path.stat().st_size > 10_000_000
    t = time.perf_counter()
    assert read_prompt(path).prompt == "amber eye, macro, gold ring"
    assert time.perf_counter() - t < 10
    info = PngInfo()
    info.add_text("prompt", json.dumps(dict(GRAPH, pad=enc("z" * 3_000_000))), zip=True)
    _img().save(tmp_path / "z.png", pnginfo=info)
    data = (tmp_path / "z.png").read_bytes()
    with pytest.raises(ValueError):  # what Pillow does with it
        Image.open(io.BytesIO(data))
    assert read_prompt(data).prompt == "amber eye, macro, gold ring"
    assert Image.open(io.BytesIO(strip_png_text(data))).size == (16, 16)
    bomb = zlib.compress(b"a" * (40 << 20))
    chunk = b"prompt\0\0" + bomb
    raw = data[:33] + len(chunk).to_bytes(4, "big") + b"zTXt" + chunk + b"\0\0\0\0" + data[33:]
    fields = png_fields(raw)
    assert any("more than 32 MB" in p for p in fields.problems)


def test_a1111_parameters() -> None:
    text = ("portrait, <lora:detailEyes:0.8> violet eyes,\nsoft light\n"
            "Negative prompt: lowres, bad anatomy\n"
            'Steps: 30, Sampler: DPM++ 2M, CFG scale: 7, Seed: 987654, Size: 512x512, Model: juggernautXL, Lora hashes: "a: 1"')
    prompt, meta = parse_a1111(text)
    assert prompt == "portrait, violet eyes,\nsoft light"
    assert meta == {"negative": "lowres, bad anatomy", "loras": [{"name": "detailEyes", "strength": 0.8}],
                    "seed": 987654, "checkpoint": "juggernautXL", "steps": 30, "sampler": "DPM++ 2M", "cfg": 7.0,
                    "width": 512, "height": 512}
    assert parse_a1111("just a prompt") == ("just a prompt", {})


def test_object_info_types_extend_the_builtin_table() -> None:
    info = {"MyEncoder": {"input": {"required": {"clip": ["CLIP"], "words": ["STRING", {"multiline": True}],
                                                 "style": [["a", "b"]]}},
                          "output": ["CONDITIONING"], "output_name": ["CONDITIONING"], "output_node": False}}
    types = NodeTypes.builtin().merged(NodeTypes.from_object_info(info))
    g = {**BASE, "3": ksampler("70", "7"), "70": {"class_type": "MyEncoder", "inputs": {"clip": ["4", 1], "words": "onyx eye",
                                                                                       "style": "a"}}}
    assert read_graph(g, types=types).prompt == "onyx eye"
    assert types.get("CLIPTextEncode") is not None and len(types.table) > 300


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
