"""Dataset readers: find (image, prompt, metadata) items in a folder of generated images.

Where a prompt comes from, in order: a sidecar `NAME.json` (prompt, negative, checkpoint, loras,
seed, category, quality, any other keys kept), a sidecar `NAME.txt` (the prompt), else what the
image itself carries (ComfyUI graphs, A1111/Forge, NovelAI, InvokeAI, SwarmUI, Fooocus: read when
the image is decoded, see `image_meta.read_prompt`).
Category: the sidecar's `category`, else the given default, else the image's folder name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def read_sidecars(image: Path) -> tuple[str | None, dict[str, Any]]:
    """(prompt, metadata) from NAME.json and/or NAME.txt next to the image; JSON wins."""
    prompt, meta = None, {}
    txt = image.with_suffix(".txt")
    if txt.is_file():
        prompt = txt.read_text(encoding="utf-8", errors="replace").strip() or None
    js = image.with_suffix(".json")
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"sidecar {js.name} is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"sidecar {js.name} holds {type(data).__name__}, expected an object")
        if isinstance(data.get("prompt"), str) and data["prompt"].strip():
            prompt = data["prompt"].strip()
        meta = {k: v for k, v in data.items() if k not in ("prompt", "quality_score")}
        if "quality_score" in data and "quality" not in data:
            meta["quality"] = data["quality_score"]
    return prompt, meta


def describe(image: Path, root: Path, default_category: str | None) -> Item:
    """Sidecar prompt/metadata plus the category rule (embedded chunks are read when decoding)."""
    prompt, meta = read_sidecars(image)
    if "category" not in meta or not meta["category"]:
        rel = image.relative_to(root) if image.is_relative_to(root) else image
        meta["category"] = default_category or (rel.parent.name if rel.parent.name else Path(root).name)
    meta.setdefault("source", str(image.relative_to(root)) if image.is_relative_to(root) else str(image))
    return Item(image, prompt, meta)
