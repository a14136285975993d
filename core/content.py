"""Content hash: how a vault knows an image it already holds, whichever way the image arrives.

One definition for every path: the image's 8-bit RGB pixels as ComfyUI's SaveImage writes them
(clip(255 * x) truncated to uint8) with their shape. A PNG that `luna-vault extract` decodes and the
same picture reaching the Builder node as an IMAGE tensor (LoadImage's x = u / 255 maps back to u
exactly) get the same hash; re-encoding a file or changing its metadata does not change it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

HASH_BYTES = 16


def pixels_hash(rgb: np.ndarray) -> bytes:
    """First 16 bytes of SHA-256 over the shape and the bytes of an [H, W, 3] uint8 RGB array."""
    arr = np.ascontiguousarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"pixels_hash expects uint8 RGB [H, W, 3], got {arr.dtype} {list(arr.shape)}")
    h, w, _ = arr.shape
    digest = hashlib.sha256(f"{h}x{w}x3:".encode())
    digest.update(memoryview(arr).cast("B"))  # the same bytes as arr.tobytes(), without copying them
    return digest.digest()[:HASH_BYTES]


def pil_pixels_hash(img: Any, band_bytes: int = 8 << 20) -> bytes:
    """pixels_hash of an RGB Pillow image, fed to the hash a band of rows at a time (the same bytes as
    np.asarray(img), which for a large image costs two full copies)."""
    if img.mode != "RGB":
        raise ValueError(f"pil_pixels_hash expects an RGB image, got mode {img.mode}")
    w, h = img.size
    digest = hashlib.sha256(f"{h}x{w}x3:".encode())
    rows = max(1, band_bytes // max(1, 3 * w))
    for y in range(0, h, rows):
        digest.update(img.crop((0, y, w, min(h, y + rows))).tobytes())
    return digest.digest()[:HASH_BYTES]


def image_hash(image: Any) -> bytes:
    """Content hash of one ComfyUI IMAGE [H, W, C] of floats in [0, 1] (a torch tensor or an array).

    RGBA is cut to RGB (as the saved file would be read back) and grey expanded to RGB.
    """
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image_hash expects one IMAGE [H, W, C] with C in 1, 3, 4; got {list(arr.shape)}")
    arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]
    return pixels_hash(np.clip(255.0 * arr, 0, 255).astype(np.uint8))
