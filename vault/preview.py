"""Preview images of what matched: thumbnails in a batch, and a captioned sheet per crop."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .query import QueryResult
from .store import Vault
from .thumbnails import decode_thumbnail, to_pil

CELL = 128
PLACEHOLDER = (60, 60, 64)


def _fit(img: Image.Image | None, size: int) -> Image.Image:
    """Letterbox an image into a size x size square (grey placeholder when there is none)."""
    cell = Image.new("RGB", (size, size), PLACEHOLDER)
    if img is None:
        d = ImageDraw.Draw(cell)
        d.text((size // 2, size // 2), "no preview", fill=(200, 200, 200), anchor="mm", font=ImageFont.load_default())
        return cell
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    cell.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return cell


def _thumb(vault: Vault, entry_id: int) -> Image.Image | None:
    data = vault.thumbnail(entry_id)
    if not data:
        return None
    try:
        return decode_thumbnail(data)
    except (OSError, ValueError):
        return None


def _batch(cells: list[Image.Image], size: int) -> np.ndarray:
    cells = cells or [_fit(None, size)]
    return np.stack([np.asarray(c, dtype=np.float32) / 255.0 for c in cells])


def entry_thumbnails(vault: Vault, ids: Sequence[int], size: int = 96) -> np.ndarray:
    """Previews of the given entries as one batch [N, size, size, 3] float 0..1."""
    return _batch([_fit(_thumb(vault, int(i)), size) for i in ids], size)


def matched_thumbnails(results: Sequence[QueryResult], vaults: dict[str, Vault], size: int = 96) -> np.ndarray:
    """All matches' previews as one batch [N, size, size, 3] float 0..1 (crop by crop, best first)."""
    return _batch([_fit(_thumb(vaults[m.vault], m.id), size) for r in results for m in r.matches], size)


def contact_sheet(crop: Any, result: QueryResult, vaults: dict[str, Vault], cell: int = CELL) -> np.ndarray:
    """One row: the query crop, then each match with its similarity, id and vault underneath. [H, W, 3] 0..1."""
    font = ImageFont.load_default()
    caption = 30
    n = 1 + len(result.matches)
    sheet = Image.new("RGB", (n * (cell + 4) + 4, cell + caption + 8), (24, 24, 28))
    d = ImageDraw.Draw(sheet)
    sheet.paste(_fit(to_pil(crop), cell), (4, 4))
    d.text((4 + cell // 2, cell + 8), "query", fill=(230, 230, 230), anchor="ma", font=font)
    for i, m in enumerate(result.matches, start=1):
        x = 4 + i * (cell + 4)
        sheet.paste(_fit(_thumb(vaults[m.vault], m.id), cell), (x, 4))
        d.text((x + cell // 2, cell + 8), f"{m.similarity:.3f}", fill=(255, 214, 102), anchor="ma", font=font)
        d.text((x + cell // 2, cell + 20), f"#{m.id} {m.vault}"[:22], fill=(170, 170, 170), anchor="ma", font=font)
    return np.asarray(sheet, dtype=np.float32) / 255.0
