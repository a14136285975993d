"""Text families: which text encoder made a conditioning, named from the encoder itself, and its shapes.

A family is the text encoder a CONDITIONING comes from. It is read from ComfyUI's CLIP object (the
class of its text model and the encoders inside it, extraction/comfy_adapters.py), not looked up in
a table, so a family ComfyUI adds tomorrow works the day it ships: `qwen_image.QwenImageTEModel[qwen25_7b]`,
`hidream.HiDreamTEModel[clip_l+clip_g+t5xxl+llama]`, `pixart_t5.PixArtT5XXL[t5xxl]` (Chroma and PixArt
share it). Two CLIPs of one family give interchangeable conditioning; the shapes they return
(token width, pooled width or none) describe it in messages.

The built-in table is a fallback: the three families vaults were baked for before names were read
from the CLIP keep their short names (sd15, sdxl, flux), and the projector's targets use their parts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import VaultFormatError


@dataclass(frozen=True)
class TextFamily:
    """ComfyUI's CLIPTextEncode output for one of the built-in families, and the parts its token dim is made of."""

    name: str
    dim: int  # token width
    pooled_dim: int
    tokens: int  # tokens of a prompt that fits one chunk (77 for CLIP, 256 for Flux's T5)
    parts: tuple[tuple[str, int, int], ...]  # (encoder, start, end) slices of the token dim
    model: str  # the text model's class (family_name's form), whose family keeps this short name


FAMILIES: dict[str, TextFamily] = {
    "sd15": TextFamily("sd15", 768, 768, 77, (("clip_l", 0, 768),), "sd1_clip.SD1ClipModel"),
    "sdxl": TextFamily("sdxl", 2048, 1280, 77, (("clip_l", 0, 768), ("clip_g", 768, 2048)), "sdxl_clip.SDXLClipModel"),
    "flux": TextFamily("flux", 4096, 768, 256, (("t5", 0, 4096),), "flux.FluxClipModel"),  # pooled is CLIP-L's
}
_SHORT = {f.model: f.name for f in FAMILIES.values()}
_PREFIXES = ("comfy.text_encoders.", "comfy.")


def family_name(model_class: str, parts: Sequence[str] = ()) -> str:
    """A family's name from its text model's class path and the encoders inside it, e.g.
    ('comfy.text_encoders.sd3_clip.SD3ClipModel', ['clip_l', 'clip_g', 't5xxl']) ->
    'sd3_clip.SD3ClipModel[clip_l+clip_g+t5xxl]' (SD3 with T5 alone is another family: its tokens differ).
    The three built-in families keep their short names (sd15, sdxl, flux)."""
    for prefix in _PREFIXES:
        if model_class.startswith(prefix):
            model_class = model_class[len(prefix):]
            break
    if model_class in _SHORT:
        return _SHORT[model_class]
    return f"{model_class}[{'+'.join(parts)}]" if parts else model_class


def shapes_text(dim: int, pooled_dim: int | None, extras: Mapping[str, Sequence[int | None]] | None = None) -> str:
    """'[*, 4096] + pooled 2048 + conditioning_llama3 [32, *, 4096]': what a conditioning holds, for messages."""
    text = f"[*, {dim}]" + (f" + pooled {pooled_dim}" if pooled_dim else " (no pooled)")
    for key, shape in sorted((extras or {}).items()):
        text += f" + {key} [{', '.join('*' if s is None else str(s) for s in shape)}]"
    return text


_seen: dict[tuple[int, int], set[str]] = {}
_seen_lock = threading.Lock()


def remember(family: str, dim: int, pooled_dim: int | None) -> None:
    """Note that `family` gives [*, dim] + pooled (None: none); messages about conditioning of those shapes
    then name it."""
    with _seen_lock:
        _seen.setdefault((int(dim), int(pooled_dim or 0)), set()).add(family)


def likely_families(dim: int, pooled_dim: int | None) -> list[str]:
    """Families known to give [*, dim] + pooled (the built-in ones and those seen in this process)."""
    key = (int(dim), int(pooled_dim or 0))
    with _seen_lock:
        names = set(_seen.get(key, ()))
    names.update(f.name for f in FAMILIES.values() if (f.dim, f.pooled_dim) == key)
    return sorted(names)


def describe(dim: int, pooled_dim: int | None) -> str:
    """'[*, 2048] + pooled 1280 (sdxl)': shapes and the families known to give them."""
    names = likely_families(dim, pooled_dim)
    return shapes_text(dim, pooled_dim) + (f" ({' or '.join(names)})" if names else "")


@dataclass(frozen=True)
class TextSpec:
    """What a baked vault stores per prompt: the family's name and its token / pooled widths.

    `pooled_dim` 0: the family has no pooled output (Qwen-Image, Lumina 2, Chroma, Wan). `attention_mask`:
    the family's conditioning carries an all-ones attention_mask over its tokens (Lumina 2's Gemma),
    rebuilt on read rather than stored."""

    family: str
    dim: int
    pooled_dim: int
    attention_mask: bool = False

    @classmethod
    def for_family(cls, family: str) -> "TextSpec":
        """The spec of a built-in family by its short name (sd15, sdxl, flux)."""
        if family not in FAMILIES:
            raise VaultFormatError(f"unknown built-in text family {family!r}; expected one of {sorted(FAMILIES)} (other "
                                   "families come from their CLIP: connect it)")
        f = FAMILIES[family]
        return cls(family, f.dim, f.pooled_dim)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TextSpec":
        mask = d.get("attention_mask", False)
        if not isinstance(mask, bool):
            raise TypeError(f"text attention_mask is {type(mask).__name__}, not true/false")
        return cls(family=str(d["family"]), dim=int(d["dim"]), pooled_dim=int(d["pooled_dim"]), attention_mask=mask)

    def describe(self) -> str:
        """'qwen_image.QwenImageTEModel[qwen25_7b] ([*, 3584] (no pooled))'."""
        return f"{self.family} ({shapes_text(self.dim, self.pooled_dim)})"
