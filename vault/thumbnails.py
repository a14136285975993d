"""Small preview images stored per entry (WebP), and their safe decoding."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from ..core.images import ImageRefused, decode_rgb, header_size, image_format, open_image

THUMBNAIL_SIZE = 96
MAX_THUMBNAIL_PIXELS = 1024 * 1024  # a stored preview larger than this is refused, not decoded
PREVIEW_FORMATS = ("WEBP", "PNG", "JPEG")  # what a stored preview may be (the writer makes WebP)


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


def thumbnail_size(data: bytes, formats: tuple[str, ...] = PREVIEW_FORMATS) -> tuple[int, int]:
    """(width, height) of a stored preview from its header, no pixel decoded; ValueError (ImageRefused) when it
    is not an image of `formats` or claims more pixels than a preview may have."""
    image_format(data, formats, "stored preview")
    size = header_size(data)
    if size is not None:  # the common case without Pillow: a vault's install checks every preview
        w, h = size
        if w * h > MAX_THUMBNAIL_PIXELS:
            raise ImageRefused(f"stored preview is {w} x {h} pixels, over the {MAX_THUMBNAIL_PIXELS:,} pixels a "
                               "stored preview may have; refused from its header, nothing decoded")
        return w, h
    with open_image(data, formats=formats, limit=MAX_THUMBNAIL_PIXELS, what="stored preview") as img:
        return img.size


def decode_thumbnail(data: bytes) -> Image.Image:
    """Decode a stored preview (WebP, PNG or JPEG by its first bytes, at most MAX_THUMBNAIL_PIXELS, checked from
    the header before any pixel is decoded): vaults are untrusted. Every failure is a ValueError."""
    return decode_rgb(data, formats=PREVIEW_FORMATS, limit=MAX_THUMBNAIL_PIXELS, what="stored preview")
