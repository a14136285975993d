"""Prompt readers on graphs and files made by tools the built-in table does not know: custom text nodes of
any output type, detailers and pipes, group nodes / subgraphs / components, stealth parameters, false
reads, InvokeAI dream lines, several outputs, and hostile text (linear-time parsers)."""

from __future__ import annotations

import gzip
import io
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from luna_vault.extraction.comfy_graph import read_graph
from luna_vault.extraction.comfy_workflow import api_from_workflow, expand_components
from luna_vault.extraction.image_meta import read_prompt
from luna_vault.extraction.stealth import StealthError, read_stealth, write_stealth
from luna_vault.extraction.text_params import parse_a1111, parse_dream, split_negative

LOADER = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}}
LATENT = {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}}


def ksampler(pos: str, neg: str = "7", latent: str = "5", seed: int = 7) -> dict[str, Any]:
    return {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                                 "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                 "positive": [pos, 0], "negative": [neg, 0], "latent_image": [latent, 0]}}


def saved(sampler: str = "3", prefix: str = "ComfyUI", dec: str = "8", out: str = "9") -> dict[str, Any]:
    return {dec: {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": ["4", 2]}},
            out: {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": [dec, 0]}}}


def base(**nodes: Any) -> dict[str, Any]:
    return {"4": LOADER, "5": LATENT, "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
            **saved(), **nodes}


def ui_node(nid: int, kind: str, outs: list[tuple[str, str]], ins: list[tuple[str, str]] = (), **extra: Any) -> dict[str, Any]:
    return {"id": nid, "type": kind, "outputs": [{"name": n, "type": t} for n, t in outs],
            "inputs": [{"name": n, "type": t, "link": None} for n, t in ins], **extra}


# ---- 1. text from nodes whose output type is not STRING -----------------------------------------------------
def test_text_nodes_of_any_output_type_and_the_text_they_compute() -> None:
    """An ASCII / TEXT output reaching an encoder's text is text: literals, a two-input concatenation without a
    delimiter (a + b), find-and-replace, a random line picked with a fixed seed (Python's own random)."""
    lines = "small\nhuge\nlong\npuffy"
    g = base(**{
        "3": ksampler("13"),
        "10": {"class_type": "Text Multiline", "inputs": {"text": "adorable cat, SIZE ears"}},
        "11": {"class_type": "Text Random Line", "inputs": {"text": ["12", 0], "seed": 42}},
        "12": {"class_type": "Text Multiline", "inputs": {"text": lines}},
        "14": {"class_type": "Text Find and Replace Input", "inputs": {"text": ["10", 0], "find": "SIZE",
                                                                       "replace": ["11", 0]}},
        "15": {"class_type": "Text Concatenate", "inputs": {"text_a": ["14", 0], "text_b": ["16", 0],
                                                             "linebreak_addition": "false"}},
        "16": {"class_type": "Text String", "inputs": {"text": ", soft light", "text_b": ", studio"}},
        "13": {"class_type": "Text to Conditioning", "inputs": {"clip": ["4", 1], "text": ["15", 0]}},
    })
    ui = {"nodes": [ui_node(10, "Text Multiline", [("ASCII", "ASCII")]), ui_node(12, "Text Multiline", [("ASCII", "ASCII")]),
                    ui_node(11, "Text Random Line", [("TEXT", "TEXT")], [("text", "TEXT")]),
                    ui_node(14, "Text Find and Replace Input", [("TEXT", "TEXT")], [("text", "TEXT"), ("replace", "TEXT")]),
                    ui_node(16, "Text String", [("TEXT", "TEXT")] * 2),
                    ui_node(15, "Text Concatenate", [("TEXT", "TEXT")], [("text_a", "TEXT"), ("text_b", "TEXT")]),
                    ui_node(13, "Text to Conditioning", [("CONDITIONING", "CONDITIONING")], [("clip", "CLIP"), ("text", "TEXT")])]}
    picked = random.Random(42).choice(lines.split("\n"))
    r = read_graph(g, ui)
    assert r.prompt == f"adorable cat, {picked} ears, soft light", r.reason
    assert r.path[-1] == "Text to Conditioning #13: encoder"
    # the second output of a multi-output text node is its second text
    g["15"]["inputs"]["text_b"] = ["16", 1]
    assert read_graph(g, ui).prompt == f"adorable cat, {picked} ears, studio"
    # without the UI workflow nobody knows the node has two outputs: which text output 1 is cannot be told
    assert read_graph(g).reason == "the text comes from a node this reader cannot evaluate: Text String"
    # ...but nodes holding nothing but text still read without any socket types
    g["16"]["inputs"] = {"text": ", studio"}
    g["15"]["inputs"]["text_b"] = ["16", 0]
    assert read_graph(g).prompt == f"adorable cat, {picked} ears, studio"


def test_text_computed_at_run_time_is_no_prompt() -> None:
    """Token parsers, random picks without a fixed seed, stylers and LLM nodes make their text at run time: a
    partial or template text would be a wrong prompt."""
    template = {"class_type": "Text Multiline", "inputs": {"text": "adorable ([type] girls) with [eyes] eyes"}}
    for node, name in ((({"class_type": "Text Parse Tokens", "inputs": {"text": ["10", 0]}}), "Text Parse Tokens"),
                       ({"class_type": "Text Random Line", "inputs": {"text": ["10", 0], "seed": ["30", 0]}}, "Text Random Line"),
                       ({"class_type": "SDXLPromptStyler", "inputs": {"text_positive": ["10", 0], "text_negative": "bad",
                                                                      "style": "cinematic"}}, "SDXLPromptStyler"),
                       ({"class_type": "OllamaGenerate", "inputs": {"prompt": ["10", 0], "model": "llama3",
                                                                    "url": "http://127.0.0.1:11434"}}, "OllamaGenerate")):
        g = base(**{"3": ksampler("13"), "10": template, "11": node,
                    "30": {"class_type": "Seed Generator", "inputs": {"seed": ["31", 0]}},
                    "13": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ["11", 0]}}})
        r = read_graph(g)
        assert r.prompt is None and r.reason == f"the text comes from a node this reader cannot evaluate: {name}", name


def test_a_text_that_is_only_in_the_ui_widgets() -> None:
    g = base(**{"3": ksampler("13"), "10": {"class_type": "Note Text", "inputs": {}},
                "13": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ["10", 0]}}})
    ui = {"nodes": [ui_node(10, "Note Text", [("STRING", "STRING")], widgets_values=["a misty forest at dawn", 3])]}
    assert read_graph(g, ui).prompt == "a misty forest at dawn"


