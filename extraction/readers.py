"""Dataset readers: find (image, prompt, metadata) items in a folder of generated images.

Where a prompt comes from, in order: a sidecar `NAME.json` (prompt, negative, checkpoint, loras,
seed, category, quality, any other keys kept), a sidecar `NAME.txt` (the prompt), the PNG `prompt`
chunk ComfyUI writes (the API graph: the text encoder feeding a sampler's `positive`), the
A1111-style `parameters` chunk, or an EXIF UserComment in the same A1111 format.
Category: the sidecar's `category`, else the given default, else the image's folder name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from PIL import Image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "DetailerForEach", "FaceDetailer"}
TEXT_KEYS = ("text", "text_g", "text_l", "t5xxl", "clip_l", "prompt", "string", "value")
SEED_KEYS = ("seed", "noise_seed")
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([0-9.]+))?[^>]*>")
_A1111_KV = re.compile(r"\s*([\w ]+):\s*(\"(?:\\.|[^\\\"])*\"|[^,]*)(?:,|$)")


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


# ---- ComfyUI API graph ---------------------------------------------------------------------------
def _follow_text(graph: Mapping[str, Any], ref: Any, seen: set[str]) -> list[str]:
    """Texts reachable from a conditioning input: through combine/concat/etc. to the encoder's text."""
    if not (isinstance(ref, list) and len(ref) == 2):
        return []
    node_id = str(ref[0])
    node = graph.get(node_id)
    if node_id in seen or not isinstance(node, Mapping):
        return []
    seen.add(node_id)
    inputs = node.get("inputs", {}) or {}
    texts = []
    for key in TEXT_KEYS:
        value = inputs.get(key)
        if isinstance(value, str) and value.strip():
            texts.append(value.strip())
            break
        if isinstance(value, list):  # text from a primitive / string node
            texts += _follow_text(graph, value, seen)
            if texts:
                break
    if not texts:
        for value in inputs.values():  # e.g. ConditioningCombine(conditioning_1, conditioning_2)
            texts += _follow_text(graph, value, seen)
    return texts


def _resolve_value(graph: Mapping[str, Any], value: Any, keys: tuple[str, ...], depth: int = 0) -> Any:
    if isinstance(value, list) and len(value) == 2 and depth < 8:
        node = graph.get(str(value[0]), {})
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        for key in keys + ("value", "int", "seed"):
            if key in inputs:
                return _resolve_value(graph, inputs[key], keys, depth + 1)
        return None
    return value


def parse_comfy_prompt(graph: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Positive prompt, negative, checkpoint, seed and LoRAs from a ComfyUI API-format graph."""
    meta: dict[str, Any] = {}
    positive = negative = None
    for node in graph.values():
        if not isinstance(node, Mapping) or node.get("class_type") not in SAMPLERS:
            continue
        inputs = node.get("inputs", {}) or {}
        pos = _follow_text(graph, inputs.get("positive"), set())
        if pos and positive is None:
            positive = ", ".join(dict.fromkeys(pos))
            neg = _follow_text(graph, inputs.get("negative"), set())
            negative = ", ".join(dict.fromkeys(neg)) if neg else None
            for key in SEED_KEYS:
                seed = _resolve_value(graph, inputs.get(key), SEED_KEYS)
                if isinstance(seed, (int, float)):
                    meta["seed"] = int(seed)
                    break
    loras = []
    for node in graph.values():
        if not isinstance(node, Mapping):
            continue
        inputs = node.get("inputs", {}) or {}
        if "ckpt_name" in inputs and isinstance(inputs["ckpt_name"], str) and "checkpoint" not in meta:
            meta["checkpoint"] = inputs["ckpt_name"]
        elif "unet_name" in inputs and isinstance(inputs["unet_name"], str) and "checkpoint" not in meta:
            meta["checkpoint"] = inputs["unet_name"]
        if isinstance(inputs.get("lora_name"), str):
            strength = inputs.get("strength_model", inputs.get("strength", 1.0))
            loras.append({"name": inputs["lora_name"], "strength": float(strength) if isinstance(strength, (int, float)) else 1.0})
    if loras:
        meta["loras"] = loras
    if negative:
        meta["negative"] = negative
    return positive, meta


# ---- A1111 parameters ----------------------------------------------------------------------------
def parse_a1111(text: str) -> tuple[str | None, dict[str, Any]]:
    """Prompt, negative, seed, checkpoint and <lora:...> tags from an A1111 `parameters` string."""
    lines = text.strip().splitlines()
    if not lines:
        return None, {}
    settings_at = next((i for i in range(len(lines) - 1, -1, -1) if re.match(r"^\s*Steps:\s*\d", lines[i])), None)
    body = lines[:settings_at] if settings_at is not None else lines
    meta: dict[str, Any] = {}
    neg_at = next((i for i, ln in enumerate(body) if ln.startswith("Negative prompt:")), None)
    prompt_lines = body[:neg_at] if neg_at is not None else body
    if neg_at is not None:
        meta["negative"] = "\n".join([body[neg_at][len("Negative prompt:"):].strip()] + body[neg_at + 1:]).strip()
    prompt = "\n".join(prompt_lines).strip()
    loras = [{"name": m.group(1), "strength": float(m.group(2) or 1.0)} for m in _LORA_TAG.finditer(prompt)]
    if loras:
        meta["loras"] = loras
        prompt = re.sub(r"\s+,", ",", re.sub(r"[ \t]{2,}", " ", _LORA_TAG.sub("", prompt))).strip(" ,")
    if settings_at is not None:
        settings = {k.strip(): v.strip().strip('"') for k, v in _A1111_KV.findall(lines[settings_at])}
        if settings.get("Seed", "").isdigit():
            meta["seed"] = int(settings["Seed"])
        if settings.get("Model"):
            meta["checkpoint"] = settings["Model"]
    return prompt or None, meta


def _exif_user_comment(img: Image.Image) -> str | None:
    try:
        raw = img.getexif().get_ifd(0x8769).get(0x9286)
    except (AttributeError, KeyError, ValueError):
        return None
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    head, body = raw[:8], raw[8:]
    if head.startswith(b"UNICODE"):
        for enc in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(enc)
                if text.isprintable() or "\n" in text:
                    return text
            except UnicodeDecodeError:
                continue
    return body.decode("utf-8", errors="replace").strip("\x00")


def read_embedded(img: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """Prompt + metadata embedded in an opened image (ComfyUI graph, A1111 parameters, EXIF)."""
    info = getattr(img, "text", None) or img.info or {}
    if isinstance(info.get("prompt"), str):
        try:
            graph = json.loads(info["prompt"])
        except json.JSONDecodeError:
            graph = None
        if isinstance(graph, dict):
            prompt, meta = parse_comfy_prompt(graph)
            if prompt:
                return prompt, meta
    if isinstance(info.get("parameters"), str):
        return parse_a1111(info["parameters"])
    comment = _exif_user_comment(img)
    if comment:
        return parse_a1111(comment)
    return None, {}


def describe(image: Path, root: Path, default_category: str | None) -> Item:
    """Sidecar prompt/metadata plus the category rule (embedded chunks are read when decoding)."""
    prompt, meta = read_sidecars(image)
    if "category" not in meta or not meta["category"]:
        rel = image.relative_to(root) if image.is_relative_to(root) else image
        meta["category"] = default_category or (rel.parent.name if rel.parent.name else Path(root).name)
    meta.setdefault("source", str(image.relative_to(root)) if image.is_relative_to(root) else str(image))
    return Item(image, prompt, meta)
