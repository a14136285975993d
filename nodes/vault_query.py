"""Luna Vault Query (crop -> matched prompts -> conditioning) and Luna Vault Info."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..core.conditioning import BLEND_MODES
from ..extraction.comfy_adapters import ComfyClipTextEncoder, ComfyClipVisionEncoder
from ..vault.cache import open_cached
from ..vault.filters import parse_filter
from ..vault.preview import contact_sheet, entry_thumbnails, matched_thumbnails
from ..vault.query import check_query
from ..vault.retrieval import retrieve
from .common import AUTO, CATEGORY, as_image_batch, loaded_file, vault_names, vault_path, vault_stamp


def _open_vaults(vault: str) -> list[Any]:
    """The vaults a query searches: the named one, or every vault for auto-detect."""
    names = vault_names() if vault == AUTO else [vault]
    if not names:
        raise ValueError("no vaults in models/vaults yet: build one with Luna Vault Builder or `luna-vault extract`")
    return [open_cached(vault_path(n)) for n in names]


class LunaVaultQuery(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LunaVaultQuery",
            display_name="Luna Vault Query",
            category=CATEGORY,
            description="Finds the prompts whose images look most like the crop and turns them into conditioning "
                        "blended into yours. Shows the matched images with their similarity.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="The crop to look up, or a batch of crops (one conditioning row per crop)."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model the vault was built with (checked)."),
                io.Combo.Input("vault", options=[AUTO, *vault_names()], default=AUTO,
                               tooltip="Which vault of models/vaults to search; auto-detect picks, per crop, the vault "
                                       "whose matches are closest."),
                io.Int.Input("k", default=5, min=1, max=100, tooltip="How many nearest images to use per crop."),
                io.Float.Input("strength", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight of the retrieved conditioning in the blend (average/combine)."),
                io.Combo.Input("blend_mode", options=list(BLEND_MODES), default="average",
                               tooltip="average: lerp like ConditioningAverage; concat: append tokens; combine: add as a "
                                       "second conditioning; replace: use the retrieved one only."),
                io.Float.Input("temperature", default=0.05, min=0.0, max=10.0, step=0.005,
                               tooltip="Softmax temperature over similarities: small = trust the best match; 0 = plain mean."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Your positive conditioning to blend into (optional)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Text mode: encode the matched prompts with this CLIP (your checkpoint's). "
                                      "Without it the vault's baked conditioning is used."),
                io.String.Input("filter", default="", optional=True,
                                tooltip="Metadata filter, e.g. checkpoint=ponyXL, quality>=0.7, lora~detail"),
                io.Boolean.Input("use_tuned", default=False, optional=True,
                                 tooltip="Use the vault's tuned k, strength, temperature and blend mode (stored by "
                                         "`luna-vault ab --write-defaults`) instead of this node's; needs a named vault. "
                                         "The report says which settings ran."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[
                io.Conditioning.Output("blended", display_name="blended", tooltip="Your conditioning with the retrieved one blended in."),
                io.Conditioning.Output("retrieved", display_name="retrieved", tooltip="The retrieved conditioning alone."),
                io.String.Output("prompts", display_name="prompts", tooltip="The best match's prompt, one line per crop."),
                io.Image.Output("matches", display_name="matches", tooltip="The matched images' previews, crop by crop, best first."),
                io.String.Output("report", display_name="report", tooltip="JSON: per crop the vault, matches, similarities, weights, metadata."),
            ],
        )

    @classmethod
    def validate_inputs(cls, vault: str) -> bool | str:
        # ComfyUI flags a message on every input this function takes: only `vault` here (its combo is not
        # checked for V3 nodes). k's range is checked from the schema; the filter before any crop is encoded.
        if vault == AUTO:
            return True
        return True if vault in vault_names() else (
            f"vault '{vault}' not found in models/vaults (have: {', '.join(vault_names()) or 'none'}); refresh the page")

    @classmethod
    def fingerprint_inputs(cls, vault: str, **kwargs: Any) -> str:
        names = vault_names() if vault == AUTO else [vault]
        return "|".join(f"{n}:{vault_stamp(n)}" for n in names)  # re-run when a vault changes

    @classmethod
    def execute(cls, image: torch.Tensor, clip_vision: Any, vault: str, k: int, strength: float, blend_mode: str,
                temperature: float, conditioning: Any = None, clip: Any = None, filter: str = "",
                use_tuned: bool = False) -> io.NodeOutput:
        if image is None or image.shape[0] == 0:
            raise ValueError("the image batch is empty: connect a crop (or a batch of crops)")
        parse_filter(filter or "")  # QueryError (a ValueError) before any crop is encoded
        vaults = _open_vaults(vault)
        source = "node"
        if use_tuned:
            tuned = _tuned(vault, vaults)
            k, strength, temperature, blend_mode = tuned.k, tuned.strength, tuned.temperature, tuned.blend_mode
            source = (f"vault '{vault}' tuned {tuned.tuned_at[:10]} on {tuned.checkpoint or '?'} "
                      f"({tuned.metric} {tuned.improvement:+.3f} over {tuned.samples} pairs, run {tuned.run})")
        settings = {"from": source, "k": k, "strength": strength, "temperature": temperature, "blend_mode": blend_mode}
        encoder = ComfyClipVisionEncoder(clip_vision, file=loaded_file(cls.hidden, "clip_vision"))
        check_query(vaults, k, filter or None, encoder.fingerprint)  # before encoding: the same rule search applies
        result = retrieve(
            vaults, encoder.encode(image), k=k, filter=filter or None, encoder=encoder.fingerprint,
            text_encoder=ComfyClipTextEncoder(clip) if clip is not None else None, user=conditioning,
            mode=blend_mode, strength=strength, temperature=temperature if temperature > 0 else None,
        )
        by_name = {v.name: v for v in vaults}
        sheets = [contact_sheet(image[b], r, by_name) for b, r in enumerate(result.results)]
        report = json.dumps({**result.report(), "settings": settings}, ensure_ascii=False)
        summary = "\n".join(
            f"crop {b}: {r.vault}  " + ", ".join(f"{m.similarity:.3f} #{m.id}" for m in r.matches)
            for b, r in enumerate(result.results)
        )
        if result.notes:
            summary += "\n" + "\n".join(f"note: {n}" for n in result.notes)
        if use_tuned:
            summary = (f"tuned settings: k {k}, strength {strength:g}, temperature {temperature:g}, {blend_mode} "
                       f"({source})\n{summary}")
        preview = ui.PreviewImage(as_image_batch(sheets), cls=cls)
        return io.NodeOutput(
            result.blended, result.retrieved, "\n".join(result.best_prompts),
            torch.from_numpy(matched_thumbnails(result.results, by_name)), report,
            ui={**preview.as_dict(), "text": [summary]},
        )


def _tuned(vault: str, vaults: list[Any]) -> Any:
    """The named vault's tuned settings, or a message saying how to get them."""
    if vault == AUTO:
        raise ValueError("use_tuned needs a named vault: tuned settings belong to one vault (pick it in 'vault', or "
                         "switch use_tuned off)")
    tuned = vaults[0].manifest.tuned
    if tuned is None:
        raise ValueError(f"vault '{vault}' has no tuned settings: run `luna-vault ab CONFIG.yaml --write-defaults` with "
                         "it, or switch use_tuned off to use this node's values")
    return tuned


class LunaVaultInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LunaVaultInfo",
            display_name="Luna Vault Info",
            category=CATEGORY,
            description="What a vault holds: encoder, mode, counts, size, and a few of its images.",
            is_output_node=True,
            inputs=[
                io.Combo.Input("vault", options=vault_names() or ["(no vaults yet)"],
                               tooltip="A vault in models/vaults."),
                io.Int.Input("previews", default=8, min=0, max=64, tooltip="How many stored images to show."),
            ],
            outputs=[io.String.Output("info", display_name="info", tooltip="The vault's description as JSON.")],
        )

    @classmethod
    def validate_inputs(cls, vault: str) -> bool | str:
        return True if vault in vault_names() else f"vault '{vault}' not found in models/vaults"

    @classmethod
    def fingerprint_inputs(cls, vault: str, **kwargs: Any) -> str:
        return vault_stamp(vault)

    @classmethod
    def execute(cls, vault: str, previews: int) -> io.NodeOutput:
        v = open_cached(vault_path(vault))
        info = v.info()
        text = (f"{v.name}: {len(v)} entries, {v.n_prompts} prompts, {info['mode']} mode, encoder {v.encoder.name} "
                f"({v.dim}-d), {info['bytes']['total'] / 1e6:.1f} MB"
                + (f"\ntuned: {v.manifest.tuned.describe()}" if v.manifest.tuned else ""))
        out: dict[str, Any] = {"text": [text]}
        if previews and len(v) and v.has_thumbnails:
            ids = np.flatnonzero(v.live_mask())[:previews]
            out.update(ui.PreviewImage(torch.from_numpy(entry_thumbnails(v, ids)), cls=cls).as_dict())
        return io.NodeOutput(json.dumps(info), ui=out)
