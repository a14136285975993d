"""Open, read and write vaults: the reader (Vault) and the transactional writer (VaultWriter).

On disk a vault is a folder `NAME.vault/`: `manifest.json` plus immutable segment files. A write
puts new segment files next to the old ones, then atomically replaces the manifest; readers only
ever see files a committed manifest lists. So a crash leaves the old vault or the new one.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..core.atomic import fsync_dir, writer_lock
from ..core.encoder import EncoderFingerprint
from ..core.errors import (
    DimensionError,
    VaultCorruptError,
    VaultError,
    VaultExistsError,
)
from ..core.families import TextSpec
from ..core.nofollow import sha256_plain
from .entries import (
    NORM_TOLERANCE,
    AddReport,
    Skipped,
    check_unit_block,
    clean_metadata,
    encode_metadata,
    normalise_embeddings,
)
from .filters import Filter, parse_filter
from .index import VaultIndex
from .manifest import (
    MANIFEST,
    MAX_GENERATION,
    VAULT_SUFFIX,
    Manifest,
    SegmentInfo,
    TunedDefaults,
    check_index_spec,
    data_file_name,
    file_generation,
    read_manifest,
    tuned_from_json,
    vault_name,
    write_manifest,
)
from .segment import Binding, Segment, SegmentData, concat_segments, prefetch, read_deleted, write_deleted, write_segment

log = logging.getLogger(__name__)

MAX_SEGMENT_ENTRIES = 1 << 18
OPEN_ATTEMPTS = 5
NORM_CHECK_MAX = 20_000  # vaults up to this size have every norm checked on open (larger: at index build)
MERGE_AT = 64  # a commit that leaves more segments merges the small ones at the end into one
SMALL_SEGMENT = 16_384
# our segment files, our temp files, and the temp files safetensors' writer makes beside its target
_OWN_FILE = re.compile(r"^(seg-|del-)[0-9a-f-]+\.safetensors$|^\..*\.tmp-|^\.tmp[A-Za-z0-9]{6}$")

TextEncodeFn = Callable[[str], "tuple[Any, Any]"]  # prompt -> (cond [T, D] or [1, T, D], pooled [P] or [1, P])
ProgressFn = Callable[[int, int], None]  # (done, total)


class Vault:
    """A read-only snapshot of a vault: memory-mapped segments and the manifest they were opened with."""

    def __init__(self, path: Path, manifest: Manifest, segments: list[Segment], deleted: np.ndarray) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.segments = segments
        self.deleted = deleted
        # [segments + 1]: each segment's first entry id, then n_entries (segment s holds ids entry_bases[s:s+2])
        self.entry_bases = np.array([s.entry_base for s in segments] + [manifest.entries], dtype=np.int64)
        self.n_entries = manifest.entries  # entries ever written, deleted ones included (ids 0..n_entries-1)
        self.n_prompts = manifest.prompts
        self.name = vault_name(self.path)
        self._live = manifest.live
        self._entry_base_list = [s.entry_base for s in segments]
        self._prompt_base_list = [s.prompt_base for s in segments]
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._index: VaultIndex | None = None
        self._lock = threading.Lock()

    def search_index(self, spec: str | None = None, **kwargs: Any) -> VaultIndex:
        """This snapshot's search index: built (or loaded from this machine's cache) on first use, then kept
        for every query of the snapshot; a different `spec` replaces it."""
        with self._lock:
            index = self._index
        if index is None or (spec and index.requested != spec):
            index = VaultIndex(self, spec=spec, **kwargs)
            with self._lock:
                self._index = index
        return index

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "Vault":
        """Open a vault folder: read the manifest, check every file against it, memory-map the segments.

        Nothing is parsed beyond headers (and, for small vaults, the embeddings' norms), so opening is
        fast at any size. Raises VaultNotFoundError, VaultFormatError or VaultCorruptError with what is
        wrong and what to do. A writer replacing the vault while it opens makes it start again.
        """
        path = Path(path)
        for attempt in range(OPEN_ATTEMPTS):
            manifest = read_manifest(path)
            try:
                return cls._open(path, manifest, manifest.vault_id)
            except VaultCorruptError:
                if attempt + 1 < OPEN_ATTEMPTS and _generation(path) != (manifest.vault_id, manifest.generation):
                    continue  # a commit (or an install) replaced the manifest and removed files it no longer lists
                raise
        raise AssertionError("unreachable")

    @classmethod
    def _open(cls, path: Path, manifest: Manifest, vault_id: str | None) -> "Vault":
        text_dims = (manifest.text.dim, manifest.text.pooled_dim) if manifest.text else None
        segments, entry_base, prompt_base = [], 0, 0
        try:
            for info in manifest.segments:
                segments.append(Segment(path, info, manifest.encoder.dim, text_dims, entry_base, prompt_base, vault_id))
                entry_base += info.entries
                prompt_base += info.prompts
        except OSError as e:  # e.g. too many open files: one mapping per segment
            raise VaultCorruptError(f"{path}: cannot map its {len(manifest.segments)} segment files ({e.strerror or e}); "
                                    "compact the vault (luna-vault rebuild --compact) or raise the open-file limit") from e
        deleted = (read_deleted(path, manifest.deleted, vault_id) if manifest.deleted else np.zeros(0, np.int64))
        if len(deleted) != manifest.deleted_count or (len(deleted) and (deleted.min() < 0 or deleted.max() >= entry_base)):
            raise VaultCorruptError(f"{path}: the deleted-entry list does not match the manifest")
        if vault_id is not None:
            _check_no_dropped_deletions(path, manifest)
        vault = cls(path, manifest, segments, deleted)
        if vault.n_entries <= NORM_CHECK_MAX:
            vault.check_norms()
        return vault

    def check_norms(self, start: int = 0, stop: int | None = None) -> None:
        """VaultCorruptError unless the stored embeddings of entries start..stop are unit length (as written).

        A scaled or bit-flipped vector would otherwise win every query with an impossible similarity.
        """
        stop = self.n_entries if stop is None else stop
        for first, block in self.iter_embedding_blocks(start=start):
            if first >= stop:
                break
            check_unit_block(self.name, block, first)

    # ---- basic properties ----------------------------------------------------------------------
    @property
    def encoder(self) -> EncoderFingerprint:
        return self.manifest.encoder

    @property
    def dim(self) -> int:
        return self.manifest.encoder.dim

    @property
    def category(self) -> str:
        return self.manifest.category

    @property
    def text(self) -> TextSpec | None:
        return self.manifest.text

    def __len__(self) -> int:
        """Live entries (not deleted)."""
        return self._live

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r}, {len(self)} entries, {self.n_prompts} prompts, {self.encoder.name} {self.dim}-d)"

    # ---- row access ----------------------------------------------------------------------------
    def embeddings(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored fp16 embeddings of the given entries, in order."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) <= 64 and not self.rows_from_file:  # a query's candidates: plain Python beats numpy's overhead here
            out = np.empty((len(ids), self.dim), np.float16)
            for j, i in enumerate(ids.tolist()):
                seg, local = self._locate_one(i)
                out[j] = seg.embeddings[local]
            return out
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_entries):
            raise IndexError(f"entry id out of range 0..{self.n_entries - 1}")
        out = np.empty((len(ids), self.dim), np.float16)
        if len(self.segments) == 1:
            return self.segments[0].rows(ids, out)
        seg = np.searchsorted(self.entry_bases, ids, side="right") - 1
        for s, segment in enumerate(self.segments):
            sel = np.flatnonzero(seg == s)
            if len(sel):
                out[sel] = segment.rows(ids[sel] - segment.entry_base, np.empty((len(sel), self.dim), np.float16))
        return out

    @property
    def rows_from_file(self) -> bool:
        """Whether some segment's rows are read with pread (Segment.read_rows_from_file): a vault too big to map."""
        return any(seg.reads_from_file for seg in self.segments)

    def iter_embedding_blocks(self, block: int = 65536, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_id, fp16 block) over all entries in id order, deleted ones included; from the block holding
        entry `start` on (the blocks before it are never read).

        Each block's pages are read in one request before it is yielded (`prefetch`): a scan stays one large read
        per block where the vectors are mapped for random access (`read_rows_only`, on vaults too big to map ahead).
        """
        for s in self.segments:
            for a in range(0, s.n, block):
                if s.entry_base + min(a + block, s.n) <= start:
                    continue
                part = s.embeddings[a : a + block]
                prefetch(part)
                yield s.entry_base + a, part

    def _locate_one(self, entry_id: int) -> tuple[Segment, int]:
        entry_id = int(entry_id)
        if not 0 <= entry_id < self.n_entries:
            raise IndexError(f"entry id {entry_id} out of range 0..{self.n_entries - 1}")
        s = bisect.bisect_right(self._entry_base_list, entry_id) - 1
        return self.segments[s], entry_id - self._entry_base_list[s]

    def prompt_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty(len(ids), np.int64)
        for j, i in enumerate(ids):
            seg, local = self._locate_one(i)
            out[j] = seg.prompt_ids[local]
        return out

    def all_prompt_ids(self) -> np.ndarray:
        """[n_entries] int64: every entry's prompt id, in entry-id order (deleted entries included)."""
        if not self.segments:
            return np.zeros(0, np.int64)
        return np.concatenate([np.asarray(s.prompt_ids, dtype=np.int64) for s in self.segments])

    def _prompt_segment(self, pid: int) -> tuple[Segment, int]:
        if not 0 <= pid < self.n_prompts:
            raise IndexError(f"prompt id {pid} out of range 0..{self.n_prompts - 1}")
        s = bisect.bisect_right(self._prompt_base_list, pid) - 1
        return self.segments[s], pid - self._prompt_base_list[s]

    def prompt(self, pid: int) -> str:
        seg, local = self._prompt_segment(int(pid))
        return seg.prompt(local)

    def prompts(self) -> Iterator[str]:
        """Every unique prompt, in prompt-id order."""
        for s in self.segments:
            for i in range(s.info.prompts):
                yield s.prompt(i)

    def metadata(self, entry_id: int) -> dict[str, Any]:
        """An entry's metadata (checked: VaultCorruptError when the stored JSON is not one plain object)."""
        seg, local = self._locate_one(entry_id)
        return seg.metadata(local)

    def thumbnail(self, entry_id: int) -> bytes | None:
        """The entry's encoded preview image (WebP/JPEG bytes), or None if it was stored without one."""
        seg, local = self._locate_one(entry_id)
        return seg.thumbnail(local)

    @property
    def has_thumbnails(self) -> bool:
        return any(s.thumb_offsets is not None for s in self.segments)

    def baked(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        """Baked (cond [T, D], pooled [P]) fp16 arrays of a prompt; VaultError if none were stored."""
        if self.text is None:
            raise VaultError(
                f"vault {self.name} stores no baked conditioning (it was built in text mode); connect a CLIP so "
                "the retrieved prompts are encoded, or rebuild the vault with --bake"
            )
        seg, local = self._prompt_segment(int(pid))
        return seg.baked(local)

    def content_hashes(self) -> np.ndarray:
        """[n_entries, 16] uint8 content hashes (zeros where none was stored)."""
        out = np.zeros((self.n_entries, 16), np.uint8)
        for s in self.segments:
            if s.content_hashes is not None:
                out[s.entry_base : s.entry_base + s.n] = s.content_hashes
        return out

    # ---- masks ---------------------------------------------------------------------------------
    def live_mask(self) -> np.ndarray:
        mask = np.ones(self.n_entries, dtype=bool)
        mask[self.deleted] = False
        return mask

    def iter_metadata(self) -> Iterator[dict[str, Any]]:
        for s in self.segments:
            yield from s.all_metadata()

    def filter_mask(self, spec: "str | Mapping[str, Any] | Filter | None") -> np.ndarray:
        """Boolean mask over entry ids of live entries that pass the filter (cached per filter)."""
        flt = parse_filter(spec)
        key = str(flt)
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = self.live_mask()
        if flt:
            mask &= np.fromiter((flt.matches(m) for m in self.iter_metadata()), dtype=bool, count=self.n_entries)
        mask.setflags(write=False)
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > 8:
                self._masks.popitem(last=False)
        return mask

    # ---- reporting -----------------------------------------------------------------------------
    def disk_bytes(self) -> int:
        return sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(self.path) if e.is_file(follow_symlinks=False))

    def info(self) -> dict[str, Any]:
        """What a user wants to know about a vault, as JSON-ready data."""
        m = self.manifest
        thumbs = sum(len(s.thumb_blob) for s in self.segments if s.thumb_blob is not None)
        baked = sum(s.cond_tokens.nbytes + s.pooled.nbytes for s in self.segments if s.cond_tokens is not None)
        return {
            "path": str(self.path),
            "name": self.name,
            "category": m.category,
            "format_version": m.format_version,
            "encoder": {"name": m.encoder.name, "dim": m.encoder.dim, "weights_hash": m.encoder.weights_hash},
            "text": None if m.text is None else {"family": m.text.family, "dim": m.text.dim, "pooled_dim": m.text.pooled_dim},
            "mode": "baked" if m.text else "text",
            "entries": len(self),
            "entries_written": m.entries,
            "deleted": m.deleted_count,
            "prompts": m.prompts,
            "segments": len(m.segments),
            "thumbnails": self.has_thumbnails,
            "bytes": {"total": self.disk_bytes(), "thumbnails": thumbs, "baked": baked},
            "index": m.index,
            "tuned": asdict(m.tuned) if m.tuned else None,
            "generation": m.generation,
            "created": m.created,
            "updated": m.updated,
        }

    def verify(self, progress: ProgressFn | None = None, checksums: bool = True) -> list[str]:
        """Full check: checksums (unless already checked), dims, counts, prompt ids, metadata JSON.
        Returns problems (empty = good)."""
        problems: list[str] = []
        files = list(self.manifest.segments) + ([self.manifest.deleted] if self.manifest.deleted else [])
        if not checksums:
            files = []
        total = sum(f.bytes for f in files)
        done = 0
        for f in files:
            if sha256_plain(self.path / f.file) != f.sha256:
                problems.append(f"{f.file}: checksum differs from the manifest (file damaged or altered)")
            done += f.bytes
            if progress:
                progress(done, total)
        for s in self.segments:
            pids = np.asarray(s.prompt_ids)
            if len(pids) and (pids.min() < 0 or pids.max() >= self.n_prompts):
                problems.append(f"{s.info.file}: prompt ids outside 0..{self.n_prompts - 1}")
            norms = np.linalg.norm(np.asarray(s.embeddings, dtype=np.float32), axis=1)
            bad = int((~(np.abs(norms - 1.0) <= NORM_TOLERANCE)).sum())
            if bad:
                problems.append(f"{s.info.file}: {bad} embeddings are not unit length (within {NORM_TOLERANCE:g})")
            for check in (s.all_metadata, s.check_prompts):  # what every reader checks, all at once
                try:
                    check()
                except VaultCorruptError as e:
                    problems.append(str(e).split("; the vault is damaged")[0])
        return problems

    # ---- search (implemented in index.py / query.py) -------------------------------------------
    def search(self, queries: Any, k: int = 5, filter: Any = None, encoder: EncoderFingerprint | None = None) -> Any:
        """Nearest entries for a batch of embeddings; see vault.query.search."""
        from .query import search

        return search(self, queries, k=k, filter=filter, encoder=encoder)


class VaultWriter:
    """One write transaction on a vault: add entries, delete entries, then commit (or abort).

    Holds the vault's writer lock from start to commit. New data goes into new segment files;
    `commit()` publishes them by replacing the manifest atomically. Use as a context manager:
    a clean exit commits, an exception aborts and removes the new files.
    """

    def __init__(self, path: Path, base: Manifest, replace_existing: bool, lock: Any) -> None:
        self.path = path
        self.base = base
        self.replace_existing = replace_existing
        self._lock_cm = lock
        self._new: list[SegmentInfo] = []
        self._prompt_table: dict[str, int] | None = None
        self._n_prompts = 0 if replace_existing else base.prompts
        self._n_entries = 0 if replace_existing else base.entries
        self._deleted: set[int] | None = None
        self._deleted_changed = False
        self._index_spec: str | None = None
        self._tuned: TunedDefaults | None = None
        self._closed = False
        self.report = AddReport()

    # ---- starting ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], encoder: EncoderFingerprint, category: str,
               text: TextSpec | None = None, overwrite: bool = False, index: str = "auto") -> "VaultWriter":
        """Start a transaction that creates a new vault (or replaces one, with overwrite=True)."""
        path = Path(path)
        if encoder.dim <= 0:
            raise DimensionError(f"encoder dim must be positive, got {encoder.dim}")
        check_index_spec(index, encoder.dim)
        check_new_vault_folder(path, overwrite)
        path.mkdir(parents=True, exist_ok=True)
        lock = writer_lock(path)
        lock.__enter__()
        try:
            exists = (path / MANIFEST).exists()
            if exists and not overwrite:
                raise VaultExistsError(f"a vault already exists at {path}; append to it, or replace it (--overwrite on the command line, mode overwrite in the Builder node)")
            # keep the generation counter moving so file names never repeat (even over a vault that no longer reads)
            generation = max((g for e in os.scandir(path) if (g := file_generation(e.name)) is not None), default=0)
            generation = min(generation, MAX_GENERATION - 1)
            base = Manifest(encoder=encoder, category=category, text=text, index=index, generation=generation)
            writer = cls(path, base, replace_existing=True, lock=lock)
            writer._cleanup_orphans(keep=None)
            return writer
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], replace_all: bool = False) -> "VaultWriter":
        """Start a transaction on an existing vault (append, delete).

        With replace_all=True the commit replaces every entry with what this transaction adds (compact).
        """
        path = Path(path)
        if not (path / MANIFEST).exists():
            read_manifest(path)  # raises the right "not a vault" error
        lock = writer_lock(path)
        lock.__enter__()
        try:
            base = read_manifest(path)
            if base.generation >= MAX_GENERATION:
                raise VaultError(f"vault {path.name} has been committed {base.generation:,} times, the most a vault "
                                 "records; copy its entries into a new vault (luna-vault merge NEW.vault "
                                 f"{path}) and write to that")
            writer = cls(path, base, replace_existing=replace_all, lock=lock)
            writer._cleanup_orphans(keep=base)
            return writer
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    def __enter__(self) -> "VaultWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def encoder(self) -> EncoderFingerprint:
        return self.base.encoder

    @property
    def text(self) -> TextSpec | None:
        return self.base.text

    def _cleanup_orphans(self, keep: Manifest | None) -> None:
        cleanup_orphans(self.path, keep)

    def _load_prompt_table(self) -> dict[str, int]:
        if self._prompt_table is None:
            self._prompt_table = {}
            if not self.replace_existing and self.base.segments:
                vault = Vault.open(self.path)
                self._prompt_table = {p: i for i, p in enumerate(vault.prompts())}
        return self._prompt_table

    def _segment_name(self, kind: str) -> str:
        return data_file_name(kind, self.base.generation + 1, len(self._new))

    def _check_open(self) -> None:
        if self._closed:
            raise VaultError("this vault transaction is already committed or aborted; start a new one")

    # ---- writing -------------------------------------------------------------------------------
    def add(self, embeddings: Any, prompts: Sequence[Any], metadata: Sequence[Mapping[str, Any] | None] | None = None,
            thumbnails: Sequence[bytes | None] | None = None, content_hashes: Sequence[bytes | None] | None = None,
            encode_text: TextEncodeFn | None = None) -> AddReport:
        """Add a batch of entries: embeddings [n, D], one prompt per entry, optional metadata/thumbnails.

        Items with a missing prompt, non-finite or zero embedding, or unusable metadata are skipped
        and listed in the returned report; the rest are written. A baked vault needs `encode_text`
        to produce conditioning for prompts it has not seen.
        """
        self._check_open()
        if hasattr(embeddings, "detach"):
            if not embeddings.is_floating_point():
                raise DimensionError(f"embeddings are {embeddings.dtype}; expected floating-point image embeddings")
            emb = embeddings.detach().cpu().float().numpy()
        else:
            emb = np.asarray(embeddings)
            if emb.dtype.kind != "f":
                raise DimensionError(f"embeddings are {emb.dtype}; expected floating-point image embeddings "
                                     "(integers or booleans would be normalised into meaningless vectors)")
        n = len(prompts)
        if emb.ndim != 2 or emb.shape[1] != self.encoder.dim:
            raise DimensionError(
                f"embeddings have shape {tuple(emb.shape)}, this vault expects [n, {self.encoder.dim}] "
                f"({self.encoder.name}); use the image encoder the vault was built with"
            )
        if emb.shape[0] != n:
            raise DimensionError(f"{emb.shape[0]} embeddings but {n} prompts: give exactly one prompt per embedding")
        for name, seq in (("metadata", metadata), ("thumbnails", thumbnails), ("content_hashes", content_hashes)):
            if seq is not None and len(seq) != n:
                raise DimensionError(f"{len(seq)} {name} items for {n} embeddings: give one per embedding (None for none)")
        if self.text is not None and encode_text is None:
            raise VaultError(
                f"vault {self.path.name} stores baked {self.text.family} conditioning: pass a text encoder "
                "(e.g. the checkpoint's CLIP) so new prompts can be baked"
            )
        unit, ok = normalise_embeddings(emb)
        report = AddReport()
        rows, metas, texts = [], [], []
        for i in range(n):
            source = str((metadata[i] or {}).get("source", "")) if metadata is not None and isinstance(metadata[i], Mapping) else ""
            p = prompts[i]
            if not isinstance(p, str) or not p.strip():
                report.skipped.append(Skipped(i, "missing prompt", source))
                continue
            if not ok[i]:
                report.skipped.append(Skipped(i, "embedding is not finite or is all zeros", source))
                continue
            try:
                meta = clean_metadata(metadata[i] if metadata is not None else None, self.base.category)
            except (TypeError, ValueError) as e:
                report.skipped.append(Skipped(i, f"bad metadata: {e}", source))
                continue
            rows.append(i)
            metas.append(encode_metadata(meta))
            texts.append(p.strip())
        table = self._load_prompt_table()
        for start in range(0, len(rows), MAX_SEGMENT_ENTRIES):
            chunk = slice(start, start + MAX_SEGMENT_ENTRIES)
            part = self._write_part(unit, rows[chunk], metas[chunk], texts[chunk], thumbnails, content_hashes,
                                    encode_text, table)
            report.added += part.added
            report.new_prompts += part.new_prompts
        self.report = self.report.merge(report)
        return report

    def _write_part(self, unit: np.ndarray, rows: list[int], metas: list[bytes], texts: list[str],
                    thumbnails: Sequence[bytes | None] | None, content_hashes: Sequence[bytes | None] | None,
                    encode_text: TextEncodeFn | None, table: dict[str, int]) -> AddReport:
        if not rows:
            return AddReport()
        new_prompts: list[str] = []
        pids = np.empty(len(rows), np.int32)
        for j, t in enumerate(texts):
            pid = table.get(t)
            if pid is None:
                pid = table[t] = self._n_prompts + len(new_prompts)
                new_prompts.append(t)
            pids[j] = pid
        cond_tokens = pooled = None
        if self.text is not None:
            assert encode_text is not None
            cond_tokens, pooled_rows = [], []
            for t in new_prompts:
                c, p = _check_baked(encode_text(t), self.text, t)
                cond_tokens.append(c)
                pooled_rows.append(p)
            pooled = np.stack(pooled_rows) if pooled_rows else np.zeros((0, self.text.pooled_dim), np.float16)
            if not cond_tokens:
                cond_tokens = [np.zeros((0, self.text.dim), np.float16)]
        thumbs = [bytes(thumbnails[i] or b"") for i in rows] if thumbnails is not None else None
        hashes = None
        if content_hashes is not None:
            hashes = np.zeros((len(rows), 16), np.uint8)
            for j, i in enumerate(rows):
                if content_hashes[i]:
                    hashes[j] = np.frombuffer(bytes(content_hashes[i])[:16].ljust(16, b"\0"), np.uint8)
        data = SegmentData(
            embeddings=unit[rows].astype(np.float16), prompt_ids=pids, metadata=metas, prompts=new_prompts,
            thumbnails=thumbs, content_hashes=hashes, cond_tokens=cond_tokens, pooled=pooled,
        )
        try:
            binding = Binding(self.base.vault_id, self._n_entries, self._n_prompts)
            info = write_segment(self.path, self._segment_name("seg"), data, binding)
        except BaseException:
            for t in new_prompts:  # keep the in-memory table consistent with what was written
                table.pop(t, None)
            raise
        self._new.append(info)
        self._n_prompts += len(new_prompts)
        self._n_entries += len(rows)
        return AddReport(added=len(rows), new_prompts=len(new_prompts))

    def delete_ids(self, ids: Sequence[int] | np.ndarray) -> int:
        """Mark entries deleted (they stop matching at once; `compact` reclaims the space). Returns how many were new."""
        self._check_open()
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self._n_entries):
            raise IndexError(f"entry ids must lie in 0..{self._n_entries - 1}")
        if self._deleted is None:
            self._deleted = set()
            if not self.replace_existing and self.base.deleted:
                self._deleted = set(read_deleted(self.path, self.base.deleted, self.base.vault_id).tolist())
        before = len(self._deleted)
        self._deleted.update(int(i) for i in ids)
        self._deleted_changed = self._deleted_changed or len(self._deleted) != before
        return len(self._deleted) - before

    def restore_ids(self, ids: Sequence[int] | np.ndarray) -> int:
        """Undo deletions not yet compacted away: the entries match again. Returns how many came back."""
        self._check_open()
        if self._deleted is None:
            self.delete_ids([])  # loads the current deletion list
        assert self._deleted is not None
        before = len(self._deleted)
        self._deleted.difference_update(int(i) for i in np.asarray(ids, dtype=np.int64))
        self._deleted_changed = self._deleted_changed or len(self._deleted) != before
        return before - len(self._deleted)

    def set_index(self, spec: str) -> None:
        """Record which index this vault should use on every machine ("auto", "Flat" or a FAISS factory string)."""
        self._check_open()
        self._index_spec = check_index_spec(spec, self.encoder.dim)

    def set_tuned(self, tuned: TunedDefaults) -> None:
        """Record the Query settings an A/B run chose for this vault (published with the next commit)."""
        self._check_open()
        self._tuned = tuned_from_json(asdict(tuned))  # the same checks a reader applies

    def commit(self) -> Manifest:
        """Publish everything added/deleted in one atomic manifest replacement; release the lock."""
        self._check_open()
        try:
            segments = (() if self.replace_existing else self.base.segments) + tuple(self._new)
            segments = self._merge_small_tail(segments)
            deleted, deleted_count = (None, 0) if self.replace_existing else (self.base.deleted, self.base.deleted_count)
            if self._deleted is not None and (self._deleted_changed or len(self._deleted) != deleted_count):
                deleted_count = len(self._deleted)
                deleted = (write_deleted(self.path, self._segment_name("del"), np.fromiter(self._deleted, np.int64),
                                         self.base.vault_id) if deleted_count else None)
            manifest = self.base.evolve(segments=segments, deleted=deleted, deleted_count=deleted_count,
                                        index=self._index_spec or self.base.index,
                                        tuned=self._tuned or self.base.tuned)
            fsync_dir(self.path)
            write_manifest(self.path, manifest)
            self._cleanup_orphans(keep=manifest)
            return manifest
        finally:
            self._close()

    def _merge_small_tail(self, segments: tuple[SegmentInfo, ...]) -> tuple[SegmentInfo, ...]:
        """Past MERGE_AT segments, merge the small ones at the end into one (entry and prompt ids unchanged).

        One append per image (the Builder in a generation graph) would otherwise grow a vault into
        thousands of files, each one mapping held open by every reader.
        """
        if len(segments) <= MERGE_AT:
            return segments
        start = len(segments)
        while start > 0 and segments[start - 1].entries < SMALL_SEGMENT:
            start -= 1
        if len(segments) - start < 2:
            return segments
        entry_base = sum(s.entries for s in segments[:start])
        prompt_base = sum(s.prompts for s in segments[:start])
        text_dims = (self.text.dim, self.text.pooled_dim) if self.text else None
        parts, eb, pb = [], entry_base, prompt_base
        for info in segments[start:]:
            parts.append(Segment(self.path, info, self.encoder.dim, text_dims, eb, pb, self.base.vault_id))
            eb, pb = eb + info.entries, pb + info.prompts
        name = self._segment_name("seg")
        merged = write_segment(self.path, name, concat_segments(parts), Binding(self.base.vault_id, entry_base, prompt_base))
        self._new.append(merged)
        log.info("merged %d small segments of %s into %s", len(parts), self.path, name)
        return segments[:start] + (merged,)

    def abort(self) -> None:
        """Drop everything this transaction wrote; the vault stays as it was."""
        if self._closed:
            return
        try:
            for info in self._new:
                (self.path / info.file).unlink(missing_ok=True)
            if self.replace_existing and not (self.path / MANIFEST).exists():
                _remove_if_empty(self.path)
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._lock_cm.__exit__(None, None, None)


