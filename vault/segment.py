"""Segment files: one immutable safetensors file per write, memory-mapped when read.

A segment holds the entries one append added (fp16 embeddings, prompt ids, metadata JSON,
optional thumbnails and content hashes) and the prompts that were new in it (text, and baked
conditioning when the vault has it). Variable-length items (JSON, prompt text, images, token
sequences) are stored as one flat blob plus an offsets array, so nothing needs pickle and every
column can be memory-mapped. Files are plain safetensors: any safetensors reader can open them.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from safetensors.numpy import save_file

from .atomic import atomic_write, sha256_file
from .errors import VaultCorruptError
from .manifest import SegmentInfo

SEGMENT_KIND = "luna-vault-segment"
DELETED_KIND = "luna-vault-deleted"
MAX_HEADER_BYTES = 100 << 20

_DTYPES = {"F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def pack_blobs(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate byte strings into (offsets [n+1] int64, blob uint8)."""
    lengths = np.fromiter((len(b) for b in items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    blob = np.frombuffer(b"".join(items), dtype=np.uint8).copy() if items else np.zeros(0, np.uint8)
    return offsets, blob


@dataclass
class SegmentData:
    """In-memory content of a segment about to be written."""

    embeddings: np.ndarray  # [n, D] float16, L2-normalised
    prompt_ids: np.ndarray  # [n] int32, global prompt ids
    metadata: list[bytes]  # n JSON objects (utf-8)
    prompts: list[str]  # the prompts first seen in this segment
    thumbnails: list[bytes] | None = None  # n images (b"" when an entry has none)
    content_hashes: np.ndarray | None = None  # [n, 16] uint8
    cond_tokens: list[np.ndarray] | None = None  # per new prompt [T_i, Dt] float16
    pooled: np.ndarray | None = None  # [p, Pd] float16

    def tensors(self) -> dict[str, np.ndarray]:
        n = len(self.embeddings)
        t: dict[str, np.ndarray] = {
            "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float16),
            "prompt_ids": np.ascontiguousarray(self.prompt_ids, dtype=np.int32),
        }
        t["meta_offsets"], t["meta_blob"] = pack_blobs(self.metadata)
        t["prompt_offsets"], t["prompt_blob"] = pack_blobs([p.encode("utf-8") for p in self.prompts])
        if self.thumbnails is not None:
            t["thumb_offsets"], t["thumb_blob"] = pack_blobs(self.thumbnails)
        if self.content_hashes is not None:
            t["content_hashes"] = np.ascontiguousarray(self.content_hashes, dtype=np.uint8).reshape(n, 16)
        if self.cond_tokens is not None:
            lengths = np.array([len(c) for c in self.cond_tokens], dtype=np.int64)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            t["cond_offsets"] = offsets
            t["cond_tokens"] = np.ascontiguousarray(np.concatenate(self.cond_tokens), dtype=np.float16)
            t["pooled"] = np.ascontiguousarray(self.pooled, dtype=np.float16)
        return t


def write_segment(folder: Path, name: str, data: SegmentData) -> SegmentInfo:
    """Write a segment atomically (temp + fsync + rename) and return its manifest record."""
    path = Path(folder) / name
    tensors = data.tensors()
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"kind": SEGMENT_KIND}))
    return SegmentInfo(
        file=name,
        entries=len(data.embeddings),
        prompts=len(data.prompts),
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
        thumbnails=data.thumbnails is not None,
        baked_tokens=int(tensors["cond_tokens"].shape[0]) if "cond_tokens" in tensors else 0,
    )


def write_deleted(folder: Path, name: str, ids: np.ndarray) -> SegmentInfo:
    """Write the tombstone file: the sorted ids of every deleted entry."""
    path = Path(folder) / name
    ids = np.ascontiguousarray(np.unique(ids), dtype=np.int64)
    atomic_write(path, lambda tmp: save_file({"ids": ids}, str(tmp), metadata={"kind": DELETED_KIND}))
    return SegmentInfo(file=name, entries=len(ids), prompts=0, bytes=path.stat().st_size, sha256=sha256_file(path))