def test_an_encoder_of_both_sides_gives_each_side_its_own_text() -> None:
    """A custom node that encodes a `prompt` and a `negative_prompt` (an output per side, as in the public
    cg-use-everywhere test images): the positive is the prompt alone, the negative only the negative text."""
    g = base(**{"3": ksampler("13"),
                "10": {"class_type": "String_", "inputs": {"value": "atmospheric portrait of young woman"}},
                "11": {"class_type": "String_", "inputs": {"value": "hat"}},
                "13": {"class_type": "Dual Prompt Encode", "inputs": {"prompt": ["10", 0], "negative_prompt": ["11", 0],
                                                                      "clip": ["4", 1]}}})
    g["3"]["inputs"]["negative"] = ["13", 1]
    ui = {"nodes": [ui_node(10, "String_", [("string", "STRING")]), ui_node(11, "String_", [("string", "STRING")]),
                    ui_node(13, "Dual Prompt Encode", [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
                            [("clip", "CLIP"), ("prompt", "STRING"), ("negative_prompt", "STRING")])]}
    for r in (read_graph(g, ui), read_graph(g)):  # with the node's sockets from the UI workflow, and without them
        assert (r.prompt, r.negative) == ("atmospheric portrait of young woman", "hat"), r.reason
    # an ordinary encoder on the negative side still gives its one text
    g["3"]["inputs"]["negative"] = ["7", 0]
    assert read_graph(g, ui).negative == "blurry"


# ---- 2. detailers and pipes -------------------------------------------------------------------------------------
PIPE = {"40": {"class_type": "ToBasicPipe", "inputs": {"model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2],
                                                       "positive": ["6", 0], "negative": ["7", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "amber eye, macro", "clip": ["4", 1]}}}


def test_segs_paste_gets_its_prompt_from_the_segs_detailer_and_an_iterative_upscaler_is_a_pass() -> None:
    g = {**PIPE, "4": LOADER, "7": base()["7"],
         "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
         "2": {"class_type": "ImpactSimpleDetectorSEGS", "inputs": {"image": ["1", 0], "bbox_detector": ["20", 0]}},
         "20": {"class_type": "UltralyticsDetectorProvider", "inputs": {"model_name": "face.pt"}},
         "15": {"class_type": "SEGSDetailer", "inputs": {"image": ["1", 0], "segs": ["2", 0], "basic_pipe": ["40", 0],
                                                         "seed": 11}},
         "24": {"class_type": "SEGSPaste", "inputs": {"image": ["1", 0], "segs": ["15", 0]}},
         "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["24", 0]}}}
    r = read_graph(g)
    assert r.prompt == "amber eye, macro", r.reason
    assert "SEGSDetailer #15 (sampled with basic_pipe)" in r.path
    up = {**PIPE, "4": LOADER, "7": base()["7"],
          "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
          "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
          "49": {"class_type": "PixelKSampleUpscalerProviderPipe", "inputs": {"basic_pipe": ["40", 0], "seed": 3}},
          "56": {"class_type": "IterativeLatentUpscale", "inputs": {"samples": ["2", 0], "upscaler": ["49", 0],
                                                                    "upscale_factor": 2.0}},
          **saved("56")}
    assert read_graph(up).prompt == "amber eye, macro"


def test_regions_built_on_a_base_prompt_node() -> None:
    """An encoder whose text sits upstream (a regions node over a base prompt node): the base prompt's text."""
    g = base(**{"3": ksampler("55"),
                "53": {"class_type": "BNK_CutoffBasePrompt", "inputs": {"text": "a cat with a red scarf", "clip": ["4", 1]}},
                "54": {"class_type": "BNK_CutoffSetRegions", "inputs": {"region_text": "red scarf", "target_text": "red",
                                                                        "weight": 1.0, "clip_regions": ["53", 0]}},
                "55": {"class_type": "BNK_CutoffRegionsToConditioning", "inputs": {"mask_token": "", "strict_mask": 1.0,
                                                                                   "clip_regions": ["54", 0]}}})
    ui = {"nodes": [ui_node(53, "BNK_CutoffBasePrompt", [("CLIPREGION", "CLIPREGION")], [("clip", "CLIP")]),
                    ui_node(54, "BNK_CutoffSetRegions", [("CLIPREGION", "CLIPREGION")], [("clip_regions", "CLIPREGION")]),
                    ui_node(55, "BNK_CutoffRegionsToConditioning", [("CONDITIONING", "CONDITIONING")],
                            [("clip_regions", "CLIPREGION")])]}
    r = read_graph(g, ui)
    assert r.prompt == "a cat with a red scarf", r.reason
    assert r.path[-1] == "BNK_CutoffBasePrompt #53: encoder"


def test_a_pass_fed_by_a_base_and_a_mask_sampler_joins_both_prompts() -> None:
    g = {**PIPE, "4": LOADER, "5": LATENT, "7": base()["7"],
         "11": {"class_type": "EditBasicPipe", "inputs": {"basic_pipe": ["40", 0], "positive": ["12", 0]}},
         "12": {"class_type": "CLIPTextEncode", "inputs": {"text": "red jacket", "clip": ["4", 1]}},
         "13": {"class_type": "KSamplerAdvancedProvider", "inputs": {"basic_pipe": ["40", 0], "cfg": 8}},
         "15": {"class_type": "KSamplerAdvancedProvider", "inputs": {"basic_pipe": ["11", 0], "cfg": 8}},
         "36": {"class_type": "TwoAdvancedSamplersForMask", "inputs": {"samples": ["5", 0], "base_sampler": ["13", 0],
                                                                       "mask_sampler": ["15", 0], "mask": ["1", 1]}},
         "1": {"class_type": "LoadImage", "inputs": {"image": "m.png"}}, **saved("36")}
    r = read_graph(g)
    assert r.prompt == "amber eye, macro, red jacket", r.reason


# ---- 3. group nodes, subgraphs, components ------------------------------------------------------------------
def _links(*pairs: tuple[int, int, int, int, int, str]) -> list[list[Any]]:
    return [list(p) for p in pairs]


SAMPLER_UI = [
    {"id": 5, "type": "EmptyLatentImage", "widgets_values": [64, 64, 1], "outputs": [{"name": "LATENT", "type": "LATENT"}]},
    {"id": 3, "type": "KSampler", "widgets_values": [5, "fixed", 20, 7.0, "euler", "normal", 1.0],
     "inputs": [{"name": "model", "type": "MODEL", "link": 11}, {"name": "positive", "type": "CONDITIONING", "link": 12},
                {"name": "negative", "type": "CONDITIONING", "link": 13}, {"name": "latent_image", "type": "LATENT", "link": 14}],
     "outputs": [{"name": "LATENT", "type": "LATENT"}]},
    {"id": 8, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": 15},
                                              {"name": "vae", "type": "VAE", "link": 16}],
     "outputs": [{"name": "IMAGE", "type": "IMAGE"}]},
    {"id": 9, "type": "SaveImage", "inputs": [{"name": "images", "type": "IMAGE", "link": 17}], "widgets_values": ["x"]}]


def test_a_group_node_of_a_workflow_only_image_is_expanded() -> None:
    """The ComfyUI front end's group node (`workflow>NAME`, defined in extra.groupNodes): inner nodes by index, the
    instance's widget values handed out in order, unlinked inner outputs exposed in order."""
    group = {"nodes": [
        {"index": 0, "type": "CheckpointLoaderSimple", "widgets_values": ["old.safetensors"],
         "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"}, {"name": "VAE", "type": "VAE"}]},
        {"index": 1, "type": "CLIPTextEncode", "widgets_values": ["old prompt"], "inputs": [{"name": "clip", "type": "CLIP"}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING"}]},
        {"index": 2, "type": "CLIPTextEncode", "widgets_values": ["old negative"], "inputs": [{"name": "clip", "type": "CLIP"}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING"}]},
        {"index": 3, "type": "ToBasicPipe", "inputs": [{"name": n, "type": t} for n, t in (
            ("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"))],
         "outputs": [{"name": "basic_pipe", "type": "BASIC_PIPE"}]}],
        "links": [[0, 1, 1, 0, 1, "CLIP"], [0, 1, 2, 0, 1, "CLIP"], [0, 0, 3, 0, 1, "MODEL"], [0, 1, 3, 1, 1, "CLIP"],
                  [0, 2, 3, 2, 1, "VAE"], [1, 0, 3, 3, 1, "CONDITIONING"], [2, 0, 3, 4, 1, "CONDITIONING"]],
        "external": [[3, 0, "BASIC_PIPE"]]}
    ui = {"nodes": [
        {"id": 56, "type": "workflow>MAKE_PIPE", "widgets_values": ["sd15.safetensors", "silver ring, macro", "lowres"],
         "outputs": [{"name": "basic_pipe", "type": "BASIC_PIPE"}]},
        {"id": 57, "type": "FromBasicPipe", "inputs": [{"name": "basic_pipe", "type": "BASIC_PIPE", "link": 10}],
         "outputs": [{"name": n, "type": t} for n, t in (("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"),
                                                         ("positive", "CONDITIONING"), ("negative", "CONDITIONING"))]},
        *SAMPLER_UI],
        "links": _links((10, 56, 0, 57, 0, "BASIC_PIPE"), (11, 57, 0, 3, 0, "MODEL"), (12, 57, 3, 3, 1, "CONDITIONING"),
                        (13, 57, 4, 3, 2, "CONDITIONING"), (14, 5, 0, 3, 3, "LATENT"), (15, 3, 0, 8, 0, "LATENT"),
                        (16, 57, 2, 8, 1, "VAE"), (17, 8, 0, 9, 0, "IMAGE")),
        "extra": {"groupNodes": {"MAKE_PIPE": group}}}
    api = api_from_workflow(ui)
    assert api["56:1"] == {"class_type": "CLIPTextEncode", "inputs": {"clip": ["56:0", 1], "text": "silver ring, macro"}}
    assert api["57"]["inputs"]["basic_pipe"] == ["56:3", 0]
    r = read_graph(api, {"nodes": ui["nodes"]}, image_size=(64, 64))
    assert (r.prompt, r.metadata["negative"], r.metadata["checkpoint"]) == ("silver ring, macro", "lowres", "sd15.safetensors")


def test_a_subgraph_of_a_workflow_only_image_is_expanded() -> None:
    """Front end 1.24+ subgraphs: links from node -10 are the subgraph's inputs, links to node -20 its outputs."""
    sub = {"id": "0d7f-sub", "inputs": [{"name": "clip", "type": "CLIP"}], "outputs": [{"name": "cond", "type": "CONDITIONING"}],
           "nodes": [{"id": 1, "type": "CLIPTextEncode", "widgets_values": ["jade pendant"],
                      "inputs": [{"name": "clip", "type": "CLIP", "link": 1}],
                      "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING"}]}],
           "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "CLIP"},
                     {"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"}]}
    ui = {"nodes": [
        {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["base.safetensors"],
         "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"}, {"name": "VAE", "type": "VAE"}]},
        {"id": 30, "type": "0d7f-sub", "inputs": [{"name": "clip", "type": "CLIP", "link": 20}],
         "outputs": [{"name": "cond", "type": "CONDITIONING"}]},
        *SAMPLER_UI],
        "links": _links((20, 4, 1, 30, 0, "CLIP"), (11, 4, 0, 3, 0, "MODEL"), (12, 30, 0, 3, 1, "CONDITIONING"),
                        (14, 5, 0, 3, 3, "LATENT"), (15, 3, 0, 8, 0, "LATENT"), (16, 4, 2, 8, 1, "VAE"),
                        (17, 8, 0, 9, 0, "IMAGE")),
        "definitions": {"subgraphs": [sub]}}
    api = api_from_workflow(ui)
    assert api["30:1"] == {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "jade pendant"}}
    assert api["3"]["inputs"]["positive"] == ["30:1", 0]
    assert read_graph(api).prompt == "jade pendant"


