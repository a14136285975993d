"""Generation parameters written as text: A1111's `parameters` and InvokeAI's dream command lines.

Every parser here runs in time linear in its input (bounded regex quantifiers and plain scans, no
nested repetition), because the text comes from strangers' files: a megabyte of spaces or of
`<lora:` must not hang `read` or `extract`. Numbers are kept only when finite and in range.
"""

from __future__ import annotations

import math
import re
from typing import Any

# <lora:name:0.8> or <lora:name:0.8:0.5> (unet / te strengths), also <lyco:...>, <hypernet:...>
_LORA_TAG = re.compile(r"<(lora|lyco):([^:<>\n]{1,256})((?::[^:<>\n]{0,64}){0,3})>", re.I)
_SETTINGS_LINE = re.compile(r"[ \t]*Steps:[ \t]*\d")
_KEY = re.compile(r"[A-Za-z][\w \-/()]{0,63}")
MAX_SEED = (1 << 64) - 1


def finite(value: Any) -> float | None:
    """`value` as a finite float, else None (NaN, infinities, text that is no number)."""
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def seed(value: Any) -> int | None:
    """A seed as generators write it (a non-negative integer below 2**64), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_SEED else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and 0 <= value <= MAX_SEED else None
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 20:
        return seed(int(value.strip()))
    return None


def settings_line(line: str) -> dict[str, str]:
    """`Steps: 20, Sampler: Euler a, Lora hashes: "a: 1, b: 2", ...` as {key: value}, in one pass."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        colon = line.find(":", i)
        if colon < 0:
            break
        key = line[i:colon].strip()
        j = colon + 1
        while j < n and line[j] in " \t":
            j += 1
        if j < n and line[j] == '"':  # a quoted value may hold commas and colons
            k = j + 1
            while k < n and line[k] != '"':
                k += 2 if line[k] == "\\" else 1
            value = line[j + 1 : min(k, n)]
            comma = line.find(",", k)
        else:
            comma = line.find(",", j)
            value = line[j : comma if comma >= 0 else n]
        if _KEY.fullmatch(key):
            out.setdefault(key, value.strip())
        i = comma + 1 if comma >= 0 else n
    return out


def lora_tags(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """The prompt without its `<lora:name:weight>` tags, and the LoRAs they name (weight 1 when unreadable)."""
    loras = []
    for m in _LORA_TAG.finditer(prompt):
        parts = [p for p in m.group(3).split(":") if p != ""]
        strength = finite(parts[0]) if parts else 1.0
        loras.append({"name": m.group(2).strip(), "strength": 1.0 if strength is None else strength})
    if not loras:
        return prompt, []
    text = _LORA_TAG.sub("", prompt)
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"[ \t]+,", ",", text)
    return text.strip(" ,"), loras


def parse_a1111(text: str) -> tuple[str | None, dict[str, Any]]:
    """Prompt, negative, settings and <lora:...> tags from an A1111 `parameters` string."""
    lines = text.strip().splitlines()
    if not lines:
        return None, {}
    settings_at = next((i for i in range(len(lines) - 1, -1, -1) if _SETTINGS_LINE.match(lines[i])), None)
    body = lines[:settings_at] if settings_at is not None else lines
    meta: dict[str, Any] = {}
    neg_at = next((i for i, ln in enumerate(body) if ln.startswith("Negative prompt:")), None)
    prompt_lines = body[:neg_at] if neg_at is not None else body
    if neg_at is not None:
        meta["negative"] = "\n".join([body[neg_at][len("Negative prompt:"):].strip()] + body[neg_at + 1:]).strip()
    prompt, loras = lora_tags("\n".join(prompt_lines).strip())
    if loras:
        meta["loras"] = loras
    if settings_at is not None:
        meta.update(a1111_settings(settings_line(lines[settings_at])))
    return prompt or None, meta


