"""Whole-vault operations: build, append, delete by filter, merge, compact, rebuild the index."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..core.atomic import writer_lock
from ..core.encoder import EncoderFingerprint
from ..core.errors import (
    DimensionError,
    EncoderMismatchError,
    QueryError,
    TextFamilyMismatchError,
    VaultError,
    VaultExistsError,
)
from ..core.families import TextSpec
from .entries import AddReport
from .filters import Filter, parse_filter
from .index import RECALL_TARGET, VaultIndex, index_cache_folder
from .manifest import Manifest
from .store import ProgressFn, TextEncodeFn, Vault, VaultWriter, cleanup_orphans, vault_exists

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def _chunks(n: int, size: int) -> Iterator[slice]:
    for a in range(0, n, size):
        yield slice(a, min(a + size, n))


def _add_all(writer: VaultWriter, embeddings: Any, prompts: Sequence[Any], metadata: Sequence[Any] | None,
             thumbnails: Sequence[Any] | None, content_hashes: Sequence[Any] | None,
             encode_text: TextEncodeFn | None, chunk: int, progress: ProgressFn | None) -> AddReport:
    n = len(prompts)
    if len(embeddings) != n:
        raise DimensionError(f"{len(embeddings)} embeddings but {n} prompts: give exactly one prompt per embedding")
    report = AddReport()
    for sl in _chunks(n, chunk):
        part = writer.add(embeddings[sl], prompts[sl],
                          metadata[sl] if metadata is not None else None,
                          thumbnails[sl] if thumbnails is not None else None,
                          content_hashes[sl] if content_hashes is not None else None, encode_text)
        for s in part.skipped:
            s.index += sl.start
        report = report.merge(part)
        if progress:
            progress(sl.stop, n)
    return report


def build(path: PathLike, embeddings: Any, prompts: Sequence[Any], metadata: Sequence[Any] | None = None,
          thumbnails: Sequence[Any] | None = None, *, encoder: EncoderFingerprint, category: str,
          text: TextSpec | None = None, encode_text: TextEncodeFn | None = None, content_hashes: Sequence[Any] | None = None,
          overwrite: bool = False, index: str = "auto", chunk: int = 131072, progress: ProgressFn | None = None) -> AddReport:
    """Create a vault from arrays in one transaction (a crash leaves no vault, never half of one)."""
    with VaultWriter.create(path, encoder, category, text=text, overwrite=overwrite, index=index) as w:
        return _add_all(w, embeddings, prompts, metadata, thumbnails, content_hashes, encode_text, chunk, progress)


def append(path: PathLike, embeddings: Any, prompts: Sequence[Any], metadata: Sequence[Any] | None = None,
           thumbnails: Sequence[Any] | None = None, *, encoder: EncoderFingerprint | None = None,
           encode_text: TextEncodeFn | None = None, content_hashes: Sequence[Any] | None = None,
           chunk: int = 131072, progress: ProgressFn | None = None) -> AddReport:
    """Append entries in one transaction: existing files are never rewritten; all or nothing is added."""
    with VaultWriter.open(path) as w:
        if encoder is not None:
            w.encoder.check_compatible(encoder, where=f"vault '{Path(path).name}'")
        return _add_all(w, embeddings, prompts, metadata, thumbnails, content_hashes, encode_text, chunk, progress)


ADD_MODES = ("append", "create", "overwrite")


def check_add_mode(path: PathLike, mode: str) -> None:
    """Refuse an unknown mode, or `create` over an existing vault, before any image is encoded."""
    if mode not in ADD_MODES:
        raise QueryError(f"mode must be one of {', '.join(ADD_MODES)}, got {mode!r}")
    if mode == "create" and vault_exists(path):
        raise VaultExistsError(f"vault '{Path(path).name}' already exists; use mode append (add to it) "
                               "or overwrite (replace it)")


def writer_for_adding(path: PathLike, mode: str, encoder: EncoderFingerprint, category: str,
                      text: TextSpec | None) -> VaultWriter:
    """The writer every way of adding images uses (extract, the Builder node), after the checks they share.

    `append` opens the vault at `path` (creating it when there is none), `create` makes a new one,
    `overwrite` replaces it. An existing vault must have been built with the same image encoder and
    bake the same text family as `text` (None: a text-mode vault).
    """
    check_add_mode(path, mode)
    if mode != "append" or not vault_exists(path):
        return VaultWriter.create(path, encoder, category, text=text, overwrite=mode == "overwrite")
    writer = VaultWriter.open(path)
    try:
        writer.encoder.check_compatible(encoder, where=f"vault '{Path(path).name}'")
        if writer.text != text:
            have = f"bakes {writer.text.family} conditioning" if writer.text else "is a text-mode vault (no baked conditioning)"
            want = f"the text encoder gives {text.family} conditioning" if text else "no text encoder was given"
            fix = (f"use a {writer.text.family} CLIP" if writer.text else "add without a CLIP (text mode)")
            raise TextFamilyMismatchError(f"vault '{Path(path).name}' {have}, but {want}: {fix}, or add to another vault")
    except BaseException:
        writer.abort()
        raise
    return writer


def unseen(hashes: Sequence[bytes], known: set[bytes]) -> list[int]:
    """Indices of the images worth adding: not among `known` (updated in place) nor repeats of an earlier one."""
    fresh = []
    for i, h in enumerate(hashes):
        if h not in known:
            known.add(h)
            fresh.append(i)
    return fresh


def delete_where(path: PathLike, filter: "str | Mapping[str, Any] | Filter") -> int:
    """Delete every live entry matching the filter; returns how many. An empty filter is refused."""
    flt = parse_filter(filter)
    if not flt:
        raise QueryError("refusing to delete with an empty filter (it would delete every entry)")
    with VaultWriter.open(path) as w:
        vault = Vault.open(path)
        ids = np.flatnonzero(vault.filter_mask(flt))
        return w.delete_ids(ids)


def iter_live(vault: Vault, batch: int = 65536) -> Iterator[dict[str, Any]]:
    """Live entries in id order, in batches: embeddings, prompts, metadata, thumbnails, hashes, prompt ids."""
    live = np.flatnonzero(vault.live_mask())
    hashes = vault.content_hashes() if any(s.content_hashes is not None for s in vault.segments) else None
    for sl in _chunks(len(live), batch):
        ids = live[sl]
        pids = vault.prompt_ids(ids)
        yield {
            "ids": ids,
            "embeddings": vault.embeddings(ids).astype(np.float32),
            "prompt_ids": pids,
            "prompts": [vault.prompt(int(p)) for p in pids],
            "metadata": [vault.metadata(int(i)) for i in ids],
            "thumbnails": [vault.thumbnail(int(i)) for i in ids] if vault.has_thumbnails else None,
            "content_hashes": [bytes(hashes[i]) for i in ids] if hashes is not None else None,
        }


def _pick(seq: Any, rows: np.ndarray | None) -> Any:
    """The whole batch column, or its `rows` when a selection was asked for."""
    return seq if seq is None or rows is None else [seq[i] for i in rows]


def _copy_from(writer: VaultWriter, source: Vault, progress: ProgressFn | None = None, offset: int = 0,
               total: int = 0, keep: np.ndarray | None = None) -> AddReport:
    """Add the source's live entries (only those `keep` marks, a mask over entry ids, when given) to `writer`,
    their baked conditioning read from the source."""
    report = AddReport()
    done = offset
    for b in iter_live(source):
        done += len(b["ids"])
        rows = None if keep is None else np.flatnonzero(keep[b["ids"]])
        if rows is not None and not len(rows):
            continue
        prompt_to_pid = dict(zip(b["prompts"], (int(p) for p in b["prompt_ids"])))
        encode = None
        if writer.text is not None:
            encode = lambda prompt, _m=prompt_to_pid: source.baked(_m[prompt])  # noqa: E731

        emb = b["embeddings"] if rows is None else b["embeddings"][rows]
        report = report.merge(writer.add(emb, *(_pick(b[k], rows) for k in ("prompts", "metadata", "thumbnails",
                                                                          "content_hashes")), encode))
        if progress:
            progress(done, total)
    return report


def merge(out: PathLike, sources: Sequence[PathLike], *, category: str | None = None, drop_baked: bool = False,
          overwrite: bool = False, progress: ProgressFn | None = None) -> AddReport:
    """Merge vaults of the same image encoder into a new vault `out` (live entries, prompts de-duplicated).

    Baked conditioning is kept when every source has the same text family; sources that differ
    are refused unless drop_baked=True (the result is then a text-mode vault).
    """
    if not sources:
        raise VaultError("merge needs at least one source vault")
    vaults = [Vault.open(p) for p in sources]
    first = vaults[0]
    for v in vaults[1:]:
        try:
            first.encoder.check_compatible(v.encoder, where=f"vault '{first.name}'")
        except EncoderMismatchError as e:
            raise EncoderMismatchError(f"cannot merge '{v.name}' into '{first.name}': {e}") from e
        hashes_agree = bool(first.encoder.weights_hash) and first.encoder.weights_hash == v.encoder.weights_hash
        if first.encoder.probe_cosine(v.encoder) is None and not hashes_agree:
            raise EncoderMismatchError(
                f"cannot merge '{v.name}' ({v.encoder.name}) with '{first.name}' ({first.encoder.name}): "
                "neither a weights hash nor a probe embedding shows they come from the same encoder"
            )
    texts = {v.text for v in vaults}
    text = first.text if len(texts) == 1 else None
    if len(texts) > 1 and not drop_baked:
        raise VaultError(
            "the sources differ in baked conditioning (" + ", ".join(f"{v.name}: {v.text.family if v.text else 'none'}" for v in vaults)
            + "); pass drop_baked (CLI: --drop-baked) to merge them as a text-mode vault"
        )
    if drop_baked:
        text = None
    if Path(out).resolve() in {Path(p).resolve() for p in sources}:
        raise VaultError("the merge output must be a new vault, not one of the sources")
    total = sum(len(v) for v in vaults)
    report = AddReport()
    with VaultWriter.create(out, first.encoder, category or first.category, text=text, overwrite=overwrite) as w:
        done = 0
        for v in vaults:
            report = report.merge(_copy_from(w, v, progress, done, total))
            done += len(v)
    return report


def compact(path: PathLike, progress: ProgressFn | None = None) -> Manifest:
    """Rewrite the vault without its deleted entries (entry ids change; prompts are re-de-duplicated)."""
    with VaultWriter.open(path, replace_all=True) as w:
        vault = Vault.open(path)
        if vault.manifest.generation != w.base.generation:
            raise VaultError("the vault changed while compaction started; run it again")
        _copy_from(w, vault, progress, 0, len(vault))
    return Vault.open(path).manifest


def rebuild_index(path: PathLike, spec: str | None = None, cache_dir: Path | None = None,
                  progress: ProgressFn | None = None, recall_target: float = RECALL_TARGET) -> VaultIndex:
    """Build this machine's index for the vault again, dropping the cached one.

    A `spec` ("auto", "Flat" or a FAISS factory string) is also saved in the manifest so later opens
    use it too.
    """
    if spec is not None:
        with VaultWriter.open(path) as w:
            w.set_index(spec)
    vault = Vault.open(path)
    shutil.rmtree(index_cache_folder(vault, cache_dir), ignore_errors=True)
    return VaultIndex(vault, cache_dir=cache_dir, recall_target=recall_target, progress=progress)


def upgrade(path: PathLike) -> Manifest:
    """Rewrite a vault of format version 1 as the current version: each segment and the deletion list
    again, now bound to the vault and to their place (entry ids, prompts and deletions unchanged)."""
    from ..core import strict_json
    from ..core.nofollow import open_plain
    from .manifest import FORMAT_VERSION, MANIFEST, MAX_MANIFEST_BYTES, data_file_name, manifest_from_json, write_manifest
    from .segment import Binding, Segment, concat_segments, write_deleted, write_segment

    folder = Path(path)
    if not (folder / "manifest.json").is_file():
        Vault.open(folder)  # the right "not a vault" error
    with writer_lock(folder):
        try:
            with open_plain(folder / MANIFEST) as f:
                d = strict_json.loads(f.read(MAX_MANIFEST_BYTES + 1))
            old = manifest_from_json(d, legacy=True)
        except (OSError, ValueError, TypeError, KeyError, RecursionError, OverflowError) as e:
            raise VaultError(f"{folder}: the manifest cannot be read for an upgrade ({e})") from e
        if old.format_version == FORMAT_VERSION and d.get("vault_id"):
            return Vault.open(folder).manifest
        new = old.evolve(format_version=FORMAT_VERSION, vault_id=os.urandom(8).hex())
        text_dims = (old.text.dim, old.text.pooled_dim) if old.text else None
        infos, eb, pb = [], 0, 0
        for i, info in enumerate(old.segments):
            seg = Segment(folder, info, old.encoder.dim, text_dims, eb, pb)
            name = data_file_name("seg", new.generation, i)
            infos.append(write_segment(folder, name, concat_segments([seg]), Binding(new.vault_id, eb, pb)))
            eb, pb = eb + info.entries, pb + info.prompts
        deleted = None
        if old.deleted is not None:
            from .segment import read_deleted

            ids = read_deleted(folder, old.deleted)
            deleted = write_deleted(folder, data_file_name("del", new.generation, len(infos)), ids, new.vault_id)
        new = replace(new, segments=tuple(infos), deleted=deleted)
        write_manifest(folder, new)
        cleanup_orphans(folder, new)
    return Vault.open(folder).manifest