def test_impact_components_are_expanded_in_api_graphs() -> None:
    """Impact Pack components stay one node in the API graph; the workflow's `components` defines them: the
    instance's values bind the ComponentInputs (by their labels), ComponentOutputs are its outputs in title order."""
    comp = {"nodes": [
        {"id": 1, "type": "ComponentInput", "title": "1.Component Input",
         "outputs": [{"name": "text_g", "label": "linguistic_positive", "type": "STRING", "links": [1]}]},
        {"id": 2, "type": "ComponentInput", "title": "2.Component Input",
         "outputs": [{"name": "text_l", "label": "supporting_terms", "type": "STRING", "links": [2]}]},
        {"id": 3, "type": "CheckpointLoaderSimple", "widgets_values": ["sdxl.safetensors"],
         "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"}, {"name": "VAE", "type": "VAE"}]},
        {"id": 4, "type": "CLIPTextEncodeSDXL", "widgets_values": [1024, 1024, 0, 0, 1024, 1024, "", ""],
         "inputs": [{"name": "clip", "type": "CLIP", "link": 3},
                    {"name": "text_g", "type": "STRING", "link": 1, "widget": {"name": "text_g"}},
                    {"name": "text_l", "type": "STRING", "link": 2, "widget": {"name": "text_l"}}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING"}]},
        {"id": 5, "type": "ToBasicPipe", "inputs": [{"name": "model", "link": 4}, {"name": "clip", "link": 5},
                                                     {"name": "vae", "link": 6}, {"name": "positive", "link": 7}],
         "outputs": [{"name": "basic_pipe", "type": "BASIC_PIPE"}]},
        {"id": 6, "type": "ComponentOutput", "title": "1.Component Output",
         "inputs": [{"name": "BASIC_PIPE", "type": "BASIC_PIPE", "link": 8}]}],
        "links": [[1, 1, 0, 4, 1, "STRING"], [2, 2, 0, 4, 2, "STRING"], [3, 3, 1, 4, 0, "CLIP"], [4, 3, 0, 5, 0, "MODEL"],
                  [5, 3, 1, 5, 1, "CLIP"], [6, 3, 2, 5, 2, "VAE"], [7, 4, 0, 5, 3, "CONDITIONING"],
                  [8, 5, 0, 6, 0, "BASIC_PIPE"]]}
    name = "## make-sdxl-pipe [556f76]"
    api = {"11": {"class_type": name, "inputs": {"linguistic_positive": "a lighthouse at dusk", "supporting_terms": "film grain"}},
           "52": {"class_type": "FromBasicPipe", "inputs": {"basic_pipe": ["11", 0]}},
           "5": LATENT,
           "3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["52", 0], "positive": ["52", 3],
                                                      "negative": ["52", 3], "latent_image": ["5", 0]}},
           "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["52", 2]}},
           "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}}}
    ui = {"nodes": [], "components": {name: comp}}
    expanded = expand_components(api, ui)
    assert "11" not in expanded and expanded["52"]["inputs"]["basic_pipe"] == ["11:5", 0]
    assert expanded["11:4"]["inputs"]["text_g"] == "a lighthouse at dusk"
    r = read_graph(expanded)
    assert (r.prompt, r.metadata["checkpoint"]) == ("a lighthouse at dusk, film grain", "sdxl.safetensors")


