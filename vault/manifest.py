"""The vault manifest: the one JSON file whose atomic replacement commits every change."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ..core import strict_json
from ..core.atomic import atomic_write_bytes
from ..core.encoder import EncoderFingerprint
from ..core.errors import VaultCorruptError, VaultError, VaultFormatError, VaultNotFoundError
from ..core.families import TextSpec
from ..core.nofollow import NotAPlainFile, open_plain

FORMAT_NAME = "luna-vault"
FORMAT_VERSION = 2  # 2: segments carry the vault's id and their entry/prompt range (bound to their place)
MANIFEST = "manifest.json"
VAULT_SUFFIX = ".vault"  # a vault is a folder NAME.vault holding MANIFEST
MAX_MANIFEST_BYTES = 4 << 20
MAX_SEGMENTS = 1000  # a writer merges small segments long before this (see store.MERGE_AT)
MAX_ENTRIES = 1 << 34
MAX_DIM = 65536
MAX_NAME = 200
# Data file names: KIND-GENERATION-INDEX-RANDOM.safetensors, GENERATION the commit that wrote it (6 to 12 digits,
# zero-padded), INDEX its place among that commit's files. A manifest's generation is at most MAX_GENERATION and
# a writer refuses to start on one at it, so every name a writer makes is one a reader accepts.
MAX_GENERATION = 10**12 - 1
MAX_FILES_PER_COMMIT = 10**4
SEGMENT_NAME = re.compile(r"^seg-\d{6,12}-\d{4}-[0-9a-f]{8}\.safetensors$")
DELETED_NAME = re.compile(r"^del-\d{6,12}-\d{4}-[0-9a-f]{8}\.safetensors$")
_FILE_GENERATION = re.compile(r"^(?:seg|del)-(\d{6,12})-\d{4}-")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VAULT_ID = re.compile(r"^[0-9a-f]{16,64}$")

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
class TunedDefaults:
    """The Query settings an A/B run found best for this vault (`luna-vault ab --write-defaults`), with what
    they were tuned on: a Vault Query node set to use them takes strength, k, temperature and blend mode."""

    strength: float
    k: int
    temperature: float
    blend_mode: str
    checkpoint: str  # the checkpoint the detail pass sampled with
    tuned_at: str  # ISO date-time (UTC)
    metric: str  # the score the arm was chosen on
    improvement: float  # its mean paired difference to the baseline arm
    samples: int  # paired samples behind it
    run: str  # the A/B config's name

    def describe(self) -> str:
        return (f"strength {self.strength:g}, k {self.k}, temperature {self.temperature:g}, {self.blend_mode} "
                f"(tuned {self.tuned_at[:10]} on {self.checkpoint}, {self.metric} {self.improvement:+.3f} "
                f"over {self.samples} pairs)")


def tuned_from_json(d: Any) -> TunedDefaults:
    """TunedDefaults from JSON, every field range-checked (a shared vault is untrusted input)."""
    if not isinstance(d, dict):
        raise TypeError("'tuned' is not an object")
    from ..core.conditioning import BLEND_MODES

    strength, temperature, improvement = d["strength"], d["temperature"], d["improvement"]
    for name, v, lo, hi in (("strength", strength, 0.0, 1.0), ("temperature", temperature, 0.0, 10.0),
                            ("improvement", improvement, -1e6, 1e6)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"tuned {name} is {v!r}, not a number in {lo:g}..{hi:g}")
    if d["blend_mode"] not in BLEND_MODES:
        raise ValueError(f"tuned blend_mode {d['blend_mode']!r} is not one of {', '.join(BLEND_MODES)}")
    return TunedDefaults(strength=float(strength), k=_int(d["k"], "tuned k", 1, 100), temperature=float(temperature),
                         blend_mode=d["blend_mode"], checkpoint=_text(d["checkpoint"], "tuned checkpoint", allow_empty=True),
                         tuned_at=_text(d["tuned_at"], "tuned_at"), metric=_text(d["metric"], "tuned metric"),
                         improvement=float(improvement), samples=_int(d["samples"], "tuned samples", 0, 10**9),
                         run=_text(d["run"], "tuned run", allow_empty=True))


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
    vault_id: str = field(default_factory=lambda: os.urandom(8).hex())  # what every segment is bound to
    tuned: TunedDefaults | None = None  # the Query settings an A/B run chose (luna-vault ab --write-defaults)
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


def data_file_name(kind: str, generation: int, index: int) -> str:
    """The name of the `index`-th data file ("seg" or "del") that the commit making `generation` writes."""
    if not 0 <= generation <= MAX_GENERATION or not 0 <= index < MAX_FILES_PER_COMMIT:
        raise VaultError(f"a commit of generation {generation} cannot name its file #{index}: a vault allows "
                         f"generations up to {MAX_GENERATION:,} and {MAX_FILES_PER_COMMIT:,} files per commit")
    return f"{kind}-{generation:06d}-{index:04d}-{os.urandom(4).hex()}.safetensors"


def file_generation(name: str) -> int | None:
    """The generation in a data file's name (None for other names)."""
    m = _FILE_GENERATION.match(name)
    return int(m.group(1)) if m else None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Atomically replace the manifest: the commit point of every write. What it writes is first read back
    with the reader's own checks: a writer never publishes a manifest its readers would refuse."""
    data = json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode()
    try:
        manifest_from_json(strict_json.loads(data))
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise VaultError(f"refusing to commit a manifest this program could not read back ({e}); nothing was "
                         "changed") from e
    atomic_write_bytes(Path(folder) / MANIFEST, data)


