"""open_clip vision models loaded from a local weights file, for batch jobs outside ComfyUI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.encoder import EncoderFingerprint
from .encoders import CLIP_MEAN, CLIP_STD, clip_preprocess, make_fingerprint, weights_hash


class OpenClipImageEncoder:
    """ImageEncoder over `open_clip.create_model_and_transforms(name, pretrained=PATH)`.

    Pixels are prepared like ComfyUI's CLIP vision path (shortest side, centre crop, bicubic, the
    model's mean/std), so an open_clip model and ComfyUI's loader of the same weights agree; the
    fingerprint's probe embedding checks that. On CUDA the forward runs under fp16 autocast.
    """

    def __init__(self, model_name: str, weights: str | os.PathLike[str], device: str | None = None,
                 config: str | os.PathLike[str] | None = None) -> None:
        import open_clip  # heavy import (and torchvision) only when this encoder is used

        if config is not None:
            open_clip.add_model_config(str(config))
        if not Path(weights).is_file():
            raise FileNotFoundError(f"open_clip weights file {weights} does not exist (no downloads are attempted)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(weights), device=self.device,
                                                            weights_only=True)
        self.model = model.eval()
        visual: Any = self.model.visual
        size = visual.image_size
        self.size = self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", CLIP_MEAN))
        self.std = tuple(cfg.get("std", CLIP_STD))
        self.name = f"open_clip:{model_name}"
        self._fingerprint: EncoderFingerprint | None = None

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_on_device(images).cpu()

    @torch.no_grad()
    def encode_on_device(self, images: torch.Tensor) -> torch.Tensor:
        """Like encode, but the embeddings stay on the model's device and nothing waits for the GPU:
        the extraction pipeline queues the next batch before it reads this one back."""
        x = clip_preprocess(images, self.size, self.mean, self.std).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            emb = self.model.encode_image(x)
        return F.normalize(emb.float(), dim=-1)

    @property
    def fingerprint(self) -> EncoderFingerprint:
        if self._fingerprint is None:
            self._fingerprint = make_fingerprint(self.name, self.encode, weights_hash(self.model.visual))
        return self._fingerprint