def a1111_settings(settings: dict[str, str]) -> dict[str, Any]:
    """The settings we keep, typed: seed, checkpoint, steps, sampler, scheduler, cfg, size."""
    meta: dict[str, Any] = {}
    if seed(settings.get("Seed")) is not None:
        meta["seed"] = seed(settings["Seed"])
    if settings.get("Model"):
        meta["checkpoint"] = settings["Model"]
    steps = settings.get("Steps", "")
    if steps.isdigit() and len(steps) <= 6:
        meta["steps"] = int(steps)
    for key, out in (("Sampler", "sampler"), ("Schedule type", "scheduler")):
        if settings.get(key):
            meta[out] = settings[key]
    cfg = finite(settings.get("CFG scale"))
    if cfg is not None:
        meta["cfg"] = cfg
    size = re.fullmatch(r"(\d{1,6})x(\d{1,6})", settings.get("Size", ""))
    if size:
        meta["width"], meta["height"] = int(size.group(1)), int(size.group(2))
    return meta


def split_negative(prompt: str) -> tuple[str, str | None]:
    """InvokeAI's convention: text in [square brackets] is the negative prompt (all such parts, in order)."""
    pos: list[str] = []
    neg: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(prompt):
        if ch == "[":
            if depth == 0:
                pos.append(prompt[start:i])
                start = i + 1
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
            if depth == 0:
                neg.append(prompt[start:i])
                start = i + 1
    (neg if depth else pos).append(prompt[start:])
    positive = re.sub(r"[ \t]{2,}", " ", "".join(pos)).strip(" ,")
    negative = ", ".join(n.strip() for n in neg if n.strip())
    return positive, negative or None


_DREAM_FLAGS = {"-s": "steps", "--steps": "steps", "-S": "seed", "--seed": "seed", "-C": "cfg", "--cfg_scale": "cfg",
                "-A": "sampler", "--sampler": "sampler", "-W": "width", "--width": "width", "-H": "height",
                "--height": "height", "-m": "checkpoint", "--model": "checkpoint"}


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')  # one unambiguous alternative per character: linear
_FIRST_FLAG = re.compile(r"(?:^|\s)--?[A-Za-z]")


def parse_dream(text: str) -> tuple[str | None, dict[str, Any]]:
    """An InvokeAI dream line, `"a castle [blurry]" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms`.

    Not a prompt: a command (`!mask ...`, `!fix ...`) or a placeholder the app writes on previews
    (one `<...>` phrase with spaces; a `<concept>` token alone has none).
    """
    stripped = text.strip()
    if stripped.startswith("!") or re.fullmatch(r"<[^<>]* [^<>]*>", stripped):
        return None, {}
    quoted = _QUOTED.match(stripped)
    if quoted:
        prompt_text, rest = quoted.group(1).replace('\\"', '"'), stripped[quoted.end():]
    else:  # unquoted: the prompt runs up to the first switch
        flag = _FIRST_FLAG.search(stripped)
        prompt_text, rest = (stripped[: flag.start()], stripped[flag.start():]) if flag else (stripped, "")
    words = rest.split()
    meta: dict[str, Any] = {}
    i = 0
    while i < len(words):
        flag, value = words[i], words[i + 1] if i + 1 < len(words) else None
        i += 2 if flag in _DREAM_FLAGS else 1
        key = _DREAM_FLAGS.get(flag)
        if key is None or value is None:
            continue
        if key == "seed":
            if seed(value) is not None:
                meta["seed"] = seed(value)
        elif key in ("steps", "width", "height"):
            if value.isdigit() and len(value) <= 6:
                meta[key] = int(value)
        elif key == "cfg":
            if finite(value) is not None:
                meta["cfg"] = finite(value)
        else:
            meta[key] = value
    prompt, negative = split_negative(prompt_text.strip().strip('"'))
    if negative:
        meta["negative"] = negative
    return (prompt if re.search(r"\w", prompt) else None), meta
