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
import os
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from safetensors.numpy import save_file

from ..core.atomic import atomic_write, sha256_file
from ..core.errors import VaultCorruptError
from ..core.nofollow import NotAPlainFile, open_plain
from .entries import parse_metadata, parse_metadata_block
from .manifest import SegmentInfo

SEGMENT_KIND = "luna-vault-segment"
DELETED_KIND = "luna-vault-deleted"
MAX_HEADER_BYTES = 64 << 10  # ours hold a dozen tensors: a bigger header is not a segment, and costs time to parse
MAX_TENSORS = 32

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


@dataclass(frozen=True)
class Binding:
    """Where a segment belongs: its vault's id and the first entry and prompt id it holds.

    Written into every segment (safetensors metadata) and checked on open, so a manifest whose list
    was reordered, duplicated or filled with another vault's files is refused, not misread.
    """

    vault_id: str
    entry_base: int
    prompt_base: int

    def to_metadata(self) -> dict[str, str]:
        return {"vault_id": self.vault_id, "entry_base": str(self.entry_base), "prompt_base": str(self.prompt_base)}


def write_segment(folder: Path, name: str, data: SegmentData, binding: Binding) -> SegmentInfo:
    """Write a segment atomically (temp + fsync + rename) and return its manifest record."""
    path = Path(folder) / name
    tensors = data.tensors()
    meta = {"kind": SEGMENT_KIND, **binding.to_metadata()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return SegmentInfo(
        file=name,
        entries=len(data.embeddings),
        prompts=len(data.prompts),
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
        thumbnails=data.thumbnails is not None,
        baked_tokens=int(tensors["cond_tokens"].shape[0]) if "cond_tokens" in tensors else 0,
    )


def write_deleted(folder: Path, name: str, ids: np.ndarray, vault_id: str) -> SegmentInfo:
    """Write the tombstone file: the sorted ids of every deleted entry."""
    path = Path(folder) / name
    ids = np.ascontiguousarray(np.unique(ids), dtype=np.int64)
    meta = {"kind": DELETED_KIND, "vault_id": vault_id}
    atomic_write(path, lambda tmp: save_file({"ids": ids}, str(tmp), metadata=meta))
    return SegmentInfo(file=name, entries=len(ids), prompts=0, bytes=path.stat().st_size, sha256=sha256_file(path))


def map_safetensors(path: Path, expected_bytes: int, expected_kind: str
                    ) -> tuple[dict[str, np.ndarray], dict[str, str], tuple[int, int]]:
    """Memory-map every tensor of a safetensors file after checking its size and header: (tensors, metadata, the
    mapped file's (device, inode), so that a later read by name can tell it is still the same file).

    Nothing is read beyond the header: arrays are views on one read-only mapping. A file whose size
    differs from the manifest's record, or whose header is malformed, raises VaultCorruptError.
    """
    path = Path(path)
    try:
        f = open_plain(path)  # a link, pipe or device is refused before anything is opened or read
    except NotAPlainFile as e:
        raise VaultCorruptError(f"vault file {e.strerror}: a vault holds only plain files; restore the vault "
                                "from a good copy") from e
    except OSError as e:  # missing (or removed by a writer's cleanup while we open: Vault.open tries again)
        raise VaultCorruptError(f"vault file {path.name} listed in the manifest is missing from the vault folder") from e
    with f:
        st = os.fstat(f.fileno())
        size, identity = st.st_size, (st.st_dev, st.st_ino)
        if size != expected_bytes:
            raise VaultCorruptError(
                f"{path.name} is {size} bytes but the manifest records {expected_bytes}: the file is truncated or "
                "was replaced; restore the vault from a good copy"
            )
        head = f.read(8)
        if len(head) < 8:
            raise VaultCorruptError(f"{path.name} is too short to be a safetensors file")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(MAX_HEADER_BYTES, size - 8):
            raise VaultCorruptError(f"{path.name}: a header of {hlen} bytes is not a vault segment's "
                                    f"(at most {MAX_HEADER_BYTES}, within the file)")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise VaultCorruptError(f"{path.name}: unreadable safetensors header ({type(e).__name__})") from e
        if not isinstance(header, dict) or len(header) > MAX_TENSORS + 1:
            raise VaultCorruptError(f"{path.name}: the header is not a table of at most {MAX_TENSORS} tensors")
        meta = header.pop("__metadata__", {}) or {}
        if not isinstance(meta, dict) or meta.get("kind") != expected_kind:
            raise VaultCorruptError(f"{path.name} is not a {expected_kind} file (kind={meta.get('kind') if isinstance(meta, dict) else None!r})")
        data_start = 8 + hlen
        buf = np.zeros(0, np.uint8)
        if size > data_start:  # a plain read-only mapping of the file opened above: slicing it is as cheap as any ndarray
            buf = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise VaultCorruptError(f"{path.name}: bad header entry for {str(name)[:40]!r} ({type(e).__name__})") from e
        if len(shape) > 4 or any(not 0 <= d <= size for d in shape):
            raise VaultCorruptError(f"{path.name}: tensor {str(name)[:40]!r} has an impossible shape {shape[:6]}")
        count = 1
        for d in shape:
            count *= d
        if end - start != count * dtype.itemsize or start < 0 or data_start + end > size:
            raise VaultCorruptError(f"{path.name}: tensor {name!r} {shape} does not fit its byte range {start}..{end}")
        out[name] = buf[data_start + start : data_start + end].view(dtype).reshape(shape)
    return out, {str(k): str(v) for k, v in meta.items()}, identity


def prefetch(array: np.ndarray) -> None:
    """Ask the kernel to map a memory-mapped array's pages now (MADV_POPULATE_READ, else WILLNEED).

    Random-access searches then skip a page fault per row. Best effort: no-op where unsupported.
    """
    _advise(array, (22, getattr(mmap, "MADV_WILLNEED", None)))  # 22 = MADV_POPULATE_READ (Linux >= 5.14)


def read_rows_only(array: np.ndarray) -> None:
    """Tell the kernel a memory-mapped array is read a few rows at a time (MADV_RANDOM): a page fault reads that
    page, not the ~128 KB of read-ahead around it (measured at 10M entries: 9.3 GB of the vectors' pages resident
    after 2,000 queries, for the few hundred rows each query re-ranks). Best effort: no-op where unsupported."""
    _advise(array, (getattr(mmap, "MADV_RANDOM", None),))


def mapping_of(array: np.ndarray) -> tuple[mmap.mmap | None, int]:
    """(the mapping an array is a view on, None if it is not one; where the array starts in it)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap):
        return None, 0
    return base, array.__array_interface__["data"][0] - np.frombuffer(base, np.uint8).__array_interface__["data"][0]


def _advise(array: np.ndarray, advices: tuple[int | None, ...]) -> None:
    """madvise the pages of a memory-mapped array with the first of `advices` the system accepts."""
    base, start = mapping_of(array)
    if base is None or array.nbytes == 0:
        return
    page = mmap.PAGESIZE
    aligned = start - start % page
    for advice in advices:
        if advice is None:
            continue
        try:
            base.madvise(advice, aligned, start + array.nbytes - aligned)
            return
        except (OSError, ValueError, AttributeError):
            continue


def _check_offsets(name: str, offsets: np.ndarray, count: int, blob_len: int, file: str) -> None:
    if offsets.dtype != np.int64:
        raise VaultCorruptError(f"{file}: {name} are {offsets.dtype}, expected int64")
    if offsets.shape != (count + 1,) or (count >= 0 and len(offsets) and (offsets[0] != 0 or offsets[-1] != blob_len)):
        raise VaultCorruptError(f"{file}: {name} has shape {offsets.shape} / ends at {offsets[-1] if len(offsets) else None}, "
                                f"expected {count + 1} offsets ending at {blob_len}")
    if count and (np.diff(offsets) < 0).any():
        raise VaultCorruptError(f"{file}: {name} go backwards: the file is damaged")


class Segment:
    """A memory-mapped segment with its global entry and prompt ranges."""

    def __init__(self, folder: Path, info: SegmentInfo, dim: int, text_dims: tuple[int, int] | None,
                 entry_base: int, prompt_base: int, vault_id: str | None = None) -> None:
        self.info = info
        self._metadata_checked = self._metadata_one_line = False
        self.entry_base = entry_base
        self.prompt_base = prompt_base
        self.path = Path(folder) / info.file
        t, meta, self._identity = map_safetensors(self.path, info.bytes, SEGMENT_KIND)
        self._row_fd: int | None = None  # set by read_rows_from_file: rows are then read with pread, not mapped
        self._rows_start = 0  # where the embeddings start in the file (set with _row_fd)
        n, p, f = info.entries, info.prompts, info.file
        if vault_id is not None:  # bound to this vault, at this place in its list
            if meta.get("vault_id") != vault_id:
                raise VaultCorruptError(f"{f} belongs to another vault (its vault id is {meta.get('vault_id', 'missing')!r}, "
                                        f"this vault's is {vault_id!r}): the manifest names a file that is not this "
                                        "vault's; restore the vault from a good copy")
            if meta.get("entry_base") != str(entry_base) or meta.get("prompt_base") != str(prompt_base):
                raise VaultCorruptError(
                    f"{f} holds entries from {meta.get('entry_base')} and prompts from {meta.get('prompt_base')}, but the "
                    f"manifest lists it where entries start at {entry_base} and prompts at {prompt_base}: the segment "
                    "list was reordered or edited; restore the vault from a good copy")
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
        if self.prompt_ids.shape != (n,) or self.prompt_ids.dtype != np.int32:
            raise VaultCorruptError(f"{f}: prompt_ids shape {self.prompt_ids.shape}, expected ({n},) int32")
        if n and (int(self.prompt_ids.min()) < 0 or int(self.prompt_ids.max()) >= prompt_base + p):
            raise VaultCorruptError(f"{f}: prompt ids run outside 0..{prompt_base + p - 1} (the prompts stored so far)")
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
        if self.content_hashes is not None and self.content_hashes.shape != (n, 16):
            raise VaultCorruptError(f"{f}: content_hashes shape {self.content_hashes.shape}, expected ({n}, 16)")
        self.cond_offsets = self.cond_tokens = self.pooled = None
        if text_dims is not None and p:
            if "cond_tokens" not in t:
                raise VaultCorruptError(f"{f}: the vault stores baked conditioning but this segment has none")
            self.cond_offsets, self.cond_tokens, self.pooled = np.array(t["cond_offsets"]), t["cond_tokens"], t["pooled"]
            if self.cond_tokens.ndim != 2 or self.pooled.ndim != 2:
                raise VaultCorruptError(f"{f}: baked conditioning is not 2-d")
            _check_offsets("cond_offsets", self.cond_offsets, p, len(self.cond_tokens), f)
            if self.cond_tokens.shape[1:] != (text_dims[0],) or self.pooled.shape != (p, text_dims[1]):
                raise VaultCorruptError(f"{f}: baked conditioning {self.cond_tokens.shape}/{self.pooled.shape} "
                                        f"does not match the manifest's dims {text_dims}")

    @property
    def n(self) -> int:
        return self.info.entries

    @property
    def reads_from_file(self) -> bool:
        return self._row_fd is not None

    def read_rows_from_file(self) -> None:
        """Read this segment's rows with pread from now on (`rows`), not through the mapping.

        A mapped page read at random stays in the process's resident set, and the kernel maps its cached
        neighbours with it (fault-around): at 10M entries 5.0 GB of the vault's pages after 1,000 queries (8.4 GB
        resident in all), growing with every new query, and counted by the out-of-memory killer. pread copies the 2 KB
        row and maps nothing: 3.5 GB resident after the same queries, for ~0.6 ms more per query (482 rows: 2.79 ms
        against 2.17). For vaults too big to map ahead (index/core.py). Opens the file again now, by name, and
        refuses one that is no longer the mapped file (VaultCorruptError). Where the system has no pread (Windows),
        rows stay read through the mapping.
        """
        if self._row_fd is not None or not hasattr(os, "preadv"):
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise VaultCorruptError(f"{self.info.file} can no longer be opened ({e.strerror}): the vault folder changed "
                                    "after it was opened; open the vault again") from e
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._identity or st.st_size != self.info.bytes:
            os.close(fd)
            raise VaultCorruptError(f"{self.info.file} was replaced after this vault was opened: its rows would not be "
                                    "the ones the index was built on; open the vault again")
        self._row_fd, self._rows_start = fd, mapping_of(self.embeddings)[1]  # the mapping covers the file from byte 0
        weakref.finalize(self, os.close, fd)

    def rows(self, local: np.ndarray, out: np.ndarray, in_order: bool = False) -> np.ndarray:
        """The stored fp16 rows at the local indices `local` into `out` [len(local), D] (C-contiguous). `in_order`: the
        indices are sorted, so their ends bound them (a single query's gather: no pass over them for the check)."""
        lo, hi = (int(local[0]), int(local[-1])) if in_order or len(local) < 2 else (int(local.min()), int(local.max()))
        if len(local) and (lo < 0 or hi >= self.n):
            raise IndexError(f"rows {lo}..{hi} outside the segment's {self.n}")
        if self._row_fd is None:  # "clip": no bounds copy (checked above)
            np.take(self.embeddings, local, axis=0, out=out, mode="clip")
            return out
        row = self.embeddings.shape[1] * self.embeddings.itemsize
        view = memoryview(out).cast("B")
        for j, i in enumerate(local.tolist()):
            if os.preadv(self._row_fd, [view[j * row : (j + 1) * row]], self._rows_start + i * row) != row:
                raise VaultCorruptError(f"{self.info.file} ended before row {i}: the file was truncated after the "
                                        "vault was opened; restore it from a good copy")
        return out

    def metadata_bytes(self, local: int) -> bytes:
        return bytes(self.meta_blob[self.meta_offsets[local] : self.meta_offsets[local + 1]])

    def metadata(self, local: int) -> dict[str, Any]:
        """One entry's metadata, checked (one JSON object, UTF-8, finite numbers); VaultCorruptError if not."""
        try:
            return parse_metadata(self.metadata_bytes(local))
        except ValueError as e:
            raise self._bad(f"entry {self.entry_base + local}: {e}") from None

    def all_metadata(self) -> list[dict[str, Any]]:
        """Every entry's metadata, for filters. The first call checks each entry on its own (exactly one JSON
        object each, so no entry can shift the others); once checked, later calls parse the segment as one
        JSON document (the same objects, faster)."""
        if self.n == 0:
            return []
        blob = bytes(self.meta_blob)
        if not self._metadata_checked:
            try:
                out = parse_metadata_block(blob, self.meta_offsets)
            except ValueError as e:
                raise self._bad(str(e)) from None
            self._metadata_checked = True
            self._metadata_one_line = blob.count(b"\n") == self.n  # no entry holds a newline of its own
            return out
        if not self._metadata_one_line:
            return parse_metadata_block(blob, self.meta_offsets)
        return json.loads(b"[" + blob[:-1].replace(b"\n", b",") + b"]")

    def prompt(self, local: int) -> str:
        try:
            return bytes(self.prompt_blob[self.prompt_offsets[local] : self.prompt_offsets[local + 1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self._bad(f"prompt {self.prompt_base + local} is not UTF-8 text") from None

    def check_prompts(self) -> None:
        """VaultCorruptError unless every prompt is UTF-8 text on its own (one decode of the blob, and no prompt
        starting inside a character)."""
        blob = bytes(self.prompt_blob)
        try:
            blob.decode("utf-8")
        except UnicodeDecodeError as e:
            first = int(np.searchsorted(self.prompt_offsets, e.start, side="right")) - 1
            raise self._bad(f"prompt {self.prompt_base + first} is not UTF-8 text") from None
        starts = self.prompt_offsets[:-1][self.prompt_offsets[:-1] < len(blob)]
        if len(starts) and (np.frombuffer(blob, np.uint8)[starts] & 0xC0 == 0x80).any():
            raise self._bad("a prompt starts inside a character (the prompt boundaries are damaged)")

    def _bad(self, what: str) -> VaultCorruptError:
        return VaultCorruptError(f"{self.info.file}: {what}; the vault is damaged or was edited: run `luna-vault "
                                 "verify` and restore it from a good copy")

    def thumbnail(self, local: int) -> bytes | None:
        if self.thumb_offsets is None:
            return None
        data = bytes(self.thumb_blob[self.thumb_offsets[local] : self.thumb_offsets[local + 1]])
        return data or None

    def baked(self, local_prompt: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.cond_tokens is not None and self.cond_offsets is not None and self.pooled is not None
        a, b = self.cond_offsets[local_prompt], self.cond_offsets[local_prompt + 1]
        return self.cond_tokens[a:b], self.pooled[local_prompt]


def read_deleted(folder: Path, info: SegmentInfo, vault_id: str | None = None) -> np.ndarray:
    t, meta, _ = map_safetensors(Path(folder) / info.file, info.bytes, DELETED_KIND)
    if vault_id is not None and meta.get("vault_id") != vault_id:
        raise VaultCorruptError(f"{info.file} is another vault's deletion list; restore the vault from a good copy")
    if "ids" not in t or t["ids"].shape != (info.entries,) or t["ids"].dtype != np.int64:
        raise VaultCorruptError(f"{info.file}: expected {info.entries} deleted ids")
    ids = np.array(t["ids"])
    if len(ids) > 1 and (np.diff(ids) <= 0).any():
        raise VaultCorruptError(f"{info.file}: the deleted ids are not sorted and unique")
    return ids


def concat_segments(parts: Sequence["Segment"]) -> SegmentData:
    """One segment's content from consecutive segments (entry and prompt order kept)."""
    text = any(p.cond_tokens is not None for p in parts) or (parts and parts[0].pooled is not None)
    thumbs = any(p.thumb_offsets is not None for p in parts)
    hashes = any(p.content_hashes is not None for p in parts)
    data = SegmentData(
        embeddings=np.concatenate([np.asarray(p.embeddings) for p in parts]),
        prompt_ids=np.concatenate([np.asarray(p.prompt_ids) for p in parts]).astype(np.int32),
        metadata=[p.metadata_bytes(i) for p in parts for i in range(p.n)],
        prompts=[p.prompt(i) for p in parts for i in range(p.info.prompts)],
        thumbnails=[p.thumbnail(i) or b"" for p in parts for i in range(p.n)] if thumbs else None,
        content_hashes=np.concatenate([np.asarray(p.content_hashes) if p.content_hashes is not None
                                       else np.zeros((p.n, 16), np.uint8) for p in parts]) if hashes else None,
    )
    if text:
        baked = [p.baked(i) for p in parts if p.cond_tokens is not None for i in range(p.info.prompts)]
        dim = next(p.cond_tokens.shape[1] for p in parts if p.cond_tokens is not None) if baked else 0
        pooled_dim = next(p.pooled.shape[1] for p in parts if p.pooled is not None) if baked else 0
        data.cond_tokens = [np.asarray(c) for c, _ in baked] or [np.zeros((0, dim), np.float16)]
        data.pooled = np.stack([np.asarray(pl) for _, pl in baked]) if baked else np.zeros((0, pooled_dim), np.float16)
    return data
