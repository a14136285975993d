"""Generation metadata embedded in image files: which tool wrote it, and the prompt it holds.

Where each tool puts it:
- ComfyUI: PNG text chunks `prompt` (the API graph) and `workflow` (the UI graph); WebP (animated
  too) and other EXIF containers: IFD0 tag 0x0110 holds `prompt:{...}`, 0x010F `workflow:{...}`.
  The graph is read by `comfy_graph.read_graph`; with only the workflow, it is converted first.
- A1111 / Forge / SD.Next: PNG `parameters`; JPEG and WebP: EXIF UserComment (0x9286) in the Exif
  sub-IFD or in IFD0, after its 8-byte character-code prefix (UNICODE = UTF-16, ASCII).
- NovelAI: PNG `Comment` (JSON: prompt, uc, seed, steps, scale, sampler; v4_prompt), `Description`.
- InvokeAI: PNG `invokeai_metadata` (JSON), older `sd-metadata` (JSON) and `Dream` (text).
- SwarmUI: `parameters` holding JSON with `sui_image_params`.
- Fooocus: `parameters` holding JSON (Prompt, Negative Prompt, Seed, Base Model...), or A1111 text.
PNG chunks are read here, not by Pillow (which refuses compressed text over 1 MB), each with a
size limit, so a huge or broken chunk is a reason, never a crash or a hang.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from ..core.images import ImageRefused, open_image, read_image_file
from ..core.inflate import inflate
from .comfy_graph import NodeTypes, read_graph
from .comfy_workflow import api_from_workflow, expand_components, ui_nodes
from .stealth import StealthError, read_stealth
from .text_params import finite, parse_a1111, parse_dream, seed, split_negative

MAX_CHUNK = 32 << 20  # one text chunk, decompressed
MAX_TEXT = 64 << 20  # all text chunks of a file
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class PromptReading:
    """The prompt found in an image (None, with the reason), its metadata, and how it was found."""

    prompt: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    generator: str | None = None  # comfyui, comfyui-workflow, a1111, novelai, invokeai, swarmui, fooocus
    path: list[str] = field(default_factory=list)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "metadata": self.metadata, "generator": self.generator, "path": self.path,
                "reason": self.reason}


@dataclass
class RawFields:
    """Every metadata field of an image file, before interpretation."""

    text: dict[str, str] = field(default_factory=dict)  # PNG text chunks (and Pillow's info strings)
    exif: dict[str, str] = field(default_factory=dict)  # "ifd0:0x0110", "exif:0x9286" -> decoded text
    size: tuple[int, int] | None = None
    problems: list[str] = field(default_factory=list)
    format: str | None = None  # PNG, WEBP, JPEG... as the file's bytes say
    name: str | None = None  # the file's name, when known (ComfyUI names files after the saver's prefix)


# ---- PNG chunks -----------------------------------------------------------------------------------------
def png_fields(data: bytes) -> RawFields:
    """Text chunks (tEXt, zTXt, iTXt) and size of a PNG, within MAX_CHUNK / MAX_TEXT."""
    out = RawFields()
    if not data.startswith(PNG_SIGNATURE):
        out.problems.append("not a PNG file")
        return out
    pos, total = len(PNG_SIGNATURE), 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if len(body) < length:
            out.problems.append(f"the {kind.decode('latin-1', 'replace')} chunk is cut short (file truncated)")
            break
        if kind == b"IHDR" and length >= 8:
            out.size = struct.unpack(">II", body[:8])
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            try:
                key, value = _text_chunk(kind, body)
            except ValueError as e:
                out.problems.append(str(e))
                continue
            total += len(value)
            if total > MAX_TEXT:
                out.problems.append(f"the text chunks add up to more than {MAX_TEXT >> 20} MB; the rest were not read")
                break
            out.text.setdefault(key, value)
        elif kind == b"IEND":
            break
    return out


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str]:
    key, sep, rest = body.partition(b"\0")
    name = key.decode("latin-1")
    if not sep:
        raise ValueError(f"a {kind.decode()} chunk has no keyword separator")
    if kind == b"tEXt":
        if len(rest) > MAX_CHUNK:
            raise ValueError(f"the '{name}' text chunk is {len(rest) >> 20} MB, over the {MAX_CHUNK >> 20} MB limit")
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(rest[1:], name).decode("latin-1")
    if len(rest) < 2:
        raise ValueError(f"the '{name}' iTXt chunk is cut short")
    compressed, rest = rest[0], rest[2:]
    _lang, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    raw = _inflate(text, name) if compressed else text
    if len(raw) > MAX_CHUNK:
        raise ValueError(f"the '{name}' text chunk is {len(raw) >> 20} MB, over the {MAX_CHUNK >> 20} MB limit")
    return name, raw.decode("utf-8", errors="replace")


def _inflate(data: bytes, name: str) -> bytes:
    return inflate(data, MAX_CHUNK, f"the '{name}' text chunk")


def strip_png_text(data: bytes) -> bytes:
    """The PNG without its text chunks: for decoding pixels of a file whose metadata Pillow refuses."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    parts, pos = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            parts.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(parts)


