"""Small preview images stored per entry (WebP), and their safe decoding."""

from __future__ import annotations

import io
import struct
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


def preview_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP or PNG header, read with struct (a few bytes, no decoder); None for other
    layouts, which are then opened with Pillow (header only). Only a bounds check: previews are decoded by
    Pillow when shown, within the same limit (thumbnails.decode_thumbnail)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    return None


def thumbnail_size(data: bytes, formats: tuple[str, ...] | None = None) -> tuple[int, int]:
    """(width, height) of a stored preview from its header, no pixel decoded; ValueError when it is not a
    readable image (of `formats`, when given) or claims more pixels than a preview may have."""
    size = preview_size(data)
    if size is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=formats) as img:
                    size = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"stored preview claims a huge size ({e})") from e
        except (OSError, SyntaxError) as e:
            raise ValueError(f"stored preview is not a readable image ({e})") from e
    w, h = size
    if w * h > MAX_THUMBNAIL_PIXELS:
        raise ValueError(f"stored preview claims {w}x{h} pixels, larger than a preview may be "
                         f"({MAX_THUMBNAIL_PIXELS:,})")
    return w, h


def decode_thumbnail(data: bytes) -> Image.Image:
    """Decode a stored preview, refusing images bigger than a preview should be (vaults are untrusted).

    The size is read from the header before any pixel is decoded; every failure is a ValueError.
    """
    thumbnail_size(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_THUMBNAIL_PIXELS:  # what the decoder itself reports, too
                raise ValueError(f"stored preview is {img.width}x{img.height}, larger than a preview may be")
            return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"stored preview claims a huge size ({e})") from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"stored preview is not a readable image ({e})") from e
