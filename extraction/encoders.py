"""Image-encoder protocol and the small random-initialised encoder used by the demo and tests.

An image encoder maps an IMAGE batch [B, H, W, C] (floats 0..1, ComfyUI's layout) to L2-normalised
embeddings [B, D] and carries a fingerprint (name, dim, weights hash) that vaults check.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..vault.manifest import EncoderFingerprint


@runtime_checkable
class ImageEncoder(Protocol):
    """What the vault needs from an image encoder."""

    fingerprint: EncoderFingerprint

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] floats in 0..1 -> [B, D] L2-normalised float32."""
        ...


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, shapes, bytes): changes whenever any weight changes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_image_batch(images: torch.Tensor) -> torch.Tensor:
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
        self.size = size
        self.fingerprint = EncoderFingerprint(f"random-cnn-{dim}d-seed{seed}", dim, weights_hash(self.model))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(images).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - 0.5) / 0.25
        return F.normalize(self.model(x), dim=-1)