def cleanup_orphans(path: Path, keep: Manifest | None) -> None:
    """Remove segment/temp files no committed manifest lists (left by a crash, an abort, or a merge)."""
    listed = set()
    if keep is not None:
        listed = {s.file for s in keep.segments} | ({keep.deleted.file} if keep.deleted else set())
    for f in Path(path).iterdir():
        if _OWN_FILE.match(f.name) and f.name not in listed:
            try:
                f.unlink()
            except OSError as e:  # e.g. still mapped by a reader on Windows; retried next time
                log.debug("could not remove %s: %s", f, e)


def _generation(path: Path) -> tuple[str, int] | None:
    try:
        m = read_manifest(path)
    except VaultError:
        return None
    return m.vault_id, m.generation


def _check_no_dropped_deletions(path: Path, manifest: Manifest) -> None:
    """Refuse a manifest that silently lost its deletion list (deleted entries would come back).

    Writers remove the files a committed manifest no longer lists. A deletion list written after the
    vault's current data but missing from the manifest means the manifest was edited.
    """
    def gen(name: str) -> int:
        g = file_generation(name)
        return -1 if g is None else g

    listed = gen(manifest.deleted.file) if manifest.deleted else -1
    oldest_data = min((gen(s.file) for s in manifest.segments), default=manifest.generation + 1)
    try:
        names = [e.name for e in os.scandir(path) if e.name.startswith("del-")]
    except OSError:
        return
    for name in names:
        g = gen(name)
        if listed < g <= manifest.generation and g >= oldest_data:
            raise VaultCorruptError(
                f"{path}: the folder holds a deletion list ({name}) newer than the one the manifest names: "
                "deleted entries would come back; the manifest was edited; restore the vault from a good copy")


