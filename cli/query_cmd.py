"""`luna-vault query`: what a vault matches for images (embedded here, as the Vault Query node does) or for
precomputed embeddings; several vaults = category auto-detect. Optionally the node's contact sheet.

Order of work, cheapest first: paths, flags, crops, the vaults and whether they can answer (k, filter);
then the image encoder is loaded, checked against the vaults (the node's check, before any crop is
encoded), and the crops are embedded and looked up.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from .common import UsageError, check_encoder_flags, emit, image_encoder, read_embeddings
from .paths import existing_vault, input_file, output_file


def parse_crop(text: str) -> tuple[int, int, int]:
    """'X,Y,SIZE' -> (x, y, size): the square a detailer's crop takes, in pixels from the top left."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*,\s*(\d{1,6})\s*,\s*(\d{1,6})\s*", text)
    if not m or int(m.group(3)) == 0:
        raise UsageError(f"--crop {text!r}: write X,Y,SIZE in pixels (whole numbers, SIZE > 0), e.g. --crop 120,80,256")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _parse_rows(rows: str | None, n: int) -> list[int]:
    """'0,3,10-12' -> [0, 3, 10, 11, 12], each row checked against 0..n-1; one-line errors otherwise."""
    if rows is None:
        return list(range(n))
    out: list[int] = []
    for part in rows.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{1,12})(?:-(\d{1,12}))?", part)
        if not m:
            raise UsageError(f"--rows {rows!r}: {part!r} is not a row or a range; write rows like 0,3,10-12 "
                             f"(rows count from 0; this file has rows 0..{n - 1})")
        a, b = int(m.group(1)), int(m.group(2)) if m.group(2) else int(m.group(1))
        if b < a:
            raise UsageError(f"--rows {rows!r}: the range {part} runs backwards")
        if b >= n:
            raise UsageError(f"--rows {rows!r}: row {b} is outside 0..{n - 1}")
        if len(out) + b - a + 1 > 1_000_000:
            raise UsageError(f"--rows {rows!r}: more than a million rows")
        out.extend(range(a, b + 1))
    return out


def _check_flags(a: argparse.Namespace) -> None:
    if (a.image is None) == (a.embeddings is None):
        raise UsageError("give what to look up: --image FILE... (embedded with --clip-vision, --open-clip or "
                         "--random-encoder) or --embeddings FILE (precomputed)")
    if a.k < 1:
        raise UsageError(f"-k must be a whole number >= 1, got {a.k}")
    if a.image is not None:
        for flag, value in (("--rows", a.rows), ("--encoder-hash", a.encoder_hash)):
            if value is not None:
                raise UsageError(f"{flag} goes with --embeddings; with --image the encoder itself is checked against the vault")
        check_encoder_flags(a)
        if a.crop and len(a.crop) not in (1, len(a.image)):
            raise UsageError(f"{len(a.crop)} --crop for {len(a.image)} images: give one for all, or one per image")
    else:
        input_file(a.embeddings, "embeddings file")
        given = [f for f, v in (("--crop", a.crop), ("--sheet", a.sheet), ("--clip-vision", a.clip_vision),
                                ("--open-clip", a.open_clip), ("--random-encoder", a.random_encoder)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} goes with --image; --embeddings are already embedded")


def _load_crops(files: list[str], crops: list[str] | None) -> list[tuple[tuple[int, int, int] | None, Any]]:
    """Each image as extract decodes it (its first frame as RGB), cut to its --crop: (box, PIL image).
    Pillow only: a bad file or crop is answered before torch and the encoder are loaded."""
    from ..core.images import ImageRefused, decode_rgb, read_image_file

    boxes = [parse_crop(c) for c in crops] if crops else [None]
    out = []
    for i, file in enumerate(files):
        path = input_file(file, "--image")
        try:  # the image gate: format by the first bytes (never EPS through Ghostscript), size from the header
            rgb = decode_rgb(read_image_file(path, what="it"), what="it")
        except ImageRefused as e:
            raise UsageError(f"--image {file} is not an image Pillow can open here: {e}; give an image file") from None
        except OSError as e:
            raise UsageError(f"--image {file} cannot be read ({e.strerror or e})") from None
        box = boxes[i if len(boxes) > 1 else 0]
        if box is not None:
            x, y, size = box
            if x + size > rgb.width or y + size > rgb.height:
                raise UsageError(f"--crop {x},{y},{size} leaves {file} ({rgb.width}x{rgb.height} pixels): the square must fit "
                                 f"inside, x + SIZE <= {rgb.width} and y + SIZE <= {rgb.height}")
            rgb = rgb.crop((x, y, x + size, y + size))
        out.append((box, rgb))
    return out


def _embed(encoder: Any, images: list[Any]) -> tuple[Any, list[Any]]:
    """Embeddings [B, D] of the crops, each prepared as extract prepares an image (shortest side to the
    encoder's input size, centre crop: what ComfyUI's CLIP vision does itself), and the crops as IMAGE
    tensors [H, W, 3] for the contact sheet."""
    import numpy as np
    import torch

    from ..extraction.encoders import resize_crop

    pixels = [torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0) for img in images]
    emb = torch.cat([encoder.encode(resize_crop(p[None], encoder.input_size)) for p in pixels])
    return emb.numpy(), pixels


