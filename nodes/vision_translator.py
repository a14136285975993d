"""Luna Vision Translator: crop -> conditioning through a trained projector (vault hybrid optional)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import folder_paths
import torch
from comfy_api.latest import io

from ..core.conditioning import BLEND_MODES, blend, on_device_of
from ..extraction.comfy_adapters import ComfyClipTextEncoder, ComfyClipVisionEncoder
from ..projector.translate import load_cached, translate
from ..vault.cache import open_cached
from ..vault.query import check_query
from .common import CATEGORY, PROJECTORS, loaded_file, vault_names, vault_path, vault_stamp

NONE = "none"


def projector_names() -> list[str]:
    try:
        files = folder_paths.get_filename_list(PROJECTORS)
    except KeyError:
        return []
    return [f for f in files if f.endswith(".safetensors")]


def projector_path(name: str) -> Path:
    if name not in projector_names():
        raise ValueError(f"projector '{name}' not found in models/{PROJECTORS} (have: {', '.join(projector_names()) or 'none'}); "
                         "train one with `luna-vault train`, put it there, then refresh the page")
    return Path(folder_paths.get_full_path_or_raise(PROJECTORS, name))


class LunaVisionTranslator(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LunaVisionTranslator",
            display_name="Luna Vision Translator",
            category=CATEGORY,
            description="Turns a crop into conditioning with a trained projector; with a vault, crops the vault "
                        "knows well (best match >= threshold) use the vault instead. Reports which path each crop took.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="The crop, or a batch of crops (one conditioning row per crop)."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model the projector was trained with (checked)."),
                io.Combo.Input("projector", options=projector_names() or ["(no projectors yet)"],
                               tooltip="A projector in models/luna_projectors (luna-vault train)."),
                io.Float.Input("strength", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight of the translated conditioning in the blend (average/combine)."),
                io.Combo.Input("blend_mode", options=list(BLEND_MODES), default="average",
                               tooltip="average: lerp like ConditioningAverage; concat: append tokens; combine: add as a "
                                       "second conditioning; replace: use the translated one only."),
                io.Conditioning.Input("conditioning", optional=True, tooltip="Your positive conditioning to blend into."),
                io.Combo.Input("vault", options=[NONE, *vault_names()], default=NONE, optional=True,
                               tooltip="Hybrid: also search this vault and use it for crops it matches closely."),
                io.Float.Input("threshold", default=0.9, min=0.0, max=1.0, step=0.005, optional=True,
                               tooltip="Hybrid: use the vault when the best match's similarity is at least this."),
                io.Int.Input("k", default=5, min=1, max=100, optional=True, tooltip="Hybrid: matches per crop."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Hybrid: encode the vault's prompts with this CLIP (else its baked conditioning)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[
                io.Conditioning.Output("blended", display_name="blended", tooltip="Your conditioning with the translation blended in."),
                io.Conditioning.Output("translated", display_name="translated", tooltip="The translated conditioning alone."),
                io.String.Output("report", display_name="report", tooltip="JSON: per crop the path taken and the best vault similarity."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, projector: str, vault: str = NONE, **kwargs: Any) -> str:
        p = projector_path(projector) if projector in projector_names() else None
        stamp = f"{p.stat().st_mtime_ns}" if p else "missing"
        return f"{stamp}|{vault_stamp(vault) if vault != NONE else ''}"

    @classmethod
    def execute(cls, image: torch.Tensor, clip_vision: Any, projector: str, strength: float, blend_mode: str,
                conditioning: Any = None, vault: str = NONE, threshold: float = 0.9, k: int = 5,
                clip: Any = None) -> io.NodeOutput:
        if image is None or image.shape[0] == 0:
            raise ValueError("the image batch is empty: connect a crop (or a batch of crops)")
        encoder = ComfyClipVisionEncoder(clip_vision, file=loaded_file(cls.hidden, "clip_vision"))
        model, _ = load_cached(projector_path(projector), encoder.fingerprint)
        v = open_cached(vault_path(vault)) if vault and vault != NONE else None
        if v is not None:  # before encoding: the same rule a vault query applies
            check_query([v], k, None, encoder.fingerprint)
        result = translate(model, encoder.encode(image), vault=v, threshold=threshold, k=k,
                           text_encoder=ComfyClipTextEncoder(clip) if clip is not None else None,
                           encoder=encoder.fingerprint)
        translated = on_device_of(result.conditioning, conditioning)  # mixable with yours in ComfyUI's own nodes
        blended = blend(conditioning, translated, blend_mode, strength)
        summary = "\n".join(
            f"crop {b}: {p}" + (f" (best vault match {s:.3f}{' >= ' if p == 'vault' else ' < '}{threshold})" if s is not None else "")
            for b, (p, s) in enumerate(zip(result.paths, result.best_similarity)))
        return io.NodeOutput(blended, translated, json.dumps(result.report(threshold if v else None)),
                             ui={"text": [summary]})
