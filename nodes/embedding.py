"""Luna Embedding Extractor: image -> normalised CLIP-vision embedding, optionally saved as training pairs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from safetensors.numpy import save_file

from ..core.atomic import atomic_write, atomic_write_bytes, check_name
from ..extraction.comfy_adapters import ComfyClipVisionEncoder
from .common import CATEGORY, lines, loaded_file, per_image, ui_text

LunaEmbedding = io.Custom("LUNA_EMBEDDING")


def save_embeddings(folder: Path, embeddings: np.ndarray, prompts: list[str], fingerprint: Any) -> str:
    """Write one run's embeddings file + entries file (part-<time>.safetensors + .jsonl): the input of
    `luna-vault build/append --embeddings ... --entries ...`. ("Pairs" are the projector's training pairs.)"""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time_ns() % 1_000_000):06d}"
    meta = {"encoder_name": fingerprint.name, "encoder_hash": fingerprint.weights_hash}
    atomic_write(folder / f"{stem}.safetensors",
                 lambda tmp: save_file({"embeddings": embeddings.astype(np.float32)}, str(tmp), metadata=meta))
    atomic_write_bytes(folder / f"{stem}.jsonl", "".join(json.dumps({"prompt": p}) + "\n" for p in prompts).encode())
    return stem


class LunaEmbeddingExtractor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LunaEmbeddingExtractor",
            display_name="Luna Embedding Extractor",
            category=CATEGORY,
            is_output_node=True,  # it may write embeddings files to disk, so it runs even with nothing connected after it
            description="Embeds images with a CLIP vision model (L2-normalised, as vaults store them); optionally "
                        "saves the embeddings with their prompts as files for `luna-vault build`.",
            inputs=[
                io.Image.Input("image", tooltip="Image or batch of images to embed."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model to embed with."),
                io.String.Input("prompts", multiline=True, default="", optional=True,
                                tooltip="With a dataset name: one prompt per line per image, or one for all."),
                io.String.Input("dataset", default="", optional=True,
                                tooltip="If set, save the embeddings and prompts to output/luna_embeddings/<dataset>/ (a safetensors + jsonl file per run, for luna-vault build)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[
                LunaEmbedding.Output("embedding", display_name="embedding", tooltip="{'embeddings': [B, D] tensor, 'fingerprint': the encoder}"),
                io.ClipVisionOutput.Output("clip_vision_output", display_name="clip_vision_output", tooltip="ComfyUI's CLIP vision output of the same images."),
            ],
        )

    @classmethod
    def validate_inputs(cls, dataset: str = "") -> bool | str:
        if dataset:
            try:
                check_name(dataset, "dataset name")
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, image: torch.Tensor, clip_vision: Any, prompts: str = "", dataset: str = "") -> io.NodeOutput:
        encoder = ComfyClipVisionEncoder(clip_vision, file=loaded_file(cls.hidden, "clip_vision"))
        embeddings, output = encoder.encode_with_output(image)
        result = {"embeddings": embeddings, "fingerprint": encoder.fingerprint}
        ui = None
        if dataset:
            texts = per_image(lines(prompts), image.shape[0], "prompts") if lines(prompts) else []
            if not texts:
                raise ValueError("saving embeddings needs their prompts: one per line per image, or one for all")
            folder = Path(folder_paths.get_output_directory()) / "luna_embeddings" / check_name(dataset, "dataset name")
            stem = save_embeddings(folder, embeddings.numpy(), texts, encoder.fingerprint)
            ui = ui_text(f"saved {len(texts)} embeddings with prompts to {folder / stem}.safetensors/.jsonl "
                         f"(luna-vault build VAULT --embeddings ... --entries ...)")
        return io.NodeOutput(result, output, ui=ui)
