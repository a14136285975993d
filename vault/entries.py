"""Per-entry input checks: clean metadata and the reasons bad items are skipped."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..core import strict_json
from ..core.errors import VaultCorruptError

KNOWN_KEYS = ("source", "checkpoint", "loras", "seed", "quality", "category")


@dataclass
class Skipped:
    """An input item that was not added, and why."""

    index: int
    reason: str
    source: str = ""


@dataclass
class AddReport:
    """What one add() or append did: entries written, new prompts, items skipped with reasons."""

    added: int = 0
    new_prompts: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def merge(self, other: "AddReport") -> "AddReport":
        return AddReport(self.added + other.added, self.new_prompts + other.new_prompts, self.skipped + other.skipped)

    def summary(self) -> str:
        s = f"{self.added} entries added ({self.new_prompts} new prompts), {len(self.skipped)} skipped"
        if self.skipped:
            reasons: dict[str, int] = {}
            for item in self.skipped:
                reasons[item.reason] = reasons.get(item.reason, 0) + 1
            s += ": " + "; ".join(f"{n}x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
        return s


def _normalise_loras(value: Any) -> list[dict[str, Any]]:
    """Accept 'name', 'name:0.8', {'name':..., 'strength':...} or a list of those."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, Mapping):
            out.append({"name": str(item.get("name", "")), "strength": float(item.get("strength", 1.0))})
        else:
            name, _, strength = str(item).partition(":")
            out.append({"name": name.strip(), "strength": float(strength) if strength.strip() else 1.0})
    return [lora for lora in out if lora["name"]]


def clean_metadata(meta: Mapping[str, Any] | None, category: str) -> dict[str, Any]:
    """Return the stored form of an entry's metadata; raise ValueError with a reason if unusable.

    Known keys get fixed types (quality float, seed int, loras list of {name, strength}); other keys
    are kept as given when they are JSON-serialisable.
    """
    meta = dict(meta or {})
    out: dict[str, Any] = {"category": str(meta.pop("category", None) or category)}
    if "source" in meta:
        out["source"] = str(meta.pop("source"))
    if meta.get("checkpoint") is not None:
        out["checkpoint"] = str(meta.pop("checkpoint"))
    if "loras" in meta or "lora" in meta:
        out["loras"] = _normalise_loras(meta.pop("loras", None) or meta.pop("lora", None))
    if meta.get("seed") is not None:
        seed = meta.pop("seed")
        try:
            out["seed"] = int(seed)
        except OverflowError:
            raise ValueError(f"seed {seed!r} is not a whole number") from None
    for key in ("quality", "quality_score"):
        if meta.get(key) is not None:
            q = float(meta.pop(key))
            if not math.isfinite(q):
                raise ValueError(f"quality score {q} is not a finite number")
            out["quality"] = q
    for k, v in meta.items():
        out[str(k)] = v
    try:  # what a reader refuses is refused here: the vault never holds metadata it cannot read back
        parse_metadata(encode_metadata(out))
    except (ValueError, RecursionError) as e:
        raise ValueError(str(e).replace("entry metadata ", "", 1)[:200]) from None
    return out


def encode_metadata(meta: Mapping[str, Any]) -> bytes:
    """One entry's metadata as the newline-terminated JSON stored in a segment."""
    try:
        return json.dumps(meta, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError as e:  # a text holding a lone surrogate (e.g. a file name that is not UTF-8)
        raise ValueError(f"entry metadata holds text that is not valid Unicode ({e.reason})") from e


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """One entry's stored metadata, checked as a stranger's vault needs: exactly one JSON object (then the
    newline), UTF-8, finite numbers in float range, bounded depth. ValueError says what is wrong."""
    try:
        value = strict_json.loads(raw)
    except strict_json.StrictJSONError as e:
        raise ValueError(f"entry metadata: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"entry metadata is a JSON {type(value).__name__}, not an object")
    return value


def parse_metadata_block(blob: bytes, offsets: np.ndarray) -> list[dict[str, Any]]:
    """Every entry's metadata of one segment: entry i is exactly bytes offsets[i]..offsets[i+1] (one object and
    its newline), each checked like parse_metadata. ValueError names the first bad entry. One decode of the
    blob, then one scan per entry: an entry cannot spill into the next and shift the rest."""
    n = len(offsets) - 1
    if n <= 0:
        return []
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        i = int(np.searchsorted(offsets, e.start, side="right")) - 1
        raise ValueError(f"entry {i}'s metadata is not UTF-8 text") from None
    raw = np.frombuffer(blob, np.uint8)
    if len(text) == len(blob):
        starts = offsets
    else:  # byte offsets -> character offsets: count the bytes that begin a character
        if (raw[offsets[:-1][offsets[:-1] < len(raw)]] & 0xC0 == 0x80).any():
            raise ValueError("an entry's metadata starts inside a character (the entry boundaries are damaged)")
        begins = np.concatenate([[0], np.cumsum((raw & 0xC0) != 0x80)])
        starts = begins[offsets]
    bounds = starts.tolist()
    out = []
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        try:
            value, end = strict_json.raw_decode_at(text, a)
            if end != b - 1 or text[end] != "\n":
                raise strict_json.StrictJSONError("it is not exactly one JSON value followed by a newline")
            strict_json.check_value(value)
        except strict_json.StrictJSONError as e:
            raise ValueError(f"entry {i}'s metadata: {e}") from None
        if type(value) is not dict:
            raise ValueError(f"entry {i}'s metadata is a JSON {type(value).__name__}, not an object")
        out.append(value)
    return out


def normalise_embeddings(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise rows; return (normalised float32, ok mask). Rows that are non-finite or zero are not ok."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
    ok = finite & (norms > 1e-12)
    out = np.zeros_like(x)
    out[ok] = x[ok] / norms[ok, None]
    return out, ok


# fp16 storage moves a unit vector's norm by at most 2^-11 (4.9e-4: every component rounded by its half-ulp the
# same way; 3.7e-4 is the worst seen over 400k vectors of 16-1280 dims, spiky and one-hot ones included). A
# vector outside this is damaged or forged; inside it, a similarity can exceed 1 by at most this much, and
# queries clamp it to 1 (vault.query).
NORM_TOLERANCE = 1e-3


def check_unit_block(vault_name: str, block: np.ndarray, first: int) -> None:
    """VaultCorruptError unless every row of `block` (entries first, first+1, ...) is unit length, as written."""
    norms = np.linalg.norm(np.asarray(block, dtype=np.float32), axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))
    if len(bad):
        i = int(bad[0])
        raise VaultCorruptError(
            f"vault '{vault_name}': {len(bad)} stored embeddings are not unit length (entry {first + i} has norm "
            f"{norms[i]:.4g}): a file was damaged or edited after it was written; run `luna-vault verify` and "
            "restore the vault from a good copy")
