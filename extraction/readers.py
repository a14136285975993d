"""Dataset readers: find (image, prompt, metadata) items in a folder of generated images.

Where a prompt comes from, in order: a sidecar `NAME.json` (prompt, negative, checkpoint, loras,
seed, category, quality, any other keys kept), a sidecar `NAME.txt` (the prompt), else what the
image itself carries (ComfyUI graphs, A1111/Forge, NovelAI, InvokeAI, SwarmUI, Fooocus: read when
the image is decoded, see `image_meta.read_prompt`).
Category: the sidecar's `category`, else the given default, else the image's folder name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import strict_json

MAX_SIDECAR_BYTES = 4 << 20
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass
class Item:
    """One image with what the sidecars/chunks say about it (the prompt may still be missing)."""

    path: Path
    prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, in a stable (sorted) order."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_sidecars(image: Path, root: Path | None = None) -> tuple[str | None, dict[str, Any]]:
    """(prompt, metadata) from NAME.json and/or NAME.txt next to the image; JSON wins.

    A sidecar is a stranger's file: at most MAX_SIDECAR_BYTES, not a link out of `root`, strict JSON
    (no NaN/Infinity, numbers a float holds, bounded nesting). ValueError says which and why."""
    prompt, meta = None, {}
    txt = image.with_suffix(".txt")
    if txt.is_file():
        prompt = _read_sidecar(txt, root).decode("utf-8", errors="replace").strip() or None
    js = image.with_suffix(".json")
    if js.is_file():
        try:
            data = strict_json.loads(_read_sidecar(js, root))
        except strict_json.StrictJSONError as e:
            raise ValueError(f"sidecar {js.name}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"sidecar {js.name} holds {type(data).__name__}, expected an object")
        if isinstance(data.get("prompt"), str) and data["prompt"].strip():
            prompt = data["prompt"].strip()
        meta = {k: v for k, v in data.items() if k not in ("prompt", "quality_score")}
        if "quality_score" in data and "quality" not in data:
            meta["quality"] = data["quality_score"]
    return prompt, meta


def _read_sidecar(path: Path, root: Path | None) -> bytes:
    if root is not None:
        check_inside(path, root)
    with open(path, "rb") as f:
        data = f.read(MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        raise ValueError(f"sidecar {path.name} is over {MAX_SIDECAR_BYTES >> 20} MB; a prompt's sidecar is far smaller")
    return data


def check_inside(path: Path, root: Path) -> None:
    """ValueError when `path` is a link (or under one) that leads out of `root`: a folder from elsewhere could
    point its images or sidecars at your own files, which would end up in a vault you might share."""
    try:
        inside = path.resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError) as e:  # a link loop
        raise ValueError(f"{path.name} is a link that cannot be followed ({e})") from e
    if not inside:
        raise ValueError(f"{path.name} is a link to a file outside the dataset folder; links out of it are not "
                         "followed (copy the file in if you mean it)")


def display_path(rel: str) -> str:
    """A relative path as printable text, whatever bytes its name has (undecodable bytes as \\xNN)."""
    return os.fsencode(rel).decode("utf-8", errors="backslashreplace")


def describe(image: Path, root: Path, default_category: str | None) -> Item:
    """Sidecar prompt/metadata plus the category rule (embedded chunks are read when decoding).

    ValueError for an item to skip: a name that is not UTF-8, a link out of `root`, a bad sidecar."""
    rel_name = str(image.relative_to(root)) if image.is_relative_to(root) else str(image)
    try:
        rel_name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("its file name is not UTF-8 text (rename the file)") from None
    check_inside(image, root)
    prompt, meta = read_sidecars(image, root)
    if "category" not in meta or not meta["category"]:
        rel = image.relative_to(root) if image.is_relative_to(root) else image
        meta["category"] = default_category or (rel.parent.name if rel.parent.name else Path(root).name)
    meta.setdefault("source", rel_name)
    return Item(image, prompt, meta)