def test_a_muted_node_gives_nothing() -> None:
    """The front end drops links from muted nodes: an output fed through one never ran, the others still count."""
    g = base(**{"3": ksampler("6"), "6": PIPE["6"],
                "19": dict(ksampler("6"), inputs={**ksampler("6")["inputs"], "latent_image": ["5", 0]}),
                "28": {"class_type": "VAEDecode", "inputs": {"samples": ["90", 0], "vae": ["4", 2]}},
                "29": {"class_type": "SaveImage", "inputs": {"filename_prefix": "muted", "images": ["28", 0]}}})
    r = read_graph(g)
    assert r.prompt == "amber eye, macro", r.reason


# ---- several outputs: what the file says ------------------------------------------------------------------------
def _two_passes(second_prompt: str) -> dict[str, Any]:
    return base(**{"3": ksampler("6"), "6": PIPE["6"],
                   "20": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "scale_by": 2.0}},
                   "21": ksampler("22", latent="20"),
                   "22": {"class_type": "CLIPTextEncode", "inputs": {"text": second_prompt, "clip": ["4", 1]}},
                   **saved("21", prefix="hires", dec="23", out="24")})


def test_outputs_told_apart_by_size_name_and_format_or_no_prompt() -> None:
    g = _two_passes("amber eye, macro, sharp")
    assert read_graph(g, image_size=(512, 768)).prompt == "amber eye, macro"
    assert read_graph(g, image_size=(1024, 1536)).prompt == "amber eye, macro, sharp"
    assert read_graph(g, file_name="hires_00012_.png").prompt == "amber eye, macro, sharp"
    r = read_graph(g, image_size=(1, 1))  # a crop: its size says nothing, and the two prompts differ
    assert r.prompt is None and r.reason.startswith("the graph saves 2 images with different prompts (SaveImage #9, "
                                                    "SaveImage #24) and the file's name, size and format do not tell")
    assert read_graph(_two_passes("amber eye, macro"), image_size=(1, 1)).prompt == "amber eye, macro"  # the same prompt
    g["24"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"filename_prefix": "w", "images": ["23", 0], "fps": 6}}
    assert read_graph(g, image_format="WEBP").prompt == "amber eye, macro, sharp"
    # a stitched picture of both passes: its prompts differ, so it has none
    g["24"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "both", "images": ["25", 0]}}
    g["25"] = {"class_type": "ImageStitch", "inputs": {"image1": ["8", 0], "image2": ["23", 0], "direction": "right"}}
    r = read_graph(g, file_name="both_00001_.png")
    assert r.prompt is None and "put together from 2 passes with different prompts" in r.reason


