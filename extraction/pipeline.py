"""Batch extraction: a folder of generated images -> vault entries, fast and without losing data.

reader (main process: list files, read sidecars, pick this shard)
-> decode (DataLoader workers: read bytes, content hash, skip what the vault has, decode, embedded
   prompt, resize+crop to the encoder's input size, thumbnail)
-> encode (main process: the image encoder, batched on its device; on CUDA the next batch is queued
   before the previous one is read back, so the GPU does not wait for the host's bookkeeping)
-> write (one atomic vault append every `commit_every` items, prompts de-duplicated by the vault,
   new prompts baked when asked). A killed run loses at most the uncommitted part, and a re-run
   skips every committed image by its content hash.
Bad items (unreadable image, missing prompt, duplicate image) are skipped and listed in the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..core.atomic import check_name
from ..core.content import pil_pixels_hash
from ..core.images import ImageRefused, decode_rgb, read_image_file
from ..vault.entries import AddReport
from ..vault.manifest import VAULT_SUFFIX, vault_name
from ..vault.ops import writer_for_adding
from ..vault.store import Vault, vault_exists
from ..vault.thumbnails import make_thumbnail
from .comfy_graph import NodeTypes
from .encoders import ImageEncoder, TextEncoder, resize_crop, text_spec
from .image_meta import PNG_SIGNATURE, read_prompt, strip_png_text
from .readers import Item, describe, display_path, list_images

log = logging.getLogger(__name__)
REDUCE_ABOVE = 4096 * 4096  # pixels: larger images are box-reduced before their float copy (see _encoder_pixels)


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'i/n' (1-based, as users count) -> (i-1, n); None -> torchrun's RANK/WORLD_SIZE if set."""
    if spec:
        try:
            i, n = (int(x) for x in spec.split("/"))
        except ValueError as e:
            raise ValueError(f"--shard must look like 2/8 (this is shard 2 of 8), got {spec!r}") from e
        if not 1 <= i <= n:
            raise ValueError(f"--shard {spec}: the shard number must lie in 1..{n}")
        return i - 1, n
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def in_shard(rel_path: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic split by a hash of the relative path (its bytes: a name need not be UTF-8): stable when
    files are added or removed."""
    return shard is None or zlib.crc32(os.fsencode(rel_path)) % shard[1] == shard[0]


def shard_vault_path(path: Path, shard: tuple[int, int] | None) -> Path:
    if shard is None:
        return path
    return path.with_name(f"{vault_name(path)}.shard-{shard[0] + 1}-of-{shard[1]}{VAULT_SUFFIX}")


@dataclass
class ExtractReport:
    """What a run did: entries added per vault, images already present, and every skip with its reason."""

    added: dict[str, int] = field(default_factory=dict)
    already_present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    images: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    wait_seconds: float = 0.0  # waiting for the decode workers
    write_seconds: float = 0.0  # vault commits

    @property
    def total_added(self) -> int:
        return sum(self.added.values())

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for _, r in self.skipped:
            key = r.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        rate = self.images / self.seconds if self.seconds else 0.0
        s = (f"{self.images} images in {self.seconds:.1f} s ({rate:.1f} img/s): {self.total_added} added, "
             f"{self.already_present} already in the vault, {len(self.skipped)} skipped")
        if reasons:
            s += " (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])) + ")"
        return s

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "added": self.added, "already_present": self.already_present,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images / self.seconds, 2) if self.seconds else None}


@dataclass
class Decoded:
    """One item after the decode stage (made in a worker process, handed over whole).

    `known` marks an image the vault already holds; `reason` says why any other item is skipped.
    `row` is its row in the batch's pixel block (set by the collate step; None when not decoded).
    """

    index: int  # into the run's item list
    prompt: str | None
    metadata: dict[str, Any]
    hash: bytes | None = None
    known: bool = False
    reason: str | None = None
    pixels: torch.Tensor | None = None  # uint8 [S, S, 3] until collated
    thumbnail: bytes | None = None
    row: int | None = None


@dataclass
class DecodedBatch:
    """A batch from the decode stage: its records and the pixels of the decoded ones as one uint8 block."""

    records: list[Decoded]
    pixels: torch.Tensor | None  # [G, S, S, 3], G = records with a row

    def pin_memory(self) -> "DecodedBatch":
        """The DataLoader's pinning step (CUDA encoders) calls this: the pixel block goes to pinned memory,
        so its copy to the GPU can overlap the host's work."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class DecodeDataset(torch.utils.data.Dataset):
    """Reads, decodes, hashes (core.content) and resizes one item; runs in DataLoader workers."""

    def __init__(self, items: list[Item], size: int, known: set[bytes], thumbnails: bool,
                 node_types: NodeTypes | None = None) -> None:
        self.items, self.size, self.known, self.thumbnails = items, size, known, thumbnails
        self.node_types = node_types

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Decoded:
        out = Decoded(i, self.items[i].prompt, dict(self.items[i].metadata))
        try:
            self._decode_into(out, self.items[i])
        except Exception as e:  # noqa: BLE001  (one file's surprise is that file's skip, never the end of the run)
            log.warning("skipping %s: %s", out.metadata.get("source", self.items[i].path), e, exc_info=log.isEnabledFor(logging.DEBUG))
            out.reason = f"unreadable file: {type(e).__name__}: {str(e)[:200]}"
            out.hash = out.pixels = out.thumbnail = None
            out.known = False
        return out

    def _decode_into(self, out: Decoded, item: Item) -> None:
        try:
            data = read_image_file(item.path, what="the file")
        except ImageRefused as e:
            out.reason = f"unreadable image: {e}"
            return
        except OSError as e:
            out.reason = f"unreadable file: {e.strerror or e}"
            return
        try:
            rgb = _decode(data)
        except ImageRefused as e:
            out.reason = f"unreadable image: {e}"
            return
        out.hash = pil_pixels_hash(rgb)
        if out.hash in self.known:
            out.known = True
            return
        if out.prompt is None:
            reading = read_prompt(data, self.node_types, item.path.name)
            out.prompt = reading.prompt
            out.metadata = {**reading.metadata, **out.metadata}
            if not reading.prompt:
                out.reason = f"missing prompt: no .txt/.json sidecar, and {reading.reason}"
                return
        rgb = _reduced(rgb, self.size)  # (a very large image is let go before its copies are made)
        if self.thumbnails:
            out.thumbnail = make_thumbnail(rgb)
        out.pixels = _encoder_pixels(rgb, self.size)


def _reduced(rgb: Image.Image, size: int) -> Image.Image:
    """A very large image box-reduced by an integer factor to at most REDUCE_ABOVE pixels (its float copy would
    otherwise take 12 bytes a pixel: GBs for a big upscale), its short side kept >= `size`; others as they are."""
    w, h = rgb.size
    if w * h <= REDUCE_ABOVE:
        return rgb
    factor = max(1, min(math.ceil(math.sqrt(w * h / REDUCE_ABOVE)), min(w, h) // size))
    return rgb.reduce(factor) if factor > 1 else rgb


def _encoder_pixels(rgb: Image.Image, size: int) -> torch.Tensor:
    """uint8 [size, size, 3]: resize_crop of the image (shortest side to `size`, centre crop, 8-bit levels)."""
    pixels = torch.from_numpy(np.array(rgb)).float().div_(255.0)[None]
    # resize_crop leaves 8-bit levels, so uint8 carries them exactly at a quarter of the bytes
    return (resize_crop(pixels, size)[0] * 255.0).round().to(torch.uint8)


def _decode(data: bytes) -> Image.Image:
    """The image's first frame as RGB, through the image gate (core.images: format from its first bytes, size
    from its header). A PNG whose text chunks Pillow refuses (compressed metadata over its limit) is decoded
    without them: the metadata is read separately, within our own limits."""
    try:
        return decode_rgb(data, what="the file")
    except ImageRefused as e:
        cause = str(e.__cause__ or "").lower()
        if not data.startswith(PNG_SIGNATURE) or not isinstance(e.__cause__, ValueError) or not (
                "text" in cause or "chunk" in cause):
            raise
    return decode_rgb(strip_png_text(data), what="the file")


def _collate(batch: list[Decoded]) -> DecodedBatch:
    """Runs in the worker: the decoded pixels of a batch become one uint8 tensor [G, S, S, 3] (one
    shared-memory block to hand over and pin, not one per image); each record's `row` points into it."""
    rows = []
    for r in batch:
        if r.pixels is not None:
            r.row = len(rows)
            rows.append(r.pixels)
            r.pixels = None
    return DecodedBatch(batch, torch.stack(rows) if rows else None)


def _lower_priority(_: int) -> None:
    """Decode workers yield the CPU to the encoder: on a machine where both share cores, the encoder
    stays at full speed and the workers fill the gaps (their prefetch buffer hides the rest)."""
    try:
        os.nice(5)
    except (AttributeError, OSError):
        pass


def decode_loader(dataset: DecodeDataset, batch_size: int, workers: int,
                  pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The decode stage: DecodedBatch-es (records + one uint8 [G, S, S, 3] block) from
    `workers` processes (0: in this process), 4 batches ahead per worker, pinned for a CUDA encoder."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        prefetch_factor=4 if workers else None, persistent_workers=False,
        worker_init_fn=_lower_priority if workers else None, pin_memory=pin_memory,
    )


@dataclass
class _Target:
    """One output vault and its uncommitted buffer."""

    path: Path
    category: str
    embeddings: list[np.ndarray] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    metas: list[dict[str, Any]] = field(default_factory=list)
    thumbs: list[bytes | None] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class _Encoded:
    """A launched batch: its records, and its embeddings once `event` (CUDA) has passed."""

    records: list[Decoded]
    embeddings: torch.Tensor
    event: Any = None

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.embeddings.numpy()


def default_report_path(vault: Path | None, vault_dir: Path | None) -> Path:
    """Where skipped items are listed: beside the vault, or inside the vault folder."""
    if vault is not None:
        stem = vault_name(vault)
        return vault.with_name(f"{stem}.extract-report.jsonl")
    assert vault_dir is not None
    return vault_dir / "extract-report.jsonl"


class Extractor:
    """Runs the pipeline into one vault, or one vault per category in a folder."""

    def __init__(self, encoder: ImageEncoder, *, vault: str | os.PathLike[str] | None = None,
                 vault_dir: str | os.PathLike[str] | None = None, text_encoder: TextEncoder | None = None,
                 batch_size: int = 32, workers: int | None = None, thumbnails: bool = True,
                 commit_every: int = 2048, shard: tuple[int, int] | None = None,
                 node_types: NodeTypes | None = None) -> None:
        if (vault is None) == (vault_dir is None):
            raise ValueError("give exactly one of vault (one vault) or vault_dir (one vault per category)")
        self.encoder = encoder
        self.vault = shard_vault_path(Path(vault), shard) if vault is not None else None
        self.vault_dir = Path(vault_dir) if vault_dir is not None else None
        self.text_encoder = text_encoder
        self.batch_size = batch_size
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self.thumbnails = thumbnails
        self.commit_every = commit_every
        self.shard = shard
        self.node_types = node_types  # ComfyUI node definitions for reading graphs (None: the built-in table)
        self.targets: dict[str, _Target] = {}

    # ---- targets -----------------------------------------------------------------------------
    def _target_for(self, category: str) -> _Target:
        key = "" if self.vault is not None else category
        if key not in self.targets:
            if self.vault is not None:
                path = self.vault
            else:
                assert self.vault_dir is not None
                path = shard_vault_path(self.vault_dir / f"{check_name(category, 'category')}{VAULT_SUFFIX}", self.shard)
            self.targets[key] = _Target(path, category)
        return self.targets[key]

    def _existing_hashes(self, paths: list[Path]) -> set[bytes]:
        known: set[bytes] = set()
        for p in paths:
            if vault_exists(p):
                v = Vault.open(p)  # refuse to extend a vault built with another encoder
                v.encoder.check_compatible(self.encoder.fingerprint, f"vault '{v.name}'")
                hashes = v.content_hashes()  # deleted entries included: a re-run does not bring them back
                known.update(bytes(h) for h in hashes if h.any())
        return known

    def _flush(self, target: _Target, report: ExtractReport) -> None:
        if not len(target):
            return
        t = time.perf_counter()
        try:
            self._commit(target, report)
        finally:
            report.write_seconds += time.perf_counter() - t

    def _commit(self, target: _Target, report: ExtractReport) -> None:
        text = text_spec(self.text_encoder) if self.text_encoder is not None else None
        writer = writer_for_adding(target.path, "append", self.encoder.fingerprint, target.category, text)
        with writer:
            encode = self.text_encoder.encode if self.text_encoder is not None else None
            added: AddReport = writer.add(np.stack(target.embeddings), target.prompts, target.metas, target.thumbs,
                                          target.hashes, encode)
        report.added[str(target.path)] = report.added.get(str(target.path), 0) + added.added
        for s in added.skipped:
            report.skipped.append((target.metas[s.index].get("source", "?"), s.reason))
        target.embeddings.clear()
        target.prompts.clear()
        target.metas.clear()
        target.thumbs.clear()
        target.hashes.clear()

    # ---- running -----------------------------------------------------------------------------
    def plan(self, root: str | os.PathLike[str], category: str | None = None) -> tuple[list[Item], ExtractReport]:
        """List this shard's items with their sidecar data; sidecar problems become report entries."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} " + ("is a file: give the folder that holds the images"
                                                             if root.exists() else "does not exist"))
        report = ExtractReport()
        items = []
        for path in list_images(root):
            rel = str(path.relative_to(root))
            if not in_shard(rel, self.shard):
                continue
            try:
                items.append(describe(path, root, category))
            except (ValueError, OSError) as e:  # a name, a link or a sidecar: this file's skip, not the run's end
                report.skipped.append((display_path(rel), f"bad sidecar: {e}" if "sidecar" in str(e) else f"skipped: {e}"))
        return items, report

    def run(self, root: str | os.PathLike[str], category: str | None = None,
            progress: Callable[[int, int], None] | None = None,
            check_interrupt: Callable[[], None] | None = None) -> ExtractReport:
        """Extract every image under `root` (this shard) into the vault(s); returns the report."""
        t0 = time.perf_counter()
        items, report = self.plan(root, category)
        categories = {it.metadata["category"] for it in items}
        for c in sorted(categories):
            self._target_for(str(c))
        known = self._existing_hashes([t.path for t in self.targets.values()])
        device = getattr(self.encoder, "device", None)  # encoders with encode_on_device run asynchronously on CUDA
        on_gpu = (device is not None and torch.device(device).type == "cuda"
                  and hasattr(self.encoder, "encode_on_device"))
        loader = decode_loader(DecodeDataset(items, self.encoder.input_size, known, self.thumbnails, self.node_types),
                               self.batch_size, self.workers, pin_memory=on_gpu)
        seen: dict[bytes, str] = {}
        done = 0
        in_flight: _Encoded | None = None
        threads = torch.get_num_threads()
        if on_gpu and self.workers:  # here the main process only launches kernels: the cores go to the workers
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - self.workers))
        try:
            t_wait = time.perf_counter()
            for batch in loader:
                report.wait_seconds += time.perf_counter() - t_wait
                if check_interrupt is not None:
                    check_interrupt()
                good = self._screen(batch.records, items, seen, report)
                launched = self._launch(batch.pixels, good, device if on_gpu else None, report) if good else None
                if in_flight is not None:  # the previous batch's embeddings, while this one runs on the device
                    self._collect(in_flight, report)
                in_flight = launched
                done += len(batch.records)
                report.images = done
                if progress is not None:
                    progress(done, len(items))
                t_wait = time.perf_counter()
        finally:
            try:
                if in_flight is not None:
                    self._collect(in_flight, report)
            finally:
                for target in self.targets.values():  # what was encoded is committed, even on interrupt
                    self._flush(target, report)
                torch.set_num_threads(threads)
                report.images = done
                report.seconds = time.perf_counter() - t0
        return report

    def _screen(self, records: list[Decoded], items: list[Item], seen: dict[bytes, str],
                report: ExtractReport) -> list[Decoded]:
        """The records of a batch worth encoding; the rest are counted or reported with their reason."""
        good = []
        for r in records:
            source = r.metadata.get("source", str(items[r.index].path))
            if r.known:
                report.already_present += 1
            elif r.reason:
                report.skipped.append((source, r.reason))
            elif r.hash in seen:
                report.skipped.append((source, f"duplicate image: the same pixels as {seen[r.hash]}"))
            else:
                assert r.hash is not None and r.row is not None
                seen[r.hash] = source
                good.append(r)
        return good

    def _launch(self, pixels: torch.Tensor, good: list[Decoded], device: Any,
                report: ExtractReport) -> _Encoded:
        """Start encoding the good rows of a batch. With a CUDA `device` this only queues the work (uint8
        over the bus, 4x fewer bytes; conversion and preprocessing on the GPU; the result copied back
        asynchronously); without one, the encoder runs here and now."""
        t = time.perf_counter()
        rows = [r.row for r in good]
        if len(rows) < pixels.shape[0]:  # duplicates of earlier files in this run
            pixels = pixels[rows]
        if device is not None:
            x = pixels.to(device, non_blocking=True).float() / 255.0
            emb = self.encoder.encode_on_device(x).to("cpu", non_blocking=True)  # pinned memory; ready at `event`
            event = torch.cuda.Event()
            event.record()
            out = _Encoded(good, emb, event)
        else:
            out = _Encoded(good, self.encoder.encode(pixels.float() / 255.0))
        report.encode_seconds += time.perf_counter() - t
        return out

    def _collect(self, encoded: _Encoded, report: ExtractReport) -> None:
        """Wait for a launched batch's embeddings and buffer them for their vaults (committing full buffers)."""
        t = time.perf_counter()
        emb = encoded.result()
        report.encode_seconds += time.perf_counter() - t
        for r, e in zip(encoded.records, emb):
            target = self._target_for(str(r.metadata["category"]))
            target.embeddings.append(e)
            target.prompts.append(r.prompt)
            target.metas.append(r.metadata)
            target.thumbs.append(r.thumbnail)
            target.hashes.append(r.hash)
            if len(target) >= self.commit_every:
                self._flush(target, report)


def write_report(report: ExtractReport, path: str | os.PathLike[str]) -> None:
    """The skipped items as JSON lines: {"path": ..., "reason": ...}."""
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as f:  # a name's stray bytes as \xNN
        for p, r in report.skipped:
            f.write(json.dumps({"path": p, "reason": r}, ensure_ascii=False) + "\n")
