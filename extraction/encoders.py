"""Encoder protocols, fingerprints, and the small random-initialised encoder used by the demo and tests.

An image encoder maps an IMAGE batch [B, H, W, C] (floats 0..1, ComfyUI's layout) to L2-normalised
embeddings [B, D] and carries a fingerprint (name, dim, weights hash, probe embedding) that vaults
check. A text encoder maps a prompt to conditioning (cond [T, D], pooled [P]) of one text family.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.encoder import EncoderFingerprint
from ..core.families import TextSpec

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class ImageEncoder(Protocol):
    """What the vault needs from an image encoder."""

    fingerprint: EncoderFingerprint
    input_size: int  # pixels the model sees; batch pipelines resize to this in their workers

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] floats in 0..1 -> [B, D] L2-normalised float32 (CPU)."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """What conditioning assembly and baking need from a text encoder."""

    family: str  # the text family (core.families): sd15 / sdxl / flux, or a name read from the CLIP
    key: str  # identifies the encoder in caches

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """prompt -> (cond [T, D], pooled [P] or None), as CLIPTextEncode would give for it."""
        ...


def text_spec(encoder: TextEncoder) -> TextSpec:
    """What a vault baked with `encoder` stores: its own `spec` (ComfyUI CLIPs read it from the CLIP), else the
    built-in family its `family` names."""
    spec = getattr(encoder, "spec", None)
    return spec if isinstance(spec, TextSpec) else TextSpec.for_family(encoder.family)


def sampled_weights_hash(tensors: Iterable[tuple[str, torch.Tensor]], samples: int = 256) -> str:
    """SHA-256 over each tensor's name, shape, dtype and `samples` evenly spaced values.

    Hashing a 1 GB model byte by byte takes seconds; the sample changes whenever weights are
    retrained or re-initialised (every value moves), and costs milliseconds.
    """
    h = hashlib.sha256()
    for name, t in sorted(tensors, key=lambda x: x[0]):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        picked = flat[::step][:samples].to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(picked.numpy().tobytes())
    return h.hexdigest()


def weights_hash(module: nn.Module) -> str:
    """Sampled hash of a module's state dict (see sampled_weights_hash)."""
    return sampled_weights_hash(module.state_dict().items())


def probe_image(size: int = 224) -> torch.Tensor:
    """A fixed, smooth test image [1, size, size, 3]: its embedding identifies an encoder's function.

    Smooth colour gradients and blobs survive any resize/crop the loaders apply nearly unchanged,
    so two loaders of the same model give (almost) the same probe embedding.
    """
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(3.0 * x + 1.0)
    g = 0.5 + 0.4 * torch.cos(2.0 * y + 0.5 * x)
    b = torch.exp(-(((x - 0.6) ** 2 + (y - 0.4) ** 2) / 0.05))
    return torch.stack([r, g, b], dim=-1)[None].clamp(0, 1)


def make_fingerprint(name: str, encode: Callable[[torch.Tensor], torch.Tensor], weights: str) -> EncoderFingerprint:
    """Fingerprint of an encoder: its name, dim, weights hash and probe embedding."""
    probe = encode(probe_image())[0].float()
    return EncoderFingerprint(name=name, dim=int(probe.shape[-1]), weights_hash=weights,
                              probe=tuple(round(float(v), 5) for v in probe))


def check_image_batch(images: Any) -> torch.Tensor:
    """Validate an IMAGE batch and return it as float32 [B, H, W, 3]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected an IMAGE batch [B, H, W, C] with C in 1/3/4, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("the IMAGE batch is empty (batch size 0)")
    images = images.float()
    if images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)
    return images[..., :3]


def resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, size, size, 3] in 0..1: shortest side to `size` (bicubic, antialiased),
    centre crop, 8-bit levels. Exactly what ComfyUI's comfy.clip_vision.clip_preprocess does before
    normalising, so pixels prepared here and pixels ComfyUI prepares itself are identical."""
    x = check_image_batch(images).permute(0, 3, 1, 2)
    if not (x.shape[2] == size and x.shape[3] == size):
        scale = size / min(x.shape[2], x.shape[3])
        x = F.interpolate(x, size=(round(scale * x.shape[2]), round(scale * x.shape[3])), mode="bicubic", antialias=True)
        h, w = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, h : h + size, w : w + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    return x.permute(0, 2, 3, 1)


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Iterable[float] = CLIP_MEAN,
                    std: Iterable[float] = CLIP_STD) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> normalised pixels [B, 3, size, size] (resize_crop, then mean/std)."""
    x = resize_crop(images, size).permute(0, 3, 1, 2)
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class RandomConvNet(nn.Module):
    """A few random conv layers + global pooling: keeps colour/texture statistics, knows no semantics."""

    def __init__(self, dim: int, width: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(width * 4 * 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.convs(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


class RandomImageEncoder:
    """Deterministic random-initialised image encoder (seeded). Real structure, no semantic quality."""

    def __init__(self, dim: int = 256, seed: int = 0, size: int = 64) -> None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.model = RandomConvNet(dim).eval()
        torch.random.set_rng_state(gen_state)
        self.size = self.input_size = size
        self.fingerprint = make_fingerprint(f"random-cnn-{dim}d-seed{seed}", self.encode, weights_hash(self.model))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(images).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - 0.5) / 0.25
        return F.normalize(self.model(x), dim=-1)