def test_a_saved_copy_of_the_loaded_image_is_no_generated_image() -> None:
    g = base(**{"3": ksampler("6"), "6": PIPE["6"], "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
                "30": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "width": 512, "height": 768}},
                "31": {"class_type": "SaveImage", "inputs": {"filename_prefix": "input", "images": ["30", 0]}}})
    assert read_graph(g, file_name="ComfyUI_00001_.png").prompt == "amber eye, macro"
    r = read_graph(g, file_name="input_00001_.png")
    assert r.prompt is None and r.reason == "the image is saved by SaveImage #31 from a loaded image no sampler made"
    assert read_graph(g).prompt is None  # either could be the file


def test_lumina_system_prompt_goes_to_metadata() -> None:
    text = "You are an assistant designed to generate superior images.<Prompt Start> a koi pond in the rain"
    r = read_graph(base(**{"3": ksampler("6"), "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text,
                                                                                                "clip": ["4", 1]}}}))
    assert r.prompt == "a koi pond in the rain"
    assert r.metadata["system_prompt"] == "You are an assistant designed to generate superior images."


# ---- 5. stealth parameters ------------------------------------------------------------------------------------
def _bits(data: bytes) -> list[int]:
    return [int(b) for byte in data for b in format(byte, "08b")]


def test_stealth_bit_layout_by_hand() -> None:
    """The layout the extension writes, built here bit by bit: column by column (x outer), MSB first, signature,
    32-bit length in bits, payload; in RGB mode three bits per pixel."""
    text = "a fox\nSteps: 5, Seed: 9"
    stream = _bits(b"stealth_pnginfo") + [int(b) for b in format(len(text.encode()) * 8, "032b")] + _bits(text.encode())
    h, w = 16, -(-len(stream) // 16)
    alpha = np.full((h, w), 254, np.uint8)
    for i, bit in enumerate(stream):
        alpha[i % h, i // h] |= bit  # x = i // h, y = i % h
    px = np.dstack([np.full((h, w, 3), 100, np.uint8), alpha])
    assert read_stealth(px) == text
    rgb_stream = _bits(b"stealth_rgbcomp") + [int(b) for b in format(len(gzip.compress(text.encode())) * 8, "032b")]
    rgb_stream += _bits(gzip.compress(text.encode()))
    n = -(-len(rgb_stream) // 3)
    h = 8
    w = -(-n // h)
    flat = np.zeros(w * h * 3, np.uint8)
    flat[: len(rgb_stream)] = rgb_stream
    rgb = flat.reshape(w, h, 3).transpose(1, 0, 2) | np.uint8(0x40)  # pixel (x, y) = flat[(x * h + y) * 3 ...]
    assert read_stealth(rgb) == text


@pytest.mark.parametrize("mode,compressed", [("alpha", False), ("alpha", True), ("rgb", False), ("rgb", True)])
def test_stealth_png_is_read_only_when_the_file_has_no_written_metadata(tmp_path: Path, mode: str, compressed: bool) -> None:
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (40, 48, 4 if mode == "alpha" else 3), dtype=np.uint8)
    text = "violet eyes, macro\nNegative prompt: blurry\nSteps: 20, Seed: 5, CFG scale: 7"
    Image.fromarray(write_stealth(px, text, mode, compressed)).save(tmp_path / "s.png")
    r = read_prompt(tmp_path / "s.png")
    assert (r.prompt, r.generator, r.metadata) == ("violet eyes, macro", "a1111-stealth",
                                                   {"negative": "blurry", "seed": 5, "steps": 20, "cfg": 7.0})
    info = PngInfo()
    info.add_text("parameters", "written wins\nSteps: 3")
    Image.fromarray(write_stealth(px, text, mode, compressed)).save(tmp_path / "w.png", pnginfo=info)
    assert read_prompt(tmp_path / "w.png").prompt == "written wins"


def test_stealth_signature_with_a_lying_length_is_a_reason() -> None:
    px = np.zeros((8, 40, 4), np.uint8)
    stream = _bits(b"stealth_pnginfo") + [1] * 32
    view = px[:, :, 3].T.reshape(-1)
    view[: len(stream)] = stream
    px[:, :, 3] = view.reshape(40, 8).T
    with pytest.raises(StealthError, match="claim"):
        read_stealth(px)


# ---- 6. no false reads; 7. InvokeAI; A1111 edge cases ------------------------------------------------------------
def test_camera_and_os_comments_are_not_prompts(tmp_path: Path) -> None:
    for tag, text in ((0x9286, b"ASCII\0\0\0Screenshot"), (0x010E, "Created with GIMP"), (0x9286, b"UNICODE\0" +
                                                                                          "holiday 2024".encode("utf-16-be"))):
        exif = Image.Exif()
        (exif.get_ifd(0x8769) if tag == 0x9286 else exif)[tag] = text
        Image.new("RGB", (8, 8)).save(tmp_path / "c.jpg", exif=exif)
        r = read_prompt(tmp_path / "c.jpg")
        assert r.prompt is None and r.reason.startswith("the image carries no generation metadata"), text


def test_invokeai_dream_lines() -> None:
    assert parse_dream('"a castle [ugly, blurry] on a hill" -s 50 -S 1234 -W 512 -H 768 -C 7.5 -A k_lms') == (
        "a castle on a hill", {"steps": 50, "seed": 1234, "width": 512, "height": 768, "cfg": 7.5, "sampler": "k_lms",
                               "negative": "ugly, blurry"})
    assert parse_dream("blue sphere:0.25 red cube:0.75 hybrid -s 50 -S 3") == ("blue sphere:0.25 red cube:0.75 hybrid",
                                                                              {"steps": 50, "seed": 3})
    assert parse_dream("!mask ./test-pictures/curly.png -tm hair") == (None, {})
    assert parse_dream("<too lazy to implement>") == (None, {})
    assert parse_dream("<cat-toy> on a beach")[0] == "<cat-toy> on a beach"  # a concept token is a prompt
    assert split_negative("a [b [c]] d [e") == ("a d", "b [c], e")


def test_a1111_text_starting_with_a_brace_and_numbers_that_are_no_numbers(tmp_path: Path) -> None:
    info = PngInfo()
    info.add_text("parameters", "{red|blue} eyes, <lora:eyes:.> macro\nSteps: 20, CFG scale: nan, Seed: 1e999, Size: 512x512")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    r = read_prompt(tmp_path / "a.png")
    assert (r.prompt, r.metadata) == ("{red|blue} eyes, macro", {"loras": [{"name": "eyes", "strength": 1.0}], "steps": 20,
                                                                  "width": 512, "height": 512})
    json.dumps(r.metadata, allow_nan=False)  # every number finite


def test_a_swarm_template_drawn_at_run_time_is_no_prompt(tmp_path: Path) -> None:
    info = PngInfo()
    info.add_text("parameters", json.dumps({"sui_image_params": {"prompt": "a <random:red|blue> cat", "seed": 3}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "s.png", pnginfo=info)
    r = read_prompt(tmp_path / "s.png")
    assert r.prompt is None and r.reason.startswith("the SwarmUI prompt is a template whose parts are drawn at run time")


# ---- hostile text: every parser linear in its input -------------------------------------------------------------
HOSTILE = [
    ("settings of spaces", "a cat\nSteps: 1," + " " * 1_000_000 + "x"),
    ("lora tags", "<lora:" * 200_000),
    ("lora names", "<lora:" + "a" * 1_000_000),
    ("colons", "a cat\nSteps: 1, " + "a: " * 300_000),
    ("brackets", "[" * 1_000_000),
    ("quotes", 'a\nSteps: 1, x: "' + "\\" * 1_000_000),
]


@pytest.mark.parametrize("name,text", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_parameters_are_read_in_linear_time(name: str, text: str) -> None:
    t = time.perf_counter()
    parse_a1111(text)
    split_negative(text)
    parse_dream(text[:200_000])
    assert time.perf_counter() - t < 2.0  # quadratic or worse would take minutes at these lengths


def test_hostile_sd_metadata_and_dream_in_a_file(tmp_path: Path) -> None:
    info = PngInfo()
    info.add_text("sd-metadata", json.dumps({"image": {"prompt": "[" * 300_000, "seed": 10 ** 400}}))
    info.add_text("Dream", '"' + "[" * 300_000)
    Image.new("RGB", (8, 8)).save(tmp_path / "h.png", pnginfo=info)
    t = time.perf_counter()
    r = read_prompt(tmp_path / "h.png")
    assert time.perf_counter() - t < 5 and r.prompt is None


def test_stealth_from_a_file_of_bytes() -> None:
    px = np.random.default_rng(0).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(write_stealth(px, "a heron\nSteps: 4", "alpha", True)).save(buf, "PNG")
    assert read_prompt(buf.getvalue()).prompt == "a heron"


def test_a_comfyui_graph_in_a_jpeg_comment(tmp_path: Path) -> None:
    """Custom savers write JPEG/WebP with one JSON object {"prompt": graph, "workflow": ...} in an EXIF comment."""
    g = base(**{"3": ksampler("6"), "6": PIPE["6"]})
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + json.dumps({"prompt": g, "workflow": {"nodes": []}}).encode("utf-16-be")
    Image.new("RGB", (512, 768)).save(tmp_path / "c.jpg", exif=exif)
    r = read_prompt(tmp_path / "c.jpg")
    assert (r.prompt, r.generator) == ("amber eye, macro", "comfyui")
