"""Luna Vault Builder: add images + prompts from a graph (or a dataset folder) to a vault."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from comfy_api.latest import io

from ..core.atomic import check_name
from ..core.content import image_hash
from ..core.families import TextSpec
from ..extraction.comfy_adapters import ComfyClipTextEncoder, ComfyClipVisionEncoder
from ..extraction.encoders import text_spec
from ..extraction.pipeline import Extractor
from ..vault.ops import ADD_MODES, check_add_mode, unseen, writer_for_adding
from ..vault.store import Vault, vault_exists
from ..vault.thumbnails import make_thumbnail
from .common import (
    CATEGORY,
    check_interrupt,
    lines,
    live_node_types,
    loaded_file,
    new_vault_path,
    per_image,
    progress_bar,
    ui_text,
)


def _metadata(text: str, n: int) -> list[dict[str, Any]]:
    """'' -> {}; one JSON object -> for all images; JSON lines -> one per image."""
    text = (text or "").strip()
    if not text:
        return [{}] * n
    try:
        whole = json.loads(text)
        objs = [whole] if isinstance(whole, dict) else None
    except json.JSONDecodeError:
        objs = None
    if objs is None:
        try:
            objs = [json.loads(x) for x in lines(text)]
        except json.JSONDecodeError as e:
            raise ValueError(f"metadata must be a JSON object (for all images) or one JSON object per line: {e}") from e
    if not all(isinstance(o, dict) for o in objs):
        raise ValueError("metadata must be JSON objects, e.g. {\"checkpoint\": \"ponyXL\", \"quality\": 0.8}")
    return per_image(objs, n, "metadata lines")


def dataset_folder(folder: str) -> Path:
    """A dataset folder inside ComfyUI's input directory (relative path; no '..', no absolute paths)."""
    import folder_paths

    norm = os.path.normpath(folder.strip())
    if os.path.isabs(norm) or norm.startswith("..") or norm in ("", "."):
        raise ValueError(f"folder {folder!r}: give a folder inside ComfyUI's input directory, as a relative path "
                         f"(e.g. datasets/eyes for {os.path.join(folder_paths.get_input_directory(), 'datasets', 'eyes')})")
    path = Path(folder_paths.get_input_directory()) / norm
    if not path.is_dir():
        raise ValueError(f"dataset folder {path} " + ("is a file: give the folder that holds the images"
                                                      if path.exists() else "does not exist"))
    return path


