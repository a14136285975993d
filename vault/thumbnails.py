"""Small preview images stored per entry (WebP), and their safe decoding."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image

THUMBNAIL_SIZE = 96
MAX_THUMBNAIL_PIXELS = 1024 * 1024  # a stored preview larger than this is refused, not decoded


def to_pil(image: Any) -> Image.Image:
    """PIL image from a PIL image, an [H, W, C] 0..1 float array/tensor, or [H, W, C] uint8."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image array must be [H, W, C] with C in 1/3/4, got {a.shape}")
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return Image.fromarray(a[..., :3], "RGB")


def make_thumbnail(image: Any, size: int = THUMBNAIL_SIZE, quality: int = 80) -> bytes:
    """Encode a preview (longest side `size` px) as WebP bytes."""
    img = to_pil(image)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=quality, method=0)  # fastest encoder setting: ~same size at 96 px
    return buf.getvalue()


def decode_thumbnail(data: bytes) -> Image.Image:
    """Decode a stored preview, refusing images bigger than a preview should be (vaults are untrusted).

    The size is read from the header before any pixel is decoded; every failure is a ValueError.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_THUMBNAIL_PIXELS:
                raise ValueError(f"stored preview is {img.width}x{img.height}, larger than a preview may be")
            return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"stored preview claims a huge size ({e})") from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"stored preview is not a readable image ({e})") from e
