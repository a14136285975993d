"""Encoders over ComfyUI objects: a CLIP_VISION (image) and a CLIP (text).

These take the objects ComfyUI's loaders return and never import `comfy` themselves, so they work
inside a running ComfyUI (nodes) and with ComfyUI used as a library (CLI, see comfy_loader).
Text goes through `clip.tokenize` + `clip.encode_from_tokens_scheduled`, the CLIPTextEncode path,
so baked or text-mode conditioning equals what the user's graph produces for the same prompt, every key
included; the text family is read from the CLIP object itself (core.families).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ..core.conditioning import Encoded, as_encoded, is_token_mask
from ..core.encoder import EncoderFingerprint
from ..core.errors import DimensionError
from ..core.families import FAMILIES, TextSpec, family_name, likely_families, remember, shapes_text
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


def text_model_class(clip: Any) -> tuple[str, tuple[str, ...]]:
    """The class path of a CLIP's text model and the encoders inside it, e.g.
    ('comfy.text_encoders.hidream.HiDreamTEModel', ('clip_l', 'clip_g', 't5xxl', 'llama')). Classes ComfyUI makes
    inside a factory function (`hidream_clip(...)` returns `HiDreamTEModel_`) stand for their first named base."""
    model = getattr(clip, "cond_stage_model", None)
    if model is None:
        return "", ()
    cls = next(c for c in type(model).__mro__ if "<locals>" not in c.__qualname__)
    parts = tuple(name for name, child in model.named_children() if any(True for _ in child.parameters()))
    return f"{cls.__module__}.{cls.__qualname__}", parts


def clip_family(clip: Any, probe: Encoded | None = None) -> str:
    """A CLIP's text family, from the CLIP object: its text model's class and encoders (see core.families). A
    stand-in without a ComfyUI text model (tests, other hosts) is named by its shapes: a built-in family's name
    when they match one, else its class and shapes."""
    model_class, parts = text_model_class(clip)
    if model_class:
        return family_name(model_class, parts)
    if probe is None:
        return f"{type(clip).__module__}.{type(clip).__qualname__}"
    pooled = int(probe.pooled.shape[-1]) if probe.pooled is not None else None
    builtin = [n for n in likely_families(int(probe.cond.shape[-1]), pooled) if n in FAMILIES]
    return builtin[0] if len(builtin) == 1 else (
        f"{type(clip).__module__}.{type(clip).__qualname__} {shapes_text(int(probe.cond.shape[-1]), pooled)}")


class ComfyClipTextEncoder:
    """TextEncoder over a ComfyUI CLIP, through the same calls CLIPTextEncode makes.

    `encode_conditioning` gives everything CLIPTextEncode gives for a prompt (text mode); `encode` gives the
    tokens and pooled output a baked vault stores, and refuses a prompt whose conditioning has more than that.
    The family is read from the CLIP object (its text model's class), so any family ComfyUI can load works."""

    def __init__(self, clip: Any) -> None:
        if not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens_scheduled"):
            raise TypeError(f"expected a ComfyUI CLIP (from a checkpoint or CLIP loader), got {type(clip).__name__}")
        self.clip = clip

    def _identity(self) -> tuple[str, str]:
        with _lock:
            ident = _text_keys.get(self.clip)
        if ident is None:
            probe = self._encode("") if not text_model_class(self.clip)[0] else None
            ident = (f"comfy-clip-{uuid.uuid4().hex[:12]}", clip_family(self.clip, probe))  # one key per CLIP object
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
    def _encode(self, prompt: str) -> Encoded:
        conditioning = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        cond, extras = conditioning[0]
        extras = dict(extras)
        return as_encoded((cond, extras.pop("pooled_output", None), extras), prompt)

    def encode_conditioning(self, prompt: str) -> Encoded:
        """What CLIPTextEncode gives for `prompt` (its first entry), batch dim removed: tokens, pooled, other keys."""
        enc = self._encode(prompt)
        remember(self.family, int(enc.cond.shape[-1]), int(enc.pooled.shape[-1]) if enc.pooled is not None else None)
        return enc

    @property
    def spec(self) -> TextSpec:
        """What a baked vault of this family stores (from the empty prompt's conditioning); refuses a family whose
        conditioning carries more than tokens, pooled output and an all-ones attention mask."""
        probe = self.encode_conditioning("")
        mask = _bakeable_extras(probe, self.family, "")
        return TextSpec(self.family, int(probe.cond.shape[-1]), int(probe.pooled.shape[-1]) if probe.pooled is not None else 0,
                        attention_mask=mask)

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens [T, D], pooled [P] or None) for baking; DimensionError when the prompt's conditioning has other
        keys a baked vault cannot store."""
        enc = self.encode_conditioning(prompt)
        _bakeable_extras(enc, self.family, prompt)
        return enc.cond, enc.pooled


def _bakeable_extras(enc: Encoded, family: str, prompt: str) -> bool:
    """True when the conditioning carries an all-ones attention mask (rebuilt on read), False when nothing beyond
    tokens and pooled; DimensionError naming every key (and its size per prompt) a baked vault cannot hold."""
    mask, extra = False, []
    for key, value in sorted(enc.extras.items()):
        if not isinstance(value, torch.Tensor):
            continue
        if key == "attention_mask" and is_token_mask(value, enc.cond.shape[0]) and bool(value.all()):
            mask = True
            continue
        kb = value.numel() * 2 / 1024
        extra.append(f"{key} {list(value.shape)} ({f'{kb / 1024:.1f} MB' if kb >= 1024 else f'{kb:.0f} KB'} per prompt in fp16)")
    if extra:
        raise DimensionError(
            f"{family} conditioning for {prompt!r} carries {', '.join(extra)} beside its tokens, which a baked vault does "
            "not store; build the vault in text mode (no CLIP on the Builder, no --bake) and connect the CLIP to the query")
    return mask
