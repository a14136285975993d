"""`luna-vault read FILE...`: what the prompt readers find in each image, and why an image gives none."""

from __future__ import annotations

import argparse
import json as _json
from pathlib import Path
from typing import Any

from .common import UsageError, emit
from .paths import input_file


def node_types(object_info: str | None) -> Any:
    """The built-in node table, extended by a saved /object_info of the user's ComfyUI (custom nodes)."""
    from ..extraction.comfy_graph import NodeTypes

    types = NodeTypes.builtin()
    if object_info:
        try:
            info = _json.loads(Path(object_info).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"--object-info {object_info}: cannot read it as ComfyUI's /object_info JSON ({e})") from e
        if not isinstance(info, dict):
            raise UsageError(f"--object-info {object_info}: expected a JSON object of node definitions")
        types = types.merged(NodeTypes.from_object_info(info))
    return types


def _describe(file: str, r: Any) -> list[str]:
    if not r.prompt:
        return [f"{file}: no prompt: {r.reason}"] + ([f"  followed   {' <- '.join(r.path)}"] if r.path else [])
    m = r.metadata
    lines = [f"{file}: {r.generator}", f"  prompt     {r.prompt}"]
    if m.get("negative"):
        lines.append(f"  negative   {m['negative']}")
    model = m.get("checkpoint", "")
    if m.get("loras"):
        model += "  + " + ", ".join(f"{lo['name']} ({lo['strength']:g})" for lo in m["loras"])
    if model:
        lines.append(f"  model      {model}")
    settings = ", ".join(f"{k} {m[k]}" for k in ("seed", "steps", "cfg", "sampler", "scheduler", "denoise") if k in m)
    if "width" in m:
        settings += f"{', ' if settings else ''}{m['width']}x{m['height']}"
    if settings:
        lines.append(f"  settings   {settings}")
    if r.path:
        lines.append(f"  followed   {' <- '.join(r.path)}")
    return lines


def _is_image(path: Path) -> bool:
    """Whether the file is one of the formats the image gate decodes, by its first bytes (never its name)."""
    from ..core.images import HEAD_BYTES, sniff

    try:
        with open(path, "rb") as f:
            return sniff(f.read(HEAD_BYTES)) is not None
    except OSError:
        return False


def cmd_read(a: argparse.Namespace) -> int:
    """Exit 0 when every file is an image (with or without a prompt), 2 when one is not an image at all."""
    paths = [input_file(file, "image") for file in a.files]
    if a.object_info:
        input_file(a.object_info, "--object-info")
    images = {file: _is_image(path) for file, path in zip(a.files, paths)}
    not_images = [file for file, ok in images.items() if not ok]
    types = node_types(a.object_info) if len(not_images) < len(images) else None
    from ..core.images import ImageRefused, open_image, read_image_file
    from ..extraction.image_meta import PromptReading, read_prompt

    readings, lines = [], []
    for file, path in zip(a.files, paths):
        if not images[file]:
            continue
        try:  # the image gate: a size this machine decodes (from the header), a header that parses
            data = read_image_file(path, what="the file")
            open_image(data, what="the file").close()
        except ImageRefused as e:
            r = PromptReading(None, reason=f"not read: {e}")
        else:
            r = read_prompt(data, types)
        readings.append({"file": file, **r.to_json()})
        lines += _describe(file, r)
    found = sum(1 for r in readings if r["prompt"])
    if readings:
        lines.append(f"{found} of {len(readings)} images give a prompt")
        emit({"files": readings, "found": found, "not_images": not_images}, a.json, "\n".join(lines))
    if not_images:
        raise UsageError(f"{', '.join(not_images[:3])}{' and more' if len(not_images) > 3 else ''} "
                         f"{'is' if len(not_images) == 1 else 'are'} not an image Pillow can open here (PNG, JPEG, WebP, GIF or BMP, "
                         "by the first bytes); "
                         "give image files")
    return 0
