"""The vault manifest: the one JSON file whose atomic replacement commits every change."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .atomic import atomic_write_bytes
from .errors import EncoderMismatchError, VaultCorruptError, VaultFormatError, VaultNotFoundError

FORMAT_NAME = "luna-vault"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20

PROBE_MIN_COSINE = 0.98

TEXT_FAMILIES: dict[str, tuple[int, int]] = {
    # family: (token dim, pooled dim) of ComfyUI's CLIPTextEncode output for that model family
    "sd15": (768, 768),
    "sdxl": (2048, 1280),
    "flux": (4096, 768),
}


@dataclass(frozen=True)
class EncoderFingerprint:
    """Identity of an image encoder: a vault answers only queries made with the same one.

    `weights_hash` identifies the weights as one loader sees them; `probe` is the encoder's
    embedding of a fixed test image (see extraction.encoders.probe_image), which identifies the
    *function* across loaders (ComfyUI, open_clip), devices and precisions. When both sides have a
    probe it decides (cosine >= PROBE_MIN_COSINE); otherwise differing weight hashes refuse.
    """

    name: str
    dim: int
    weights_hash: str = ""
    probe: tuple[float, ...] | None = field(default=None, compare=False, repr=False)

    def probe_cosine(self, other: "EncoderFingerprint") -> float | None:
        if not self.probe or not other.probe or len(self.probe) != len(other.probe):
            return None
        a, b = np.asarray(self.probe, np.float64), np.asarray(other.probe, np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    def check_compatible(self, other: "EncoderFingerprint", where: str = "vault") -> None:
        """Raise EncoderMismatchError unless `other` is the same encoder (same dim, same function)."""
        if other.dim != self.dim:
            raise EncoderMismatchError(
                f"the {where} holds {self.dim}-d embeddings from '{self.name}', but the query encoder "
                f"'{other.name}' gives {other.dim}-d ones; load the CLIP vision model the {where} was built with"
            )
        cos = self.probe_cosine(other)
        if cos is not None:
            if cos < PROBE_MIN_COSINE:
                raise EncoderMismatchError(
                    f"the {where} was built with encoder '{self.name}', the query uses '{other.name}': both give "
                    f"{self.dim}-d embeddings but they disagree on a test image (cosine {cos:.3f}), so they are "
                    "different models and similarities would be meaningless. Use the CLIP vision model the "
                    f"{where} was built with, or rebuild it"
                )
            return
        if self.weights_hash and other.weights_hash and self.weights_hash != other.weights_hash:
            raise EncoderMismatchError(
                f"the {where} was built with encoder '{self.name}' (weights {self.weights_hash[:12]}), "
                f"the query uses '{other.name}' (weights {other.weights_hash[:12]}); same dim, different "
                "model: similarities would be meaningless. Use the same CLIP vision model or rebuild the vault"
            )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dim": self.dim, "weights_hash": self.weights_hash}
        if self.probe is not None:
            d["probe"] = [round(float(x), 5) for x in self.probe]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "EncoderFingerprint":
        probe = d.get("probe")
        return cls(name=str(d["name"]), dim=int(d["dim"]), weights_hash=str(d.get("weights_hash", "")),
                   probe=tuple(float(x) for x in probe) if probe else None)


@dataclass(frozen=True)
class TextSpec:
    """What baked conditioning holds: model family and token/pooled dims."""

    family: str
    dim: int
    pooled_dim: int

    @classmethod
    def for_family(cls, family: str) -> "TextSpec":
        if family not in TEXT_FAMILIES:
            raise VaultFormatError(f"unknown text family {family!r}; expected one of {sorted(TEXT_FAMILIES)}")
        dim, pooled = TEXT_FAMILIES[family]
        return cls(family, dim, pooled)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TextSpec":
        return cls(family=str(d["family"]), dim=int(d["dim"]), pooled_dim=int(d["pooled_dim"]))


@dataclass(frozen=True)
class SegmentInfo:
    """One immutable segment file and what it adds: entries, new prompts, its size and checksum."""

    file: str
    entries: int
    prompts: int
    bytes: int
    sha256: str
    thumbnails: bool = False
    baked_tokens: int = 0


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs before touching the data files."""

    encoder: EncoderFingerprint
    category: str
    segments: tuple[SegmentInfo, ...] = ()
    text: TextSpec | None = None
    deleted: SegmentInfo | None = None  # the tombstone file (ids of deleted entries), if any
    deleted_count: int = 0
    index: str = "auto"
    generation: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def entries(self) -> int:
        return sum(s.entries for s in self.segments)

    @property
    def prompts(self) -> int:
        return sum(s.prompts for s in self.segments)

    @property
    def live(self) -> int:
        return self.entries - self.deleted_count

    @property
    def content_key(self) -> str:
        """Hash of the segment list (names + checksums): what a cached index is bound to."""
        h = hashlib.sha256(f"{self.format_version}|{self.encoder.dim}|{self.encoder.weights_hash}".encode())
        for s in self.segments:
            h.update(f"|{s.file}:{s.sha256}:{s.entries}".encode())
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoder"] = self.encoder.to_json()
        d["segments"] = [asdict(s) for s in self.segments]
        d["counts"] = {"entries": self.entries, "live": self.live, "prompts": self.prompts}
        return d

    def evolve(self, **changes: Any) -> "Manifest":
        return replace(self, generation=self.generation + 1, updated=time.time(), **changes)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Atomically replace the manifest: the commit point of every write."""
    data = json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode()
    atomic_write_bytes(Path(folder) / MANIFEST, data)


def read_manifest(folder: Path) -> Manifest:
    """Read and validate a manifest; clear errors for a missing, foreign, newer or damaged one."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise VaultNotFoundError(f"no vault at {folder}: the folder does not exist")
    if not path.is_file():
        raise VaultNotFoundError(
            f"{folder} is not a vault: it has no {MANIFEST} (an interrupted first build leaves only this; "
            "build it again)"
        )
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise VaultCorruptError(f"{path} is {size} bytes, over the {MAX_MANIFEST_BYTES} limit for a manifest")
    try:
        d = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VaultCorruptError(f"{path} is not valid JSON ({e}); the vault is damaged") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        raise VaultFormatError(f"{path} is not a Luna Vault manifest (format={d.get('format') if isinstance(d, dict) else None!r})")
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise VaultFormatError(
            f"vault {folder} has format version {version!r}; this Luna Vault reads version {FORMAT_VERSION}. "
            + ("Upgrade luna-vault to open it." if isinstance(version, int) and version > FORMAT_VERSION else "")
        )
    try:
        segments = tuple(SegmentInfo(**s) for s in d["segments"])
        deleted = SegmentInfo(**d["deleted"]) if d.get("deleted") else None
        m = Manifest(
            encoder=EncoderFingerprint.from_json(d["encoder"]),
            category=str(d["category"]),
            segments=segments,
            text=TextSpec.from_json(d["text"]) if d.get("text") else None,
            deleted=deleted,
            deleted_count=int(d.get("deleted_count", 0)),
            index=str(d.get("index", "auto")),
            generation=int(d["generation"]),
            created=float(d["created"]),
            updated=float(d["updated"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise VaultCorruptError(f"{path} is missing or has malformed fields ({e!r}); the vault is damaged") from e
    counts = d.get("counts", {})
    if counts and (counts.get("entries") != m.entries or counts.get("prompts") != m.prompts):
        raise VaultCorruptError(
            f"{path}: counts {counts} disagree with its segment list ({m.entries} entries, {m.prompts} prompts)"
        )
    if m.encoder.dim <= 0:
        raise VaultCorruptError(f"{path}: encoder dim {m.encoder.dim} is not positive")
    return m
