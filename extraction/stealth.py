"""A1111 "stealth" parameters: generation text hidden in the lowest bit of the pixels.

The stealth-pnginfo extension (and Forge, and NovelAI) writes the bits column by column (x outer,
y inner), most significant bit first:
- alpha mode: one bit per pixel from the alpha channel; signature `stealth_pnginfo` (plain UTF-8)
  or `stealth_pngcomp` (gzip), then the payload length in bits (32 bits), then the payload;
- RGB mode: three bits per pixel (R, G, B); signature `stealth_rgbinfo` / `stealth_rgbcomp`, then
  the length in 32 bits (read as 33 because of the 3-bit step: the 33rd bit is the payload's first).
Only lossless images can carry it (PNG, lossless WebP); the caller decodes the pixels.
"""

from __future__ import annotations

import gzip

import numpy as np

from ..core.inflate import inflate

SIGNATURES = {b"stealth_pnginfo": ("alpha", False), b"stealth_pngcomp": ("alpha", True),
              b"stealth_rgbinfo": ("rgb", False), b"stealth_rgbcomp": ("rgb", True)}
_SIG_BITS = 15 * 8
MAX_PAYLOAD = 8 << 20  # bytes, after decompression too


class StealthError(ValueError):
    """A stealth signature was found but what follows it is not readable text; the message says why."""


def _bits(pixels: np.ndarray, channels: slice) -> np.ndarray:
    """The low bits of the chosen channels, in the writer's order: column by column, channels interleaved."""
    return (pixels[:, :, channels].transpose(1, 0, 2) & 1).reshape(-1)


def _bytes(bits: np.ndarray) -> bytes:
    return np.packbits(bits[: len(bits) // 8 * 8]).tobytes()


def read_stealth(pixels: np.ndarray) -> str | None:
    """The hidden text of an [H, W, C] uint8 image (C = 3 or 4), None when no signature is there.

    Raises StealthError when a signature is present but the payload is cut short, oversized or not text.
    """
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        return None
    modes = [("rgb", slice(0, 3))] + ([("alpha", slice(3, 4))] if pixels.shape[2] == 4 else [])
    for mode, channels in modes:
        # the signature needs only the first column(s): decode the bit stream lazily by columns
        h = pixels.shape[0]
        per_col = h * (3 if mode == "rgb" else 1)
        cols = min(pixels.shape[1], -(-(_SIG_BITS + 33) // per_col))
        head = _bits(pixels[:, :cols], channels)
        found = SIGNATURES.get(_bytes(head[:_SIG_BITS]))
        if found is None or found[0] != mode:
            continue
        _, compressed = found
        length_bits = 32 if mode == "alpha" else 33
        if len(head) < _SIG_BITS + length_bits:
            raise StealthError("the hidden parameters are cut short (the image is too small for their length field)")
        n = int("".join(map(str, head[_SIG_BITS : _SIG_BITS + 32])), 2)
        start = _SIG_BITS + 32  # in RGB mode the 33rd bit already belongs to the payload
        if n <= 0 or n > MAX_PAYLOAD * 8:
            raise StealthError(f"the hidden parameters claim {n} bits, outside 1..{MAX_PAYLOAD * 8}")
        need_cols = min(pixels.shape[1], -(-(start + n) // per_col))
        stream = _bits(pixels[:, :need_cols], channels)
        if len(stream) < start + n:
            raise StealthError(f"the hidden parameters claim {n} bits but the image holds only {len(stream) - start}")
        data = _bytes(stream[start : start + n])
        if compressed:
            data = _gunzip(data)
        return data.decode("utf-8", errors="replace")
    return None


def _gunzip(data: bytes) -> bytes:
    try:
        return inflate(data, MAX_PAYLOAD, "the hidden parameters", gzip=True)
    except ValueError as e:
        raise StealthError(str(e)) from e


def write_stealth(pixels: np.ndarray, text: str, mode: str = "alpha", compressed: bool = False) -> np.ndarray:
    """A copy of `pixels` with `text` hidden as the extension writes it (for tests and round trips)."""
    sig = {("alpha", False): b"stealth_pnginfo", ("alpha", True): b"stealth_pngcomp",
           ("rgb", False): b"stealth_rgbinfo", ("rgb", True): b"stealth_rgbcomp"}[(mode, compressed)]
    payload = gzip.compress(text.encode("utf-8")) if compressed else text.encode("utf-8")
    bits = np.unpackbits(np.frombuffer(sig, np.uint8))
    body = np.unpackbits(np.frombuffer(payload, np.uint8))
    length = np.array([int(b) for b in format(len(body), "032b")], np.uint8)
    stream = np.concatenate([bits, length, body])
    out = pixels.copy()
    channels = slice(3, 4) if mode == "alpha" else slice(0, 3)
    view = out[:, :, channels].transpose(1, 0, 2).reshape(-1).copy()
    if len(stream) > len(view):
        raise ValueError("the image is too small for the text")
    view[: len(stream)] = (view[: len(stream)] & 0xFE) | stream
    w, h = out.shape[1], out.shape[0]
    out[:, :, channels] = view.reshape(w, h, -1).transpose(1, 0, 2)
    return out
