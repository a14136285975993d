"""Luna A/B Probe: scores one detail-pass output against its reference in the server's own CLIP vision model.

`luna-vault ab` adds it to every graph it queues, so the CLIP model runs where the sampling runs (on the
server's GPU) and the harness needs no model of its own. Its scores come back in /history."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io

from ..ab.scores import agreement, cosine, output_region, region_of
from ..core.content import image_hash
from ..extraction.comfy_adapters import ComfyClipVisionEncoder
from ..vault.cache import open_cached
from ..vault.query import check_answerable
from .common import loaded_file, vault_path

_reference_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # (encoder, crop hash) -> embedding
_lock = threading.Lock()


class LunaAbProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LunaAbProbe",
            display_name="Luna A/B Probe",
            category="Luna/testing",
            is_output_node=True,
            description="Scores a detail-pass output against its reference region: CLIP similarity in this CLIP "
                        "vision model, and agreement of a vault's top-k prompts. Added to its graphs by `luna-vault ab`.",
            inputs=[
                io.Image.Input("image", tooltip="The detail pass's output: the full image, or the re-drawn crop."),
                io.Image.Input("reference", tooltip="The reference image the region is cut from."),
                io.ClipVision.Input("clip_vision", tooltip="The vault's CLIP vision model."),
                io.Int.Input("x", default=0, min=0, max=16384, tooltip="Region left edge in the reference."),
                io.Int.Input("y", default=0, min=0, max=16384, tooltip="Region top edge in the reference."),
                io.Int.Input("width", default=0, min=0, max=16384, tooltip="Region width (0: the whole reference)."),
                io.Int.Input("height", default=0, min=0, max=16384, tooltip="Region height (0: the whole reference)."),
                io.String.Input("vault", default="", optional=True,
                                tooltip="A vault of models/vaults for the agreement score (empty: not scored)."),
                io.Int.Input("k", default=5, min=1, max=100, optional=True, tooltip="Top-k prompts compared."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, reference: torch.Tensor, clip_vision: Any, x: int, y: int, width: int,
                height: int, vault: str = "", k: int = 5) -> io.NodeOutput:
        ref = reference[0, ..., :3].float().cpu().numpy()
        size = (ref.shape[1], ref.shape[0])
        region = (x, y, width, height) if width and height else None
        if region is not None and (x + width > size[0] or y + height > size[1]):
            raise ValueError(f"region {list(region)} is not inside the {size[0]}x{size[1]} reference")
        ref_crop = region_of(ref, region)
        out, _ = output_region(image[0, ..., :3].float().cpu().numpy(), size, region)
        encoder = ComfyClipVisionEncoder(clip_vision, file=loaded_file(cls.hidden, "clip_vision"))
        fp = encoder.fingerprint
        v = None
        if vault:
            v = open_cached(vault_path(vault))
            check_answerable(v, k, None, fp)  # the vault's encoder: before anything is encoded
        key = (fp.weights_hash + fp.name, image_hash(ref_crop).hex())
        with _lock:
            ref_emb = _reference_cache.get(key)
        if ref_emb is None:
            ref_emb = encoder.encode(torch.from_numpy(np.ascontiguousarray(ref_crop))[None])[0].numpy()
            with _lock:
                _reference_cache[key] = ref_emb
                while len(_reference_cache) > 256:
                    _reference_cache.popitem(last=False)
        out_emb = encoder.encode(torch.from_numpy(np.ascontiguousarray(out))[None])[0].numpy()
        scores: dict[str, Any] = {"clip_similarity": cosine(ref_emb, out_emb), "encoder": fp.name}
        if v is not None:
            res = v.search(np.stack([ref_emb, out_emb]), k=k, encoder=fp)
            scores.update(vault=vault, vault_agreement=agreement([m.prompt_id for m in res[0].matches],
                                                                 [m.prompt_id for m in res[1].matches], k))
        text = ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if isinstance(value, float))
        return io.NodeOutput(ui={"luna_ab": [scores], "text": [text]})