class LunaVaultBuilder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LunaVaultBuilder",
            display_name="Luna Vault Builder",
            category=CATEGORY,
            description="Adds images and the prompts that made them to a vault in models/vaults: from this graph, "
                        "or from a dataset folder (images + .txt/.json sidecars or embedded prompts).",
            is_output_node=True,
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model to embed with (use the same one to query)."),
                io.String.Input("vault_name", default="my-vault", tooltip="Vault to write: models/vaults/<name>.vault"),
                io.Combo.Input("mode", options=list(ADD_MODES), default="append",
                               tooltip="append: add (create if missing); create: fail if it exists; overwrite: replace it."),
                io.String.Input("category", default="", tooltip="What the vault holds, e.g. eyes (default: the vault name)."),
                io.Boolean.Input("thumbnails", default=True, tooltip="Store small previews so queries can show matches."),
                io.Image.Input("images", optional=True, tooltip="Images to add (a batch); each needs a prompt."),
                io.String.Input("prompts", multiline=True, default="", optional=True,
                                tooltip="One prompt per line, one line per image; or a single line for all images."),
                io.String.Input("metadata", multiline=True, default="", optional=True,
                                tooltip="Optional JSON: one object for all images or one per line, e.g. "
                                        "{\"checkpoint\": \"ponyXL\", \"seed\": 42, \"quality\": 0.8}"),
                io.Clip.Input("clip", optional=True,
                              tooltip="Bake: also store each new prompt's conditioning from this CLIP (query without a CLIP)."),
                io.String.Input("folder", default="", optional=True,
                                tooltip="Instead of images: a dataset folder inside ComfyUI's input directory, e.g. "
                                        "datasets/eyes (images with .txt/.json sidecars or embedded prompts)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[io.String.Output("summary", display_name="summary", tooltip="What was added and the vault's size.")],
        )

    @classmethod
    def validate_inputs(cls, vault_name: str) -> bool | str:
        # mode is a combo (ComfyUI checks it); each problem is flagged on its own input
        try:
            check_name(vault_name, "vault name")
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, clip_vision: Any, vault_name: str, mode: str, category: str, thumbnails: bool,
                images: torch.Tensor | None = None, prompts: str = "", metadata: str = "", clip: Any = None,
                folder: str = "") -> io.NodeOutput:
        path = new_vault_path(vault_name)
        category = category.strip() or vault_name
        check_add_mode(path, mode)
        encoder = ComfyClipVisionEncoder(clip_vision, file=loaded_file(cls.hidden, "clip_vision"))
        text = ComfyClipTextEncoder(clip) if clip is not None else None
        spec = text_spec(text) if text is not None else None
        if folder.strip():
            summary = cls._from_folder(path, mode, encoder, text, spec, category, thumbnails, folder)
        elif images is not None and images.shape[0] > 0:
            summary = cls._from_images(path, mode, encoder, text, spec, category, thumbnails, images, prompts, metadata)
        else:
            raise ValueError("nothing to add: connect images (with prompts) or give a dataset folder")
        return io.NodeOutput(summary, ui=ui_text(summary))

    @classmethod
    def _from_images(cls, path: Path, mode: str, encoder: ComfyClipVisionEncoder, text: ComfyClipTextEncoder | None,
                     spec: TextSpec | None, category: str, thumbnails: bool, images: torch.Tensor, prompts: str,
                     metadata: str) -> str:
        n = images.shape[0]
        texts = per_image(lines(prompts) or [""], n, "prompts")
        metas = [{**m, "source": m.get("source", "comfyui")} for m in _metadata(metadata, n)]
        hashes = [image_hash(images[i]) for i in range(n)]
        known = set()
        if mode == "append" and vault_exists(path):
            existing = Vault.open(path)  # the encoder is checked before any image is encoded
            existing.encoder.check_compatible(encoder.fingerprint, where=f"vault '{existing.name}'")
            known = {bytes(h) for h in existing.content_hashes()}
        fresh = unseen(hashes, known)  # skip pictures the vault has, and repeats within this batch
        added = skipped = 0
        reasons = ""
        if fresh:
            emb = encoder.encode(images[fresh]).numpy()
            thumbs = [make_thumbnail(images[i]) for i in fresh] if thumbnails else None
            with writer_for_adding(path, mode, encoder.fingerprint, category, spec) as w:
                report = w.add(emb, [texts[i] for i in fresh], [metas[i] for i in fresh], thumbs,
                               [hashes[i] for i in fresh], text.encode if text is not None else None)
            added, skipped = report.added, len(report.skipped)
            reasons = "; ".join(sorted({s.reason for s in report.skipped}))
        size = len(Vault.open(path))
        msg = f"{path.name}: +{added} entries ({n - len(fresh)} already present"
        msg += f", {skipped} skipped: {reasons})" if skipped else ")"
        return msg + f"; {size} entries in total"

    @classmethod
    def _from_folder(cls, path: Path, mode: str, encoder: ComfyClipVisionEncoder, text: ComfyClipTextEncoder | None,
                     spec: TextSpec | None, category: str, thumbnails: bool, folder: str) -> str:
        root = dataset_folder(folder)
        if mode == "overwrite" or not vault_exists(path):
            writer_for_adding(path, mode, encoder.fingerprint, category, spec).commit()  # an empty vault, the right encoder
        extractor = Extractor(encoder, vault=path, text_encoder=text, workers=0, thumbnails=thumbnails,
                              batch_size=8, commit_every=256, node_types=live_node_types())
        report = extractor.run(root, category=category, progress=progress_bar(), check_interrupt=check_interrupt)
        size = len(Vault.open(path))
        reasons: dict[str, int] = {}
        for _, r in report.skipped:
            reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
        msg = f"{path.name}: +{report.total_added} entries from {report.images} images in {report.seconds:.1f} s"
        msg += f", {report.already_present} already present"
        if reasons:
            msg += ", skipped: " + ", ".join(f"{v} {k}" for k, v in reasons.items())
        return msg + f"; {size} entries in total"