def map_safetensors(path: Path, expected_bytes: int, expected_kind: str) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file after checking its size and header.

    Nothing is read beyond the header: arrays are views on one read-only mapping. A file whose size
    differs from the manifest's record, or whose header is malformed, raises VaultCorruptError.
    """
    path = Path(path)
    if not path.is_file():
        raise VaultCorruptError(f"vault file {path.name} listed in the manifest is missing from {path.parent}")
    size = path.stat().st_size
    if size != expected_bytes:
        raise VaultCorruptError(
            f"{path.name} is {size} bytes but the manifest records {expected_bytes}: the file is truncated or "
            "was replaced; restore the vault from a good copy"
        )
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise VaultCorruptError(f"{path.name} is too short to be a safetensors file")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(MAX_HEADER_BYTES, size - 8):
            raise VaultCorruptError(f"{path.name}: header length {hlen} is impossible for a {size}-byte file")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VaultCorruptError(f"{path.name}: unreadable safetensors header ({e})") from e
    meta = header.pop("__metadata__", {}) or {}
    if meta.get("kind") != expected_kind:
        raise VaultCorruptError(f"{path.name} is not a {expected_kind} file (kind={meta.get('kind')!r})")
    data_start = 8 + hlen
    buf = np.zeros(0, np.uint8)
    if size > data_start:
        with open(path, "rb") as f:  # a plain read-only mapping: slicing it is as cheap as any ndarray
            buf = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise VaultCorruptError(f"{path.name}: bad header entry for {name!r} ({e!r})") from e
        count = int(np.prod(shape, dtype=np.int64))
        if end - start != count * dtype.itemsize or start < 0 or data_start + end > size:
            raise VaultCorruptError(f"{path.name}: tensor {name!r} {shape} does not fit its byte range {start}..{end}")
        out[name] = buf[data_start + start : data_start + end].view(dtype).reshape(shape)
    return out


def prefetch(array: np.ndarray) -> None:
    """Ask the kernel to map a memory-mapped array's pages now (MADV_POPULATE_READ, else WILLNEED).

    Random-access searches then skip a page fault per row. Best effort: no-op where unsupported.
    """
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap) or array.nbytes == 0:
        return
    start = array.__array_interface__["data"][0] - np.frombuffer(base, np.uint8).__array_interface__["data"][0]
    page = mmap.PAGESIZE
    aligned = start - start % page
    for advice in (22, getattr(mmap, "MADV_WILLNEED", None)):  # 22 = MADV_POPULATE_READ (Linux >= 5.14)
        if advice is None:
            continue
        try:
            base.madvise(advice, aligned, start + array.nbytes - aligned)
            return
        except (OSError, ValueError, AttributeError):
            continue


def _check_offsets(name: str, offsets: np.ndarray, count: int, blob_len: int, file: str) -> None:
    if offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != blob_len:
        raise VaultCorruptError(f"{file}: {name} has shape {offsets.shape} / ends at {offsets[-1] if len(offsets) else None}, "
                                f"expected {count + 1} offsets ending at {blob_len}")


class Segment:
    """A memory-mapped segment with its global entry and prompt ranges."""

    def __init__(self, folder: Path, info: SegmentInfo, dim: int, text_dims: tuple[int, int] | None,
                 entry_base: int, prompt_base: int) -> None:
        self.info = info
        self.entry_base = entry_base
        self.prompt_base = prompt_base
        t = map_safetensors(Path(folder) / info.file, info.bytes, SEGMENT_KIND)
        n, p, f = info.entries, info.prompts, info.file
        try:
            self.embeddings = t["embeddings"]
            self.prompt_ids = t["prompt_ids"]
            self.meta_offsets, self.meta_blob = t["meta_offsets"], t["meta_blob"]
            self.prompt_offsets, self.prompt_blob = t["prompt_offsets"], t["prompt_blob"]
        except KeyError as e:
            raise VaultCorruptError(f"{f}: required tensor {e} is missing") from e
        if self.embeddings.shape != (n, dim) or self.embeddings.dtype != np.float16:
            raise VaultCorruptError(f"{f}: embeddings are {self.embeddings.shape} {self.embeddings.dtype}, "
                                    f"the manifest says ({n}, {dim}) float16")
        if self.prompt_ids.shape != (n,):
            raise VaultCorruptError(f"{f}: prompt_ids shape {self.prompt_ids.shape}, expected ({n},)")
        # offsets are small; read them now so later slicing cannot run off the blob
        self.meta_offsets = np.array(self.meta_offsets)
        self.prompt_offsets = np.array(self.prompt_offsets)
        _check_offsets("meta_offsets", self.meta_offsets, n, len(self.meta_blob), f)
        _check_offsets("prompt_offsets", self.prompt_offsets, p, len(self.prompt_blob), f)
        self.thumb_offsets = self.thumb_blob = None
        if "thumb_offsets" in t:
            self.thumb_offsets, self.thumb_blob = np.array(t["thumb_offsets"]), t["thumb_blob"]
            _check_offsets("thumb_offsets", self.thumb_offsets, n, len(self.thumb_blob), f)
        self.content_hashes = t.get("content_hashes")
        self.cond_offsets = self.cond_tokens = self.pooled = None
        if text_dims is not None and p:
            if "cond_tokens" not in t:
                raise VaultCorruptError(f"{f}: the vault stores baked conditioning but this segment has none")
            self.cond_offsets, self.cond_tokens, self.pooled = np.array(t["cond_offsets"]), t["cond_tokens"], t["pooled"]
            _check_offsets("cond_offsets", self.cond_offsets, p, len(self.cond_tokens), f)
            if self.cond_tokens.shape[1:] != (text_dims[0],) or self.pooled.shape != (p, text_dims[1]):
                raise VaultCorruptError(f"{f}: baked conditioning {self.cond_tokens.shape}/{self.pooled.shape} "
                                        f"does not match the manifest's dims {text_dims}")

    @property
    def n(self) -> int:
        return self.info.entries

    def metadata_bytes(self, local: int) -> bytes:
        return bytes(self.meta_blob[self.meta_offsets[local] : self.meta_offsets[local + 1]])

    def all_metadata(self) -> list[dict[str, Any]]:
        """Parse every entry's metadata at once (one JSON document), for filters."""
        if self.n == 0:
            return []
        body = bytes(self.meta_blob).rstrip(b"\n").replace(b"\n", b",")  # one JSON object per line
        return json.loads(b"[" + body + b"]")

    def prompt(self, local: int) -> str:
        return bytes(self.prompt_blob[self.prompt_offsets[local] : self.prompt_offsets[local + 1]]).decode("utf-8")

    def thumbnail(self, local: int) -> bytes | None:
        if self.thumb_offsets is None:
            return None
        data = bytes(self.thumb_blob[self.thumb_offsets[local] : self.thumb_offsets[local + 1]])
        return data or None

    def baked(self, local_prompt: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.cond_tokens is not None and self.cond_offsets is not None and self.pooled is not None
        a, b = self.cond_offsets[local_prompt], self.cond_offsets[local_prompt + 1]
        return self.cond_tokens[a:b], self.pooled[local_prompt]


def read_deleted(folder: Path, info: SegmentInfo) -> np.ndarray:
    t = map_safetensors(Path(folder) / info.file, info.bytes, DELETED_KIND)
    if "ids" not in t or t["ids"].shape != (info.entries,):
        raise VaultCorruptError(f"{info.file}: expected {info.entries} deleted ids")
    return np.array(t["ids"])
