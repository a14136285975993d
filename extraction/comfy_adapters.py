"""Encoders over ComfyUI objects: a CLIP_VISION (image) and a CLIP (text).

These take the objects ComfyUI's loaders return and never import `comfy` themselves, so they work
inside a running ComfyUI (nodes) and with ComfyUI used as a library (CLI, see comfy_loader).
Text goes through `clip.tokenize` + `clip.encode_from_tokens_scheduled`, the CLIPTextEncode path,
so baked or text-mode conditioning equals what the user's graph produces for the same prompt.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ..core.encoder import EncoderFingerprint
from ..core.families import family_for_dims
from .encoders import check_image_batch, make_fingerprint, sampled_weights_hash

_fingerprints: "weakref.WeakKeyDictionary[Any, EncoderFingerprint]" = weakref.WeakKeyDictionary()
_text_keys: "weakref.WeakKeyDictionary[Any, tuple[str, str]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _vision_name(clip_vision: Any) -> str:
    """A readable architecture name, e.g. clip-vision-1280x32-p14-224 (ViT-H/14)."""
    try:
        vm = clip_vision.model.vision_model
        width = vm.embeddings.patch_embedding.weight.shape[0]
        patch = vm.embeddings.patch_embedding.weight.shape[-1]
        layers = len(vm.encoder.layers)
        return f"clip-vision-{width}x{layers}-p{patch}-{clip_vision.image_size}"
    except AttributeError:
        return f"comfy-{type(clip_vision.model).__name__}"


class ComfyClipVisionEncoder:
    """ImageEncoder over a ComfyUI CLIP_VISION: `encode_image(...).image_embeds`, SigLIP tokens mean-pooled."""

    def __init__(self, clip_vision: Any, name: str | None = None, batch_size: int = 32, file: str | None = None) -> None:
        """`file`: the model file the CLIP vision was loaded from, when known; it leads the encoder's name
        (e.g. 'CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (clip-vision-1280x32-p14-224)'), so vaults and
        mismatch errors name the file the user picked."""
        if not hasattr(clip_vision, "encode_image"):
            raise TypeError(f"expected a ComfyUI CLIP_VISION (from CLIPVisionLoader), got {type(clip_vision).__name__}")
        self.clip_vision = clip_vision
        self.name = name or (f"{file} ({_vision_name(clip_vision)})" if file else _vision_name(clip_vision))
        self.batch_size = batch_size
        self.input_size = int(getattr(clip_vision, "image_size", 224))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = check_image_batch(images)
        return torch.cat([self._normalised(self.clip_vision.encode_image(images[a : a + self.batch_size]))
                          for a in range(0, images.shape[0], self.batch_size)])

    @staticmethod
    def _normalised(output: Any) -> torch.Tensor:
        emb = output["image_embeds"]
        if emb.dim() == 3:  # SigLIP: no projection, one embedding per patch token
            emb = emb.mean(dim=1)
        return F.normalize(emb.float().cpu(), dim=-1)

    @torch.no_grad()
    def encode_with_output(self, images: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Normalised embeddings and ComfyUI's own CLIP_VISION_OUTPUT, from one forward pass."""
        output = self.clip_vision.encode_image(check_image_batch(images))
        return self._normalised(output), output

    @property
    def fingerprint(self) -> EncoderFingerprint:
        """Computed once per loaded model (one probe-image forward pass), then cached."""
        with _lock:
            fp = _fingerprints.get(self.clip_vision)
        if fp is None:
            weights = sampled_weights_hash(self.clip_vision.model.state_dict().items())
            fp = make_fingerprint(self.name, self.encode, weights)
            with _lock:
                _fingerprints[self.clip_vision] = fp
        return fp if fp.name == self.name else replace(fp, name=self.name)


class ComfyClipTextEncoder:
    """TextEncoder over a ComfyUI CLIP, through the same calls CLIPTextEncode makes."""

    def __init__(self, clip: Any) -> None:
        if not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens_scheduled"):
            raise TypeError(f"expected a ComfyUI CLIP (from a checkpoint or CLIP loader), got {type(clip).__name__}")
        self.clip = clip

    def _identity(self) -> tuple[str, str]:
        with _lock:
            ident = _text_keys.get(self.clip)
        if ident is None:
            cond, pooled = self._encode("")
            family = family_for_dims(int(cond.shape[-1]), int(pooled.shape[-1]) if pooled is not None else None)
            ident = (f"comfy-clip-{uuid.uuid4().hex[:12]}", family)  # one key per CLIP object (LoRA clones differ)
            with _lock:
                _text_keys[self.clip] = ident
        return ident

    @property
    def key(self) -> str:
        return self._identity()[0]

    @property
    def family(self) -> str:
        return self._identity()[1]

    @torch.no_grad()
    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        conditioning = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        cond, extras = conditioning[0]
        pooled = extras.get("pooled_output")
        return cond[0].float().cpu(), (pooled[0].float().cpu() if pooled is not None else None)

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._encode(prompt)