def _fewer_note(res: Any, k: int, vaults: dict[str, Any], flt: Any) -> str | None:
    """Why a query got fewer than k matches (the filter leaves fewer entries), or None."""
    if len(res.matches) >= k:
        return None
    v = vaults[res.vault]
    passing = int(v.filter_mask(flt).sum()) if flt else len(v)
    why = (f"only {passing} entries of vault '{res.vault}' pass the filter '{flt}'" if flt
           else f"vault '{res.vault}' holds {passing} live entries")
    return f"{len(res.matches)} of k={k} matches: {why}"


def _metadata_text(meta: dict[str, Any], width: int = 110) -> str:
    text = ", ".join(f"{key}={value}" for key, value in meta.items() if key != "source")
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_query(a: argparse.Namespace) -> int:
    paths = [existing_vault(v, a.comfyui) for v in a.vaults]
    _check_flags(a)
    sheet = output_file(a.sheet, "--sheet") if a.sheet else None
    crops = _load_crops(a.image, a.crop) if a.image is not None else None

    from ..vault import Vault, detect_category, search
    from ..vault.filters import parse_filter
    from ..vault.query import check_query

    flt = parse_filter(a.filter)
    opened = [Vault.open(p) for p in paths]
    names = [v.name for v in opened]
    if len(set(names)) != len(names):
        raise UsageError(f"two vaults named '{next(n for n in names if names.count(n) > 1)}': auto-detect tells vaults "
                         "apart by name; give each once")
    check_query(opened, a.k, flt)  # k and filter, before the encoder is loaded
    if crops is not None:
        encoder = image_encoder(a)
        fp = encoder.fingerprint
        check_query(opened, a.k, flt, fp)  # the node's check: the vault's own encoder, before any crop is encoded
        queries, pixels = _embed(encoder, [img for _, img in crops])
        labels = [f"{file}" + (f" [crop {box[0]},{box[1]},{box[2]}]" if box else "") for file, (box, _) in zip(a.image, crops)]
        keys: list[dict[str, Any]] = [{"image": file, "crop": list(box) if box else None}
                                      for file, (box, _) in zip(a.image, crops)]
    else:
        emb, header = read_embeddings(a.embeddings)
        picked = _parse_rows(a.rows, len(emb))
        queries = emb[picked]
        from ..vault import EncoderFingerprint

        hash_ = a.encoder_hash or header.get("encoder_hash", "")
        fp = EncoderFingerprint(header.get("encoder_name") or "unknown", emb.shape[1], hash_) if hash_ else None
        labels = [f"query row {r}" for r in picked]
        keys = [{"row": r} for r in picked]
    t = time.perf_counter()
    if len(opened) == 1:
        results, detection = search(opened[0], queries, k=a.k, filter=flt, encoder=fp), None
    else:
        detection, results = detect_category(opened, queries, k=a.k, filter=flt, encoder=fp)
    ms = (time.perf_counter() - t) * 1e3
    by_name = {v.name: v for v in opened}
    data: dict[str, Any] = {"queries": [], "milliseconds": round(ms, 3)}
    lines = []
    for label, key, res in zip(labels, keys, results):
        note = _fewer_note(res, a.k, by_name, flt)
        data["queries"].append({**key, **res.to_json(), **({"note": note} if note else {})})
        head = f"{label} -> vault '{res.vault}'"
        if res.scores:
            head += "  (scores: " + ", ".join(f"{n} {s:.3f}" for n, s in res.scores.items()) + ")"
        lines.append(head)
        for m in res.matches:
            meta = _metadata_text(m.metadata)
            lines.append(f"  {m.similarity:7.4f}  #{m.id:<8d} {m.prompt}" + (f"   [{meta}]" if meta else ""))
        if note:
            lines.append(f"  note: {note}")
    if detection is not None:
        data["skipped_vaults"] = detection.skipped
        lines += [f"note: vault '{n}' left out: {why}" for n, why in detection.skipped.items()]
    if crops is not None:
        data["encoder"] = fp.name
    lines.append(f"{len(results)} queries in {ms:.1f} ms")
    if sheet is not None:
        _write_sheet(sheet, pixels, results, by_name)
        data["sheet"] = str(sheet.resolve())
        lines.append(f"contact sheet written to {sheet.resolve()}")
    emit(data, a.json, "\n".join(lines))
    return 0


def _write_sheet(path: Path, crops: list[Any], results: list[Any], vaults: dict[str, Any]) -> None:
    """The Vault Query node's contact sheets (one row per crop: the crop, then each match) as one PNG."""
    import io

    import numpy as np
    from PIL import Image

    from ..core.atomic import atomic_write_bytes
    from ..vault.preview import contact_sheet

    rows = [contact_sheet(crop, res, vaults) for crop, res in zip(crops, results)]
    width = max(r.shape[1] for r in rows)
    canvas = np.full((sum(r.shape[0] for r in rows), width, 3), 24 / 255, dtype=np.float32)
    y = 0
    for r in rows:
        canvas[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0]
    buf = io.BytesIO()
    Image.fromarray((canvas * 255 + 0.5).astype(np.uint8), "RGB").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
