"""CLI verbs on vaults: build, append, query, info, verify, merge, delete, rebuild, upgrade."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import VaultCorruptError, VaultFormatError
from ..vault import (
    EncoderFingerprint,
    Vault,
    append,
    build,
    compact,
    delete_where,
    detect_category,
    get_index,
    merge,
    rebuild_index,
    search,
    upgrade,
)
from ..vault.entries import AddReport
from ..vault.thumbnails import make_thumbnail
from .common import UsageError, emit, progress_bar, read_embeddings, read_jsonl


def _load_entries(embeddings: str, entries: str, thumbnails: bool) -> tuple[np.ndarray, list[Any], list[Any], list[Any] | None, dict[str, str]]:
    emb, header = read_embeddings(embeddings)
    rows = read_jsonl(entries)
    if len(rows) != len(emb):
        raise UsageError(f"{embeddings} has {len(emb)} embeddings but {entries} has {len(rows)} entries; "
                         "they must pair up line by line")
    prompts = [r.get("prompt") if r else None for r in rows]
    metas = [{k: v for k, v in r.items() if k not in ("prompt", "thumbnail")} if r else None for r in rows]
    thumbs = None
    if thumbnails:
        base = Path(entries).parent
        thumbs = []
        for r in rows:
            src = r.get("thumbnail") if r else None
            try:
                thumbs.append(make_thumbnail(_open_image(base / src)) if src else None)
            except (OSError, ValueError):
                thumbs.append(None)
    return emb, prompts, metas, thumbs, header


def _open_image(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def _fingerprint(dim: int, header: dict[str, str], name: str | None, weights_hash: str | None) -> EncoderFingerprint:
    return EncoderFingerprint(name or header.get("encoder_name") or "unknown", dim,
                              weights_hash or header.get("encoder_hash", ""))


def _report_text(path: str, report: AddReport, seconds: float) -> str:
    lines = [f"{path}: {report.summary()} in {seconds:.1f} s"]
    for s in report.skipped[:20]:
        lines.append(f"  skipped #{s.index} {s.source}: {s.reason}")
    if len(report.skipped) > 20:
        lines.append(f"  ... and {len(report.skipped) - 20} more (use --json for the full list)")
    return "\n".join(lines)


def _report_json(path: str, report: AddReport, seconds: float, vault: Vault) -> dict[str, Any]:
    return {"vault": path, "added": report.added, "new_prompts": report.new_prompts, "seconds": round(seconds, 3),
            "entries": len(vault), "skipped": [{"index": s.index, "source": s.source, "reason": s.reason} for s in report.skipped]}


def _warm_index(path: str, show: bool) -> None:
    with progress_bar("indexing", "vec", show) as cb:
        vault = Vault.open(path)
        if len(vault):
            get_index(vault, progress=cb)


def _finish(path: str, report: AddReport, t0: float, a: argparse.Namespace) -> int:
    """After build/append/merge: build the search index now (unless --no-index), then report."""
    if not a.no_index:
        _warm_index(path, not a.json)
    seconds = time.perf_counter() - t0
    emit(_report_json(path, report, seconds, Vault.open(path)), a.json, _report_text(path, report, seconds))
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    emb, prompts, metas, thumbs, header = _load_entries(a.embeddings, a.entries, a.thumbnails)
    fp = _fingerprint(emb.shape[1], header, a.encoder_name, a.encoder_hash)
    t = time.perf_counter()
    with progress_bar("building", "entry", not a.json) as cb:
        report = build(a.vault, emb, prompts, metas, thumbs, encoder=fp, category=a.category, overwrite=a.overwrite,
                       index=a.index, progress=cb)
    return _finish(a.vault, report, t, a)


def cmd_append(a: argparse.Namespace) -> int:
    emb, prompts, metas, thumbs, header = _load_entries(a.embeddings, a.entries, a.thumbnails)
    fp = _fingerprint(emb.shape[1], header, a.encoder_name, a.encoder_hash)
    t = time.perf_counter()
    with progress_bar("appending", "entry", not a.json) as cb:
        report = append(a.vault, emb, prompts, metas, thumbs, encoder=fp, progress=cb)
    return _finish(a.vault, report, t, a)


def _parse_rows(rows: str | None, n: int) -> list[int]:
    """'0,3,10-12' -> [0, 3, 10, 11, 12], each row checked against 0..n-1; one-line errors otherwise."""
    if rows is None:
        return list(range(n))
    out: list[int] = []
    for part in rows.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{1,12})(?:-(\d{1,12}))?", part)
        if not m:
            raise UsageError(f"--rows {rows!r}: {part!r} is not a row or a range; write rows like 0,3,10-12 "
                             f"(rows count from 0; this file has rows 0..{n - 1})")
        a, b = int(m.group(1)), int(m.group(2)) if m.group(2) else int(m.group(1))
        if b < a:
            raise UsageError(f"--rows {rows!r}: the range {part} runs backwards")
        if b >= n:
            raise UsageError(f"--rows {rows!r}: row {b} is outside 0..{n - 1}")
        if len(out) + b - a + 1 > 1_000_000:
            raise UsageError(f"--rows {rows!r}: more than a million rows")
        out.extend(range(a, b + 1))
    return out


def cmd_query(a: argparse.Namespace) -> int:
    emb, header = read_embeddings(a.embeddings)
    picked = _parse_rows(a.rows, len(emb))
    queries = emb[picked]
    fp = _fingerprint(emb.shape[1], header, None, a.encoder_hash)
    fp = fp if fp.weights_hash else None
    opened = [Vault.open(v) for v in a.vaults]
    t = time.perf_counter()
    if len(opened) == 1:
        results, detection = search(opened[0], queries, k=a.k, filter=a.filter, encoder=fp), None
    else:
        detection, results = detect_category(opened, queries, k=a.k, filter=a.filter, encoder=fp)
    ms = (time.perf_counter() - t) * 1e3
    data = {"queries": [{"row": r, **res.to_json()} for r, res in zip(picked, results)], "milliseconds": round(ms, 3)}
    if detection is not None:
        data["skipped_vaults"] = detection.skipped
    lines = []
    for r, res in zip(picked, results):
        head = f"query row {r} -> vault '{res.vault}'"
        if res.scores:
            head += "  (scores: " + ", ".join(f"{n} {s:.3f}" for n, s in res.scores.items()) + ")"
        lines.append(head)
        for m in res.matches:
            extra = ", ".join(f"{key}={m.metadata[key]}" for key in ("checkpoint", "seed", "quality") if key in m.metadata)
            lines.append(f"  {m.similarity:7.4f}  #{m.id:<8d} {m.prompt}" + (f"   [{extra}]" if extra else ""))
    lines.append(f"{len(results)} queries in {ms:.1f} ms")
    emit(data, a.json, "\n".join(lines))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    v = Vault.open(a.vault)
    info = v.info()
    index = get_index(v)
    info["index_state"] = index.describe()
    text = "\n".join([
        f"vault     {info['name']}  ({info['path']})",
        f"category  {info['category']}",
        f"encoder   {info['encoder']['name']}  dim {info['encoder']['dim']}  weights {info['encoder']['weights_hash'][:16] or '-'}",
        f"mode      {info['mode']}" + (f" ({info['text']['family']}, {info['text']['dim']}-d + pooled {info['text']['pooled_dim']})" if info["text"] else ""),
        f"entries   {info['entries']} live, {info['deleted']} deleted, {info['prompts']} unique prompts, {info['segments']} segments",
        f"size      {info['bytes']['total'] / 1e6:.2f} MB ({info['bytes']['thumbnails'] / 1e6:.2f} MB thumbnails, {info['bytes']['baked'] / 1e6:.2f} MB baked)",
        f"index     {index.spec}" + ("  (exact search)" if index.exact else ""),
    ] + ([f"tuned     {v.manifest.tuned.describe()}"] if v.manifest.tuned else []) + ([] if index.exact or index.state is None else _tuning_lines(index.state)))
    emit(info, a.json, text)
    return 0


def _tuning_lines(st: Any) -> list[str]:
    """How the index was tuned, measured on queries the partition never saw (see vault/index.py)."""
    lines = [f"tuning    nprobe {st.nprobe} (reach {st.reach}), k_factor {st.k_factor}: recall@5 {st.recall:.3f} on {st.tune_queries} held-out "
             f"queries, {st.gap_share:.2%} missed (similarity gap > 0.05), {st.exact_share:.2%} answered exactly "
             f"by the guard, ~{st.tune_ms:.2f} ms per query (exact search {st.exact_ms:.1f} ms)"]
    if not st.target_met:
        lines.append(f"warning   {st.note}")
    return lines


def cmd_verify(a: argparse.Namespace) -> int:
    """Exit 0: the vault checks out; 1: problems found (listed); 2: not a vault or cannot run."""
    try:
        v = Vault.open(a.vault)
    except (VaultCorruptError, VaultFormatError) as e:  # a vault that does not even open has problems to report
        emit({"vault": a.vault, "ok": False, "problems": [str(e)]}, a.json, f"{a.vault}: 1 problem(s)\n  {e}")
        return 1
    with progress_bar("verifying", "B", not a.json) as cb:
        problems = v.verify(progress=cb)
    emit({"vault": a.vault, "ok": not problems, "problems": problems}, a.json,
         f"{a.vault}: OK ({len(v)} entries, checksums match)" if not problems else f"{a.vault}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


def cmd_merge(a: argparse.Namespace) -> int:
    t = time.perf_counter()
    with progress_bar("merging", "entry", not a.json) as cb:
        report = merge(a.out, a.sources, category=a.category, drop_baked=a.drop_baked, overwrite=a.overwrite, progress=cb)
    return _finish(a.out, report, t, a)


def cmd_delete(a: argparse.Namespace) -> int:
    v = Vault.open(a.vault)
    matching = int(v.filter_mask(a.filter).sum())
    if matching and matching == len(v) and not a.yes:
        raise UsageError(f"the filter '{a.filter}' matches all {matching} live entries of {a.vault}: add --yes to delete "
                         "them all")
    n = delete_where(a.vault, a.filter)
    v = Vault.open(a.vault)
    emit({"vault": a.vault, "deleted": n, "entries": len(v)}, a.json, f"{a.vault}: deleted {n} entries matching '{a.filter}'; {len(v)} remain")
    return 0


def cmd_upgrade(a: argparse.Namespace) -> int:
    m = upgrade(a.vault)
    emit({"vault": a.vault, "format_version": m.format_version, "entries": m.entries}, a.json,
         f"{a.vault}: rewritten as format version {m.format_version} ({m.entries} entries, ids unchanged)")
    return 0


def cmd_rebuild(a: argparse.Namespace) -> int:
    t = time.perf_counter()
    if a.compact_:
        with progress_bar("compacting", "entry", not a.json) as cb:
            compact(a.vault, progress=cb)
    with progress_bar("indexing", "vec", not a.json) as cb:
        idx = rebuild_index(a.vault, spec=a.index, progress=cb, recall_target=a.recall)
    d = idx.describe()
    d["seconds"] = round(time.perf_counter() - t, 3)
    emit(d, a.json, f"{a.vault}: index {d['spec']}" + ("" if idx.exact else f", nprobe {d['nprobe']}, k_factor {d['k_factor']}, recall@5 {d['recall_at_5']:.3f}") + f" ({d['seconds']:.1f} s)")
    return 0


def cmd_pack(a: argparse.Namespace) -> int:
    from ..vault.package import pack

    t = time.perf_counter()
    with progress_bar("packing", "B", not a.json) as cb:
        card = pack(a.vault, a.out, author=a.author, licence=a.licence, description=a.description,
                    overwrite=a.overwrite, progress=cb)
    seconds = time.perf_counter() - t
    size = Path(a.out).stat().st_size
    emit({"package": a.out, "bytes": size, "seconds": round(seconds, 3), "card": card}, a.json,
         f"{a.out}: {card['entries']:,} entries, {size / 1e6:.1f} MB in {seconds:.1f} s ({size / 1e6 / max(seconds, 1e-9):.0f} MB/s)")
    return 0


def cmd_install(a: argparse.Namespace) -> int:
    from ..vault.package import describe_package, install

    if a.card_only:
        card = describe_package(a.package)
        emit(card, a.json, json.dumps(card, indent=1, ensure_ascii=False))
        return 0
    t = time.perf_counter()
    with progress_bar("checking and installing", "B", not a.json) as cb:
        path = install(a.package, a.to, name=a.name, overwrite=a.overwrite, progress=cb)
    seconds = time.perf_counter() - t
    v = Vault.open(path)
    emit({"vault": str(path), "entries": len(v), "seconds": round(seconds, 3)}, a.json,
         f"installed {path}: {len(v):,} entries, encoder {v.encoder.name}, {v.info()['mode']} mode "
         f"({seconds:.1f} s; every check passed)")
    return 0


def cmd_card(a: argparse.Namespace) -> int:
    from ..vault.package import write_card

    folder = write_card(a.vault, a.out, author=a.author, licence=a.licence, description=a.description)
    emit({"folder": str(folder)}, a.json, f"card written to {folder} (card.json, README.md, contact_sheet.webp)")
    return 0