def read_manifest(folder: Path) -> Manifest:
    """Read and validate a manifest; clear errors for a missing, foreign, newer, damaged or forged one.

    A vault from someone else is untrusted input: every field is checked against the limits of the
    format before anything is opened (names of files inside the folder only, counts and sizes in
    range, an index of a known family), so a bad manifest is one clear error, never a crash.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        what = "is a file, not a vault folder" if folder.exists() else "does not exist"
        raise VaultNotFoundError(f"no vault at {folder}: the path {what}")
    try:
        f = open_plain(path)  # never through a link: a manifest linked to another file is refused unopened
    except NotAPlainFile as e:
        raise VaultCorruptError(f"{path}: {e.strerror}; a vault's manifest is a plain file in its folder") from e
    except FileNotFoundError as e:
        raise VaultNotFoundError(
            f"{folder} is not a vault: it has no {MANIFEST} (an interrupted first build leaves only this; "
            "build it again)"
        ) from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:
            raise VaultCorruptError(f"{path} is {size} bytes, over the {MAX_MANIFEST_BYTES} limit for a manifest")
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    try:
        d = strict_json.loads(raw)
    except strict_json.StrictJSONError as e:
        if "nests" in str(e):
            raise VaultCorruptError(f"{path} is JSON nested too deeply to be a manifest; the vault is damaged") from e
        raise VaultCorruptError(f"{path} is not a manifest this program reads: {e}; the vault is damaged") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        raise VaultFormatError(f"{path} is not a Luna Vault manifest (format={d.get('format') if isinstance(d, dict) else None!r})")
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        if version == 1:
            raise VaultFormatError(
                f"vault {folder} has format version 1, from before segments were bound to their vault; "
                f"run `luna-vault upgrade {folder}` once to rewrite it as version {FORMAT_VERSION}"
            )
        raise VaultFormatError(
            f"vault {folder} has format version {version!r}; this Luna Vault reads version {FORMAT_VERSION}. "
            + ("Upgrade luna-vault to open it." if isinstance(version, int) and version > FORMAT_VERSION else "")
        )
    try:
        m = manifest_from_json(d)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise VaultCorruptError(f"{path}: {e}; the vault is damaged or was edited") from e
    counts = d.get("counts", {})
    if counts and (not isinstance(counts, dict) or counts.get("entries") != m.entries or counts.get("prompts") != m.prompts):
        raise VaultCorruptError(
            f"{path}: counts {counts} disagree with its segment list ({m.entries} entries, {m.prompts} prompts)"
        )
    return m


def manifest_from_json(d: Mapping[str, Any], legacy: bool = False) -> Manifest:
    """A Manifest from its JSON, every field checked; ValueError/TypeError/KeyError name the bad one."""
    segments_raw = d["segments"]
    if not isinstance(segments_raw, list):
        raise TypeError("'segments' is not a list")
    if len(segments_raw) > MAX_SEGMENTS:
        raise ValueError(f"it lists {len(segments_raw)} segment files, over the {MAX_SEGMENTS} a vault may have "
                         "(Luna Vault's writer merges small segments long before)")
    segments = tuple(_segment_info(s, SEGMENT_NAME) for s in segments_raw)
    names = [s.file for s in segments]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"segment {dup} is listed more than once")
    deleted = _segment_info(d["deleted"], DELETED_NAME) if d.get("deleted") is not None else None
    deleted_count = _int(d.get("deleted_count", 0), "deleted_count", 0, MAX_ENTRIES)
    entries = sum(s.entries for s in segments)
    if (deleted is None) != (deleted_count == 0) or (deleted is not None and deleted.entries != deleted_count):
        raise ValueError(f"deleted_count {deleted_count} does not match the deletion list "
                         f"({'none' if deleted is None else f'{deleted.entries} ids'})")
    if deleted_count > entries:
        raise ValueError(f"{deleted_count} deleted entries of {entries}")
    enc = d["encoder"]
    if not isinstance(enc, dict):
        raise TypeError("'encoder' is not an object")
    _int(enc.get("dim"), "encoder dim", 1, MAX_DIM)  # before from_json's int(): 768.9 is no dim
    encoder = EncoderFingerprint.from_json(enc)
    _text(encoder.name, "encoder name")
    _int(encoder.dim, "encoder dim", 1, MAX_DIM)
    _text(encoder.weights_hash, "encoder weights hash", allow_empty=True)
    if encoder.probe is not None and (len(encoder.probe) > encoder.dim or not all(math.isfinite(x) for x in encoder.probe)):
        raise ValueError(f"the encoder probe is not a list of at most {encoder.dim} finite numbers")
    text = None
    if d.get("text") is not None:
        if not isinstance(d["text"], dict):
            raise TypeError("'text' is not an object")
        text = TextSpec.from_json(d["text"])
        _text(text.family, "text family")
        _int(text.dim, "text dim", 1, MAX_DIM)
        _int(text.pooled_dim, "text pooled dim", 0, MAX_DIM)  # 0: a family without a pooled output
    vault_id = d.get("vault_id")
    if not legacy and not (isinstance(vault_id, str) and _VAULT_ID.match(vault_id)):
        raise ValueError(f"vault_id {vault_id!r} is not the hex id a writer records")
    index = d.get("index", "auto")
    if not isinstance(index, str):
        raise TypeError("'index' is not a string")
    check_index_spec(index, encoder.dim)
    times = [d["created"], d["updated"]]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        raise ValueError("created/updated are not times")
    return Manifest(
        encoder=encoder,
        category=_text(d["category"], "category"),
        segments=segments,
        text=text,
        deleted=deleted,
        deleted_count=deleted_count,
        index=index,
        generation=_int(d["generation"], "generation", 0, MAX_GENERATION),
        created=float(d["created"]),
        updated=float(d["updated"]),
        vault_id=vault_id if isinstance(vault_id, str) else os.urandom(8).hex(),
        tuned=tuned_from_json(d["tuned"]) if d.get("tuned") is not None else None,
        format_version=int(d.get("format_version", FORMAT_VERSION)),
    )


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{what} is {v!r}, not a whole number")
    if not lo <= v <= hi:
        raise ValueError(f"{what} {v} is outside {lo}..{hi}")
    return v


def _text(v: Any, what: str, allow_empty: bool = False) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} is {type(v).__name__}, not text")
    if len(v) > MAX_NAME or (not v and not allow_empty) or any(ord(c) < 32 for c in v):
        raise ValueError(f"{what} {v[:40]!r} is not a short single-line text")
    return v


def _segment_info(s: Any, pattern: re.Pattern[str]) -> SegmentInfo:
    if not isinstance(s, dict):
        raise TypeError(f"a segment record is {type(s).__name__}, not an object")
    unknown = set(s) - {f.name for f in fields(SegmentInfo)}
    if unknown:
        raise ValueError(f"a segment record has unknown fields {sorted(unknown)}")
    info = SegmentInfo(**s)
    if not isinstance(info.file, str) or not pattern.match(info.file):
        raise ValueError(f"segment file name {str(info.file)[:80]!r} is not one a Luna Vault writer makes "
                         "(names are plain files inside the vault folder)")
    _int(info.entries, f"{info.file}: entries", 0, 1 << 31)
    _int(info.prompts, f"{info.file}: prompts", 0, max(info.entries, 0))
    _int(info.bytes, f"{info.file}: bytes", 8, 1 << 40)
    _int(info.baked_tokens, f"{info.file}: baked_tokens", 0, 1 << 40)
    if not isinstance(info.sha256, str) or not _SHA256.match(info.sha256):
        raise ValueError(f"{info.file}: sha256 {str(info.sha256)[:80]!r} is not a SHA-256 hex digest")
    if not isinstance(info.thumbnails, bool):
        raise TypeError(f"{info.file}: thumbnails is not true/false")
    return info


# ---- index specs ------------------------------------------------------------------------------------
_INDEX_SPECS = (
    re.compile(r"^IVF(?P<nlist>\d{1,6})(?:_HNSW(?P<m>\d{1,3}))?,PQ(?P<pq>\d{1,5})x4fs$"),
    re.compile(r"^IVF(?P<nlist>\d{1,6})(?:_HNSW(?P<m>\d{1,3}))?,PQ(?P<pq>\d{1,5})(?:x(?P<bits>4|8))?$"),
    re.compile(r"^IVF(?P<nlist>\d{1,6})(?:_HNSW(?P<m>\d{1,3}))?,(?:Flat|SQ8|SQfp16)$"),
    re.compile(r"^HNSW(?P<m>\d{1,3})(?:,Flat)?$"),
)
INDEX_SPEC_HELP = ("'auto', 'Flat', 'IVF<lists>,PQ<m>x4fs', 'IVF<lists>,PQ<m>[x4|x8]', 'IVF<lists>,Flat|SQ8|SQfp16' "
                   "(optionally IVF<lists>_HNSW<M>) or 'HNSW<M>', with lists 1..65536, M 4..64 and m dividing the "
                   "embedding dim")


def check_index_spec(spec: str, dim: int | None = None) -> str:
    """`spec` if it is an index family this vault can use with bounded parameters; else VaultFormatError.

    The manifest's index string reaches FAISS's factory, so it is untrusted input: only these
    families, only sizes that fit in memory.
    """
    if spec in ("auto", "Flat"):
        return spec
    m = next((p.match(spec) for p in _INDEX_SPECS if p.match(spec)), None)
    why = None
    if m is None:
        why = "not a known index family"
    else:
        g = m.groupdict()
        if g.get("nlist") is not None and not 1 <= int(g["nlist"]) <= 65536:
            why = f"{g['nlist']} lists is outside 1..65536"
        elif g.get("m") is not None and not 4 <= int(g["m"]) <= 64:
            why = f"HNSW M {g['m']} is outside 4..64"
        elif g.get("pq") is not None and (int(g["pq"]) < 1 or (dim and (int(g["pq"]) > dim or dim % int(g["pq"])))):
            why = f"PQ{g['pq']} does not divide the {dim}-d embeddings"
    if why:
        raise VaultFormatError(f"index {spec[:60]!r} cannot be used ({why}); expected {INDEX_SPEC_HELP}")
    return spec


def vault_name(path: str | os.PathLike[str]) -> str:
    """A vault's name: its folder's name without the .vault suffix."""
    name = Path(path).name
    return name[: -len(VAULT_SUFFIX)] if name.endswith(VAULT_SUFFIX) else name
