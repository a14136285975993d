"""The one gate every image from elsewhere passes before Pillow touches its pixels.

Images come from strangers (a shared vault's previews, a package's contact sheet, a downloaded
folder of generations), so this module decides, from the file's first bytes and never from its
name, which decoder may look at it: only the formats in ALLOWED (what image generators write),
each handed to exactly its own Pillow plugin through `Image.open(formats=...)`. Pillow therefore
never reaches a plugin that runs another program (EPS hands the file to Ghostscript) or one of
the rarely used decoders. The size is read from the header and checked against a limit sized to
this machine before a single pixel is decoded: a refusal costs microseconds and no memory.

Every refusal is an ImageRefused (a ValueError) whose message is one line saying what was found
and what was expected.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

# format name (Pillow's) -> how its files start; what ComfyUI, A1111/Forge, InvokeAI, NovelAI, Fooocus and
# SwarmUI write (PNG, JPEG, WebP) plus the two simple formats some tools export (GIF, BMP). Not TIFF (a dozen
# codecs behind one container) nor EPS/PDF/PSD and the other legacy formats Pillow can also read.
ALLOWED = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}
HARD_MAX_PIXELS = 8192 * 8192  # 67 MP: above any generator's output (a 4x upscale of 2048 x 2048 included)
MIN_MAX_PIXELS = 16 << 20  # even a small machine decodes a 4096 x 4096 image
BYTES_PER_PIXEL = 10  # a decode holds RGBA (4) and its RGB copy (3), then the hashed array (3)
CONCURRENT_DECODES = 8  # decode workers that may hold an image at once, with room to spare
HEAD_BYTES = 32


class ImageRefused(ValueError):
    """An image this program will not decode: unknown format, too large, or unreadable."""


def sniff(head: bytes) -> str | None:
    """The format of a file from its first bytes (Pillow's name), or None when it is none of ALLOWED."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 18:
        return "BMP"
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, WebP, GIF, BMP or JPEG, read with struct (a few bytes, no
    decoder); None for a layout not recognised here (Pillow's header parser then answers, still before decoding)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
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
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 core header: 16-bit sizes
            return struct.unpack("<HH", data[18:22])
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in a JPEG's first start-of-frame segment, walking the segments before it."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


@lru_cache(maxsize=1)
def max_pixels() -> int:
    """How many pixels one image may have here: what fits CONCURRENT_DECODES decodes in this machine's memory,
    between MIN_MAX_PIXELS and HARD_MAX_PIXELS (Pillow's own bomb limit is higher, 89-179 MP)."""
    mem = _physical_memory()
    if mem is None:
        return HARD_MAX_PIXELS
    return int(max(MIN_MAX_PIXELS, min(HARD_MAX_PIXELS, mem // (BYTES_PER_PIXEL * CONCURRENT_DECODES))))


def max_file_bytes(pixel_limit: int | None = None) -> int:
    """The largest image file worth reading: 16-bit RGBA at the pixel limit, uncompressed, plus 16 MiB of metadata."""
    return 8 * (pixel_limit or max_pixels()) + (16 << 20)


def _formats(allowed: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(ALLOWED if allowed is None else allowed)


def _expected(formats: tuple[str, ...]) -> str:
    names = [FORMAT_NAMES.get(f, f) for f in formats]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def image_format(data: bytes, formats: Iterable[str] | None = None, what: str = "image") -> str:
    """The format of `data` by its magic bytes; ImageRefused unless it is one of `formats` (default ALLOWED)."""
    allowed = _formats(formats)
    fmt = sniff(data[:HEAD_BYTES])
    if fmt is None or fmt not in allowed:
        found = f"a {FORMAT_NAMES[fmt]} file" if fmt else f"a file starting {bytes(data[:8])!r}"
        raise ImageRefused(f"{what} is {found}, not a {_expected(allowed)} image; only those are decoded "
                           "(the format is read from the file's first bytes, not its name)")
    return fmt


def open_image(data: bytes, *, formats: Iterable[str] | None = None, limit: int | None = None,
               what: str = "image") -> Image.Image:
    """A Pillow image of `data`, header read, no pixel decoded yet; ImageRefused for another format, more
    pixels than `limit` (default: max_pixels()), or a header Pillow cannot read.

    Use it (not Image.open) for anything that only needs the size or the metadata of an image."""
    fmt = image_format(data, formats, what)
    machine = limit is None
    limit = max_pixels() if limit is None else limit
    size = header_size(data)
    if size is not None:  # the common layouts: refused without even Pillow's header parser
        _check_size(size, limit, machine, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit comes next
            img = Image.open(io.BytesIO(data), formats=(fmt,))
    except Image.DecompressionBombError as e:
        raise ImageRefused(f"{what} claims a huge size in its header ({e}); refused before decoding") from e
    except UnidentifiedImageError as e:  # its message names a BytesIO object: nothing a user can act on
        raise ImageRefused(f"{what} starts like a {FORMAT_NAMES[fmt]} file but is not a readable one "
                           "(damaged or truncated header)") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise ImageRefused(f"{what} is not a readable {FORMAT_NAMES[fmt]} image ({type(e).__name__}: "
                           f"{str(e)[:120]})") from e
    try:
        _check_size(img.size, limit, machine, what)
    except ImageRefused:
        img.close()
        raise
    return img


def _check_size(size: tuple[int, int], limit: int, machine: bool, what: str) -> None:
    w, h = size
    if w * h > limit:
        raise ImageRefused(f"{what} is {w} x {h} pixels ({w * h / 1e6:.1f} MP), over the {limit:,} pixels "
                           + ("this machine decodes (scale it down first)" if machine else f"a {what} may have")
                           + "; refused from its header, nothing decoded")


def decode_rgb(data: bytes, *, formats: Iterable[str] | None = None, limit: int | None = None,
               what: str = "image") -> Image.Image:
    """Decode the first frame of `data` as an RGB image, through open_image's checks; ImageRefused on any failure."""
    img = open_image(data, formats=formats, limit=limit, what=what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            if img.mode == "RGB":  # (no copy: at the pixel limit one costs 200 MB)
                return img
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError) as e:
        img.close()
        raise ImageRefused(f"{what} is not a readable {FORMAT_NAMES.get(img.format or '', 'image')} "
                           f"({type(e).__name__}: {str(e)[:120]})") from e
    img.close()
    return rgb


def read_image_file(path: str | os.PathLike[str], *, limit: int | None = None, what: str | None = None) -> bytes:
    """The bytes of an image file, refusing before reading one larger than any image under `limit` could be
    (ImageRefused) or one whose first bytes are not an allowed format."""
    path = Path(path)
    what = what or path.name
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        cap = max_file_bytes(limit)
        if size > cap:
            raise ImageRefused(f"{what} is {size / 1e6:.0f} MB, more than an image of at most "
                               f"{(limit or max_pixels()) / 1e6:.0f} MP can be ({cap / 1e6:.0f} MB); refused unread")
        head = f.read(HEAD_BYTES)
        image_format(head, None, what)
        return head + f.read()