# ---- EXIF ---------------------------------------------------------------------------------------------
_EXIF_TEXT_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x9286: "UserComment",
                   0x9C9C: "XPComment", 0x0131: "Software"}


def exif_fields(img: Image.Image) -> dict[str, str]:
    """Text-bearing EXIF tags of IFD0 and the Exif sub-IFD, decoded."""
    out: dict[str, str] = {}
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001  (a broken EXIF block is only a missing field)
        return out
    sources = [("ifd0", exif)]
    try:
        sources.append(("exif", exif.get_ifd(0x8769)))
    except Exception:  # noqa: BLE001
        pass
    for where, ifd in sources:
        for tag, name in _EXIF_TEXT_TAGS.items():
            value = ifd.get(tag) if hasattr(ifd, "get") else None
            text = _exif_text(tag, value)
            if text:
                out[f"{where}:{name}"] = text
    return out


def _exif_text(tag: int, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip("\x00") or None
    if isinstance(value, tuple) and tag == 0x9C9C:  # XPComment: UTF-16-LE as a tuple of bytes
        value = bytes(value)
    if not isinstance(value, (bytes, bytearray)):
        return None
    raw = bytes(value)
    if tag == 0x9C9C:
        return raw.decode("utf-16-le", errors="replace").strip("\x00") or None
    if tag == 0x9286 and len(raw) >= 8:
        head, body = raw[:8], raw[8:]
        if head.startswith(b"UNICODE"):
            # the standard says big-endian unless a BOM says otherwise; writers differ, so take what decodes to text
            for enc in ("utf-16-be", "utf-16-le"):
                try:
                    text = body.decode(enc)
                except UnicodeDecodeError:
                    continue
                if text and sum(ch.isprintable() or ch in "\n\r\t" for ch in text) >= 0.95 * len(text):
                    return text.strip("\x00")
            return None
        if head.startswith((b"ASCII", b"JIS", b"\0\0\0\0\0\0\0\0")):
            return body.decode("utf-8", errors="replace").strip("\x00") or None
    return raw.decode("utf-8", errors="replace").strip("\x00") or None


# ---- reading ------------------------------------------------------------------------------------------
def raw_fields(source: "str | Path | bytes | Image.Image") -> RawFields:
    """All text metadata of an image, from a file, its bytes, or an opened Pillow image."""
    if isinstance(source, Image.Image):
        out = RawFields(size=source.size, format=source.format)
        info = getattr(source, "text", None) or {}
        for k, v in {**(source.info or {}), **info}.items():
            if isinstance(v, str):
                out.text.setdefault(str(k), v)
        out.exif = exif_fields(source)
        return out
    data = read_image_file(source) if isinstance(source, (str, Path)) else bytes(source)
    if data.startswith(PNG_SIGNATURE):
        out = png_fields(data)
        out.format = "PNG"
        try:
            with open_image(strip_png_text(data), formats=("PNG",)) as img:
                out.exif = exif_fields(img)  # eXIf chunks exist too
        except ImageRefused:
            pass
        return out
    try:
        with open_image(data) as img:
            return raw_fields(img)
    except ImageRefused as e:
        return RawFields(problems=[str(e)])


def read_prompt(source: "str | Path | bytes | Image.Image", types: NodeTypes | None = None,
                name: str | None = None) -> PromptReading:
    """The generation prompt embedded in an image (any format above), or why there is none.

    Only an image with no metadata field at all is searched for A1111's stealth parameters (hidden in
    the pixels' low bits), as the extension itself does: a written field always wins.
    """
    if isinstance(source, (str, Path)):
        name = name or Path(source).name
        try:
            source = read_image_file(source)
        except ImageRefused as e:
            return PromptReading(None, reason=str(e))
    raw = raw_fields(source)
    raw.name = name
    found = interpret(raw, types)
    if found.reason != NO_METADATA:
        return found
    try:
        hidden = stealth_text(source)
    except StealthError as e:
        return PromptReading(None, generator="a1111-stealth", reason=str(e))
    if hidden is None:
        return found
    fields = _stealth_fields(hidden)
    got = interpret(RawFields(text=fields, size=raw.size, format=raw.format, name=name), types)
    if got.reason == NO_METADATA:
        return PromptReading(None, generator="a1111-stealth", reason="the hidden (stealth) parameters hold no prompt")
    got.path = ["stealth parameters in the pixels"] + got.path
    got.generator = f"{got.generator}-stealth" if got.generator else "a1111-stealth"
    return got


MAX_STEALTH_PIXELS = 64 << 20  # pixels decoded to look for stealth parameters


def stealth_text(source: "bytes | Image.Image") -> str | None:
    """The stealth parameters hidden in a lossless image (PNG, lossless WebP), None when there are none."""
    if isinstance(source, Image.Image):
        return _stealth_from_image(source)
    data = bytes(source)
    lossless = data.startswith(PNG_SIGNATURE) or (data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8L")
    if not lossless:
        return None
    try:
        with open_image(strip_png_text(data), formats=("PNG", "WEBP"), limit=MAX_STEALTH_PIXELS) as img:
            return _stealth_from_image(img)
    except (ImageRefused, OSError, ValueError, SyntaxError, EOFError):  # undecodable pixels: nothing hidden to read
        return None


def _stealth_from_image(img: Image.Image) -> str | None:
    w, h = img.size
    if w * h > MAX_STEALTH_PIXELS or min(w, h) < 1:
        return None
    alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    pixels = np.asarray(img.convert("RGBA" if alpha else "RGB"))
    return read_stealth(pixels)


def _stealth_fields(text: str) -> dict[str, str]:
    """Hidden text as the fields a file would carry: NovelAI hides its PNG text chunks as JSON, A1111 its parameters."""
    if text.lstrip().startswith("{"):
        try:
            d = json.loads(text)
        except (ValueError, RecursionError):
            d = None
        if isinstance(d, Mapping) and ("Comment" in d or "Description" in d):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in d.items()}
    return {"parameters": text}


def interpret(raw: RawFields, types: NodeTypes | None = None) -> PromptReading:
    """Try each tool's fields in turn; the first prompt found wins, else the most specific reason."""
    first: PromptReading | None = None
    for reader in (_comfyui, _swarm_or_fooocus_json, _a1111_parameters, _novelai, _invokeai, _exif_comment):
        found = reader(raw, types)
        if found is None:
            continue
        if found.prompt:
            return found
        if found.reason and first is None:
            first = found
    if first is not None:  # the most specific reason: the first tool whose fields are there, with its path
        return first
    if raw.problems:
        return PromptReading(None, reason="; ".join(raw.problems))
    return PromptReading(None, reason=NO_METADATA)


NO_METADATA = ("the image carries no generation metadata (no ComfyUI graph, A1111 parameters (written or stealth), "
               "NovelAI, InvokeAI, SwarmUI or Fooocus fields)")


def _json(text: str, what: str) -> Any:
    """Parsed JSON, or ValueError naming the field and where it breaks."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the {what} is not valid JSON at char {e.pos} ({e.msg})") from e
    except RecursionError as e:
        raise ValueError(f"the {what} is JSON nested too deeply to read") from e


def _comfyui(raw: RawFields, types: NodeTypes | None) -> PromptReading | None:
    prompt_text = raw.text.get("prompt")
    workflow_text = raw.text.get("workflow")
    for _key, value in raw.exif.items():  # ComfyUI's WebP: "prompt:{...}" / "workflow:{...}" in IFD0 strings
        head, _, body = value.partition(":")
        if head == "prompt" and prompt_text is None and body.lstrip().startswith("{"):
            prompt_text = body
        elif head == "workflow" and workflow_text is None and body.lstrip().startswith("{"):
            workflow_text = body
        elif prompt_text is None and workflow_text is None and '"prompt"' in value[:64]:
            # custom JPEG/WebP savers: one JSON object {"prompt": {...graph}, "workflow": {...}} in a comment
            both = _json_object(value)
            if both is not None and isinstance(both.get("prompt"), (Mapping, str)):
                prompt_text = both["prompt"] if isinstance(both["prompt"], str) else json.dumps(both["prompt"])
                if isinstance(both.get("workflow"), (Mapping, str)):
                    workflow_text = both["workflow"] if isinstance(both["workflow"], str) else json.dumps(both["workflow"])
    if prompt_text is None and workflow_text is None:
        return None
    ui = None
    if workflow_text is not None:
        try:
            ui = _json(workflow_text, "workflow chunk")
        except ValueError as e:
            if prompt_text is None:
                return PromptReading(None, generator="comfyui", reason=str(e))
        ui = ui if isinstance(ui, Mapping) else None
    if prompt_text is not None:
        try:
            api = _json(prompt_text, "prompt chunk")
        except ValueError as e:
            if ui is None:
                return PromptReading(None, generator="comfyui", reason=str(e))
            api = None
        if isinstance(api, Mapping):
            return _read_comfy(api, ui, types, raw.size, raw.format, raw.name, "comfyui")
        if api is not None and ui is None:
            return PromptReading(None, generator="comfyui",
                                 reason=f"the prompt chunk holds a JSON {type(api).__name__}, not a graph object")
    if ui is None:
        return PromptReading(None, generator="comfyui", reason="the workflow chunk holds no graph object")
    return _read_comfy(None, ui, types, raw.size, raw.format, raw.name, "comfyui-workflow")


def _read_comfy(api: Mapping[str, Any] | None, ui: Mapping[str, Any] | None, types: NodeTypes | None,
                size: tuple[int, int] | None, image_format: str | None, name: str | None, generator: str) -> PromptReading:
    """Read the API graph (else the one converted from the UI workflow), nested graphs expanded, sockets from the UI."""
    try:
        if api is None:
            api = api_from_workflow(ui or {}, types)
        elif ui is not None:
            api = expand_components(api, ui, types)
        sockets = {"nodes": ui_nodes(ui)} if ui is not None else None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as e:
        return PromptReading(None, generator=generator, reason=f"the workflow cannot be read as a graph ({e})")
    got = read_graph(api, sockets, types, size, image_format, name)
    prefix = ["(from the UI workflow)"] if generator == "comfyui-workflow" else []
    made = got.output_size
    if generator == "comfyui-workflow" and got.prompt and size is not None and (made is None or not _scaled(made, size)):
        # ComfyUI's savers write the API graph too; a file with only the UI workflow is a canvas export, whose
        # pixels are a picture of the graph, unless it is the size (or a scaling) of what the graph saves
        shown = f"{made[0]}x{made[1]}" if made else "a size it does not say"
        return PromptReading(None, got.metadata, generator, prefix + got.path,
                             f"only the UI workflow is embedded, as in a canvas export: the image is {size[0]}x{size[1]}, "
                             f"the graph saves {shown}, so its pixels are not what the prompt made")
    return PromptReading(got.prompt, got.metadata, generator, prefix + got.path, got.reason)


def _swarm_or_fooocus_json(raw: RawFields, types: NodeTypes | None) -> PromptReading | None:
    text = raw.text.get("parameters") or raw.exif.get("exif:UserComment") or raw.exif.get("ifd0:UserComment")
    d = _json_object(text)
    if d is None:  # not JSON: A1111 text may start with "{" too (dynamic prompts' {a|b})
        return None
    if isinstance(d.get("sui_image_params"), Mapping):
        p = d["sui_image_params"]
        meta = _pick(p, {"negativeprompt": "negative", "model": "checkpoint", "seed": "seed", "steps": "steps",
                         "cfgscale": "cfg", "sampler": "sampler", "scheduler": "scheduler", "width": "width",
                         "height": "height"})
        prompt = _str(p.get("prompt"))
        if prompt and _SWARM_RUNTIME.search(prompt):
            return PromptReading(None, meta, "swarmui", ["parameters: sui_image_params.prompt"],
                                 "the SwarmUI prompt is a template whose parts are drawn at run time "
                                 f"({_SWARM_RUNTIME.search(prompt).group(0)}...>); the text each image used is not stored")
        return PromptReading(prompt, meta, "swarmui", ["parameters: sui_image_params.prompt"],
                             None if prompt else "the SwarmUI parameters have no prompt")
    prompt = _str(d.get("Prompt", d.get("prompt")))
    if prompt is None and "Full Prompt" not in d:
        return None
    meta = _pick(d, {"Negative Prompt": "negative", "negative_prompt": "negative", "Seed": "seed", "seed": "seed",
                     "Base Model": "checkpoint", "base_model": "checkpoint", "Steps": "steps", "steps": "steps",
                     "Guidance Scale": "cfg", "guidance_scale": "cfg", "Sampler": "sampler", "sampler": "sampler"})
    return PromptReading(prompt, meta, "fooocus", ["parameters: Prompt"], None if prompt else "the Fooocus parameters have no prompt")


def _scaled(made: tuple[int, int], size: tuple[int, int]) -> bool:
    """`size` is `made`, or `made` scaled by one factor (an image resized after it was saved), to a pixel."""
    factor = size[0] / made[0]
    return abs(made[1] * factor - size[1]) <= max(1.0, factor)


_SWARM_RUNTIME = re.compile(r"<(random|wildcard|setmacro|macro|setvar|var)\b[^:>]{0,32}:", re.I)


def _json_object(text: str | None) -> Mapping[str, Any] | None:
    """`text` as a JSON object, None when it is not one (plain text, broken or too deeply nested JSON)."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        d = _json(text, "field")
    except ValueError:
        return None
    return d if isinstance(d, Mapping) else None


def _a1111_parameters(raw: RawFields, types: NodeTypes | None) -> PromptReading | None:
    text = raw.text.get("parameters")
    if not text or _json_object(text) is not None:
        return None
    prompt, meta = parse_a1111(text)
    return PromptReading(prompt, meta, "a1111", ["parameters"], None if prompt else "the A1111 parameters have no prompt")


def _exif_comment(raw: RawFields, types: NodeTypes | None) -> PromptReading | None:
    """A1111 text in an EXIF comment. Only text shaped like generation data counts: a camera's or an OS's
    comment ("Screenshot", a caption) is not a prompt."""
    for key in ("exif:UserComment", "ifd0:UserComment", "ifd0:ImageDescription", "ifd0:XPComment"):
        text = raw.exif.get(key)
        if text and not text.lstrip().startswith("{") and _A1111_SHAPE.search(text):
            prompt, meta = parse_a1111(text)
            return PromptReading(prompt, meta, "a1111", [f"EXIF {key}"], None if prompt else "the EXIF comment has no prompt")
    return None


_A1111_SHAPE = re.compile(r"(^|\n)[ \t]*(Steps:[ \t]*\d|Negative prompt:)")


def _novelai(raw: RawFields, types: NodeTypes | None) -> PromptReading | None:
    comment = raw.text.get("Comment")
    if comment is None or not (raw.text.get("Software", "").startswith("NovelAI") or '"uc"' in comment):
        return None
    try:
        d = _json(comment, "NovelAI Comment field")
    except ValueError as e:
        return PromptReading(None, generator="novelai", reason=str(e))
    if not isinstance(d, Mapping):
        return None
    prompt = _str(d.get("prompt")) or _str(raw.text.get("Description"))
    v4 = d.get("v4_prompt")
    if not prompt and isinstance(v4, Mapping) and isinstance(v4.get("caption"), Mapping):
        prompt = _str(v4["caption"].get("base_caption"))
    meta = _pick(d, {"uc": "negative", "seed": "seed", "steps": "steps", "scale": "cfg", "sampler": "sampler",
                     "width": "width", "height": "height"})
    if raw.text.get("Source"):
        meta["checkpoint"] = raw.text["Source"]
    return PromptReading(prompt, meta, "novelai", ["Comment: prompt"], None if prompt else "the NovelAI comment has no prompt")


def _invokeai(raw: RawFields, types: NodeTypes | None) -> PromptReading | None:
    if "invokeai_metadata" in raw.text:
        try:
            d = _json(raw.text["invokeai_metadata"], "invokeai_metadata field")
        except ValueError as e:
            return PromptReading(None, generator="invokeai", reason=str(e))
        if not isinstance(d, Mapping):
            return None
        meta = _pick(d, {"negative_prompt": "negative", "seed": "seed", "steps": "steps", "cfg_scale": "cfg",
                         "scheduler": "sampler", "width": "width", "height": "height"})
        model = d.get("model")
        if isinstance(model, Mapping):
            meta["checkpoint"] = model.get("name") or model.get("model_name")
        loras = [{"name": (lo.get("model") or lo.get("lora") or {}).get("name"), "strength": lo.get("weight", 1.0)}
                 for lo in d.get("loras") or [] if isinstance(lo, Mapping)]
        if loras:
            meta["loras"] = loras
        prompt = _str(d.get("positive_prompt"))
        return PromptReading(prompt, meta, "invokeai", ["invokeai_metadata: positive_prompt"],
                             None if prompt else "the InvokeAI metadata has no positive prompt")
    # the Dream line is the prompt as typed (weights and blends included); sd-metadata has it parsed into parts
    dream = raw.text.get("Dream")
    if dream:
        prompt, meta = parse_dream(dream)
        if prompt:
            return PromptReading(prompt, meta, "invokeai", ["Dream"])
    if "sd-metadata" in raw.text:
        try:
            d = _json(raw.text["sd-metadata"], "sd-metadata field")
        except ValueError as e:
            return PromptReading(None, generator="invokeai", reason=str(e))
        image = d.get("image") if isinstance(d, Mapping) else None
        if image is None and isinstance(d, Mapping) and isinstance(d.get("images"), list) and d["images"]:
            image = d["images"][0]
        if isinstance(image, Mapping):
            prompt = _sd_metadata_prompt(image.get("prompt"))
            meta = _pick(image, {"seed": "seed", "steps": "steps", "cfg_scale": "cfg", "sampler": "sampler",
                                 "width": "width", "height": "height"})
            if isinstance(d.get("model_weights"), str):
                meta["checkpoint"] = d["model_weights"]
            if prompt:  # "a castle [ugly, blurry]": the bracketed parts are the negative
                prompt, negative = split_negative(prompt)
                if negative:
                    meta["negative"] = negative
            return PromptReading(prompt or None, meta, "invokeai", ["sd-metadata: image.prompt"],
                                 None if prompt else "the InvokeAI metadata has no prompt")
    if dream:
        return PromptReading(None, generator="invokeai", path=["Dream"],
                             reason="the Dream field holds a command or a placeholder, not a prompt")
    return None


def _sd_metadata_prompt(p: Any) -> str | None:
    """sd-metadata's prompt: a string, or a list of {prompt, weight} parts (a blend: written back as `a:0.25 b:0.75`)."""
    if isinstance(p, list):
        parts = [(q.get("prompt"), q.get("weight")) for q in p if isinstance(q, Mapping) and _str(q.get("prompt"))]
        if len(parts) == 1:
            return _str(parts[0][0])
        return " ".join(f"{t.strip()}:{w:g}" if finite(w) is not None else t.strip() for t, w in parts) or None
    return _str(p)


def _pick(d: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, Any]:
    """The fields named in `keys`, renamed; numbers only when finite (a seed: a 64-bit non-negative integer)."""
    out: dict[str, Any] = {}
    for src, dst in keys.items():
        v = d.get(src)
        if dst in out or isinstance(v, bool) or not isinstance(v, (str, int, float)) or v == "":
            continue
        if dst == "seed":
            v = seed(v)
        elif isinstance(v, (int, float)) and finite(v) is None:
            v = None
        if v is not None:
            out[dst] = v
    return out


def _str(v: Any) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None
