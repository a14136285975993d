"""Text families: the one table of conditioning shapes per model family (vault baking, blending, projector targets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import VaultFormatError


@dataclass(frozen=True)
class TextFamily:
    """ComfyUI's CLIPTextEncode output for one model family, and the parts its token dim is made of."""

    name: str
    dim: int  # token width
    pooled_dim: int
    tokens: int  # tokens of a prompt that fits one chunk (77 for CLIP, 256 for Flux's T5)
    parts: tuple[tuple[str, int, int], ...]  # (encoder, start, end) slices of the token dim


FAMILIES: dict[str, TextFamily] = {
    "sd15": TextFamily("sd15", 768, 768, 77, (("clip_l", 0, 768),)),
    "sdxl": TextFamily("sdxl", 2048, 1280, 77, (("clip_l", 0, 768), ("clip_g", 768, 2048))),
    "flux": TextFamily("flux", 4096, 768, 256, (("t5", 0, 4096),)),  # pooled is CLIP-L's
}


def family_for_dims(dim: int, pooled_dim: int | None = None) -> str:
    """The family whose conditioning is [*, dim] (+ pooled [pooled_dim]); ValueError when none is."""
    for f in FAMILIES.values():
        if f.dim == dim and (pooled_dim is None or f.pooled_dim == pooled_dim):
            return f.name
    raise ValueError(f"conditioning [*, {dim}]" + (f" + pooled {pooled_dim}" if pooled_dim is not None else "")
                     + f" matches no known text family ({', '.join(f'{f.name}: [*, {f.dim}] + {f.pooled_dim}' for f in FAMILIES.values())})")


@dataclass(frozen=True)
class TextSpec:
    """What baked conditioning holds: model family and token/pooled dims."""

    family: str
    dim: int
    pooled_dim: int

    @classmethod
    def for_family(cls, family: str) -> "TextSpec":
        if family not in FAMILIES:
            raise VaultFormatError(f"unknown text family {family!r}; expected one of {sorted(FAMILIES)}")
        f = FAMILIES[family]
        return cls(family, f.dim, f.pooled_dim)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TextSpec":
        return cls(family=str(d["family"]), dim=int(d["dim"]), pooled_dim=int(d["pooled_dim"]))