def _remove_if_empty(path: Path) -> None:
    try:
        (path / ".lock").unlink(missing_ok=True)
        path.rmdir()
    except OSError:
        pass


def _check_baked(out: Any, spec: TextSpec, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn a text encoder's (cond, pooled) into fp16 arrays [T, D], [P], checking dims against the vault."""
    cond, pooled = out
    cond = np.asarray(cond.detach().cpu().float().numpy() if hasattr(cond, "detach") else cond, dtype=np.float32)
    if pooled is None:
        if spec.pooled_dim == 0:  # a family without a pooled output (Qwen-Image, Lumina 2, Chroma, Wan)
            pooled = np.zeros(0, np.float32)
        else:
            raise DimensionError(f"the text encoder returned no pooled output for {prompt!r}; {spec.family} needs one")
    pooled = np.asarray(pooled.detach().cpu().float().numpy() if hasattr(pooled, "detach") else pooled, dtype=np.float32)
    cond = cond.reshape(-1, cond.shape[-1])
    pooled = pooled.reshape(-1)
    if cond.shape[1] != spec.dim or pooled.shape[0] != spec.pooled_dim:
        raise DimensionError(
            f"the text encoder gives cond [*, {cond.shape[1]}] and pooled [{pooled.shape[0]}], but this vault bakes "
            f"{spec.family} conditioning [*, {spec.dim}] + pooled [{spec.pooled_dim}]; use a {spec.family} CLIP"
        )
    return cond.astype(np.float16), pooled.astype(np.float16)


def vault_exists(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def check_new_vault_folder(path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Refuse to create a vault where it would not be one: a name without the .vault suffix (the nodes list
    only NAME.vault folders), a file, a folder holding files that are not a vault's, or an existing vault
    without `overwrite`. Leftovers of an interrupted build (segments, temp files, the lock) do not count."""
    path = Path(path)
    if not path.name.endswith(VAULT_SUFFIX) or path.name == VAULT_SUFFIX:
        raise VaultError(f"{path}: a vault is a folder whose name ends in {VAULT_SUFFIX} (ComfyUI lists only those); "
                         f"use {path.name}{VAULT_SUFFIX}")
    if path.exists() and not path.is_dir():
        raise VaultError(f"{path} is a file; a vault is a folder: choose another name")
    if (path / MANIFEST).is_file():
        if not overwrite:
            raise VaultExistsError(f"a vault already exists at {path}; append to it, or replace it (--overwrite on the "
                                   "command line, mode overwrite in the Builder node)")
        return
    if path.is_dir():
        foreign = sorted(e.name for e in os.scandir(path) if not (_OWN_FILE.match(e.name) or e.name == ".lock"))
        if foreign:
            raise VaultError(f"{path} is a folder with other files in it ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}) and no vault; refusing to write a vault there: "
                             "choose a new name or an empty folder")
