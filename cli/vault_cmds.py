"""CLI verbs on vaults: build, append, info, verify, merge, delete, rebuild, upgrade, pack, install, card.

Each verb resolves and checks the paths it names first (cli.paths), then imports the vault library.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import UsageError, emit, progress_bar, read_embeddings, read_jsonl
from .paths import existing_vault, input_file, new_vault, output_file, output_folder, vaults_folder

if TYPE_CHECKING:
    import numpy as np

    from ..vault import EncoderFingerprint, Vault
    from ..vault.entries import AddReport


def _load_entries(embeddings: str, entries: str, thumbnails: bool) -> tuple[np.ndarray, list[Any], list[Any], list[Any] | None, dict[str, str]]:
    input_file(entries, "entries file")  # both files checked before either is read
    emb, header = read_embeddings(embeddings)
    rows = read_jsonl(entries)
    if len(rows) != len(emb):
        raise UsageError(f"{embeddings} has {len(emb)} embeddings but {entries} has {len(rows)} entries; "
                         "they must pair up line by line")
    prompts = [r.get("prompt") if r else None for r in rows]
    metas = [{k: v for k, v in r.items() if k not in ("prompt", "thumbnail")} if r else None for r in rows]
    thumbs = None
    if thumbnails:
        from ..vault.thumbnails import make_thumbnail

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
    from ..core.images import decode_rgb, read_image_file

    return decode_rgb(read_image_file(path), what=path.name)  # the image gate: format by its bytes, size bounded


def _fingerprint(dim: int, header: dict[str, str], name: str | None, weights_hash: str | None) -> EncoderFingerprint:
    from ..vault import EncoderFingerprint

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


def _warm_index(path: Path, show: bool) -> None:
    from ..vault import Vault, get_index

    with progress_bar("indexing", "vec", show) as cb:
        vault = Vault.open(path)
        if len(vault):
            get_index(vault, progress=cb)


def _finish(path: Path, report: AddReport, t0: float, a: argparse.Namespace) -> int:
    """After build/append/merge: build the search index now (unless --no-index), then report where it wrote."""
    from ..vault import Vault

    if not a.no_index:
        _warm_index(path, not a.json)
    seconds = time.perf_counter() - t0
    where = str(path.resolve())
    emit(_report_json(where, report, seconds, Vault.open(path)), a.json, _report_text(where, report, seconds))
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    path = new_vault(a.vault, a.comfyui)
    from ..vault import build
    from ..vault.store import check_new_vault_folder

    check_new_vault_folder(path, a.overwrite)  # before the files are read
    emb, prompts, metas, thumbs, header = _load_entries(a.embeddings, a.entries, a.thumbnails)
    fp = _fingerprint(emb.shape[1], header, a.encoder_name, a.encoder_hash)
    t = time.perf_counter()
    with progress_bar("building", "entry", not a.json) as cb:
        report = build(path, emb, prompts, metas, thumbs, encoder=fp, category=a.category, overwrite=a.overwrite,
                       index=a.index, progress=cb)
    return _finish(path, report, t, a)


def cmd_append(a: argparse.Namespace) -> int:
    path = existing_vault(a.vault, a.comfyui)
    from ..vault import Vault, append

    Vault.open(path)  # a vault, before the files are read
    emb, prompts, metas, thumbs, header = _load_entries(a.embeddings, a.entries, a.thumbnails)
    fp = _fingerprint(emb.shape[1], header, a.encoder_name, a.encoder_hash)
    t = time.perf_counter()
    with progress_bar("appending", "entry", not a.json) as cb:
        report = append(path, emb, prompts, metas, thumbs, encoder=fp, progress=cb)
    return _finish(path, report, t, a)


def cmd_info(a: argparse.Namespace) -> int:
    path = existing_vault(a.vault, a.comfyui)
    from ..vault import Vault, get_index

    v = Vault.open(path)
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
    ] + ([f"tuned     {v.manifest.tuned.describe()}"] if v.manifest.tuned else []) + ([] if index.exact or index.state is None else _tuning_lines(index))
      + ([f"advice    {index.advice}"] if index.advice else []))
    emit(info, a.json, text)
    return 0


def _tuning_lines(index: Any) -> list[str]:
    """How the index was tuned, measured on queries the partition never saw (see vault/index/)."""
    st = index.state
    lines = [f"probing   {index.rule.summary()}: ~{st.mean_probe:.0f} lists per query (a fixed nprobe would need {st.reach})",
             f"tuning    k_factor {st.k_factor}: recall@5 {st.recall:.3f} on {st.tune_queries} held-out "
             f"queries, {st.gap_share:.2%} missed (similarity gap > 0.05), {st.exact_share:.2%} answered exactly "
             f"by the guard, ~{st.tune_ms:.2f} ms per query (exact search {st.exact_ms:.1f} ms)"]
    if st.outliers:
        lines.append(f"outliers  {len(st.outliers):,} entries least like their list's centroid, searched for every query")
    if not st.target_met:
        lines.append(f"warning   {st.note}")
    return lines


def cmd_verify(a: argparse.Namespace) -> int:
    """Exit 0: the vault checks out; 1: problems found (listed); 2: not a vault or cannot run."""
    path = existing_vault(a.vault, a.comfyui)
    from ..core.errors import VaultCorruptError, VaultFormatError
    from ..vault import Vault

    try:
        v = Vault.open(path)
    except (VaultCorruptError, VaultFormatError) as e:  # a vault that does not even open has problems to report
        emit({"vault": a.vault, "ok": False, "problems": [str(e)]}, a.json, f"{a.vault}: 1 problem(s)\n  {e}")
        return 1
    with progress_bar("verifying", "B", not a.json) as cb:
        problems = v.verify(progress=cb)
    emit({"vault": a.vault, "ok": not problems, "problems": problems}, a.json,
         f"{a.vault}: OK ({len(v)} entries, checksums match)" if not problems else f"{a.vault}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


def cmd_merge(a: argparse.Namespace) -> int:
    out = new_vault(a.out, a.comfyui, "OUT")
    sources = [existing_vault(s, a.comfyui) for s in a.sources]
    from ..vault import merge
    from ..vault.store import check_new_vault_folder

    check_new_vault_folder(out, a.overwrite)
    if any(s.resolve() == out.resolve() for s in sources):
        raise UsageError(f"merge writes a new vault: {out} is also one of the sources; give another OUT")
    t = time.perf_counter()
    with progress_bar("merging", "entry", not a.json) as cb:
        report = merge(out, sources, category=a.category, drop_baked=a.drop_baked, overwrite=a.overwrite, progress=cb)
    return _finish(out, report, t, a)


def cmd_delete(a: argparse.Namespace) -> int:
    path = existing_vault(a.vault, a.comfyui)
    from ..vault import Vault, delete_where
    from ..vault.filters import parse_filter

    if not parse_filter(a.filter):
        raise UsageError("--filter is empty: say which entries to delete, e.g. --filter 'quality<0.3'")
    v = Vault.open(path)
    matching = int(v.filter_mask(a.filter).sum())
    if matching and matching == len(v) and not a.yes:
        raise UsageError(f"the filter '{a.filter}' matches all {matching} live entries of {a.vault}: add --yes to delete "
                         "them all")
    n = delete_where(path, a.filter)
    v = Vault.open(path)
    emit({"vault": a.vault, "deleted": n, "entries": len(v)}, a.json, f"{a.vault}: deleted {n} entries matching '{a.filter}'; {len(v)} remain")
    return 0


def cmd_upgrade(a: argparse.Namespace) -> int:
    path = existing_vault(a.vault, a.comfyui)
    from ..core.errors import VaultFormatError
    from ..vault import Vault, upgrade

    try:
        m = Vault.open(path).manifest  # opens only in the current format version: nothing to do
        upgraded = False
    except VaultFormatError:  # an older version (a newer one or a foreign file is refused again by upgrade)
        m, upgraded = upgrade(path), True
    text = (f"{a.vault}: rewritten as format version {m.format_version} ({m.entries} entries, ids unchanged)" if upgraded
            else f"{a.vault}: already format version {m.format_version}; nothing to upgrade")
    emit({"vault": a.vault, "format_version": m.format_version, "entries": m.entries, "upgraded": upgraded}, a.json, text)
    return 0


def cmd_rebuild(a: argparse.Namespace) -> int:
    path = existing_vault(a.vault, a.comfyui)
    if a.recall is not None and not 0 < a.recall <= 1:
        raise UsageError(f"--recall is a recall@5 target between 0 and 1 (e.g. 0.98), got {a.recall}")
    from ..vault import Vault, compact, rebuild_index
    from ..vault.index import RECALL_TARGET

    Vault.open(path)
    t = time.perf_counter()
    if a.compact_:
        with progress_bar("compacting", "entry", not a.json) as cb:
            compact(path, progress=cb)
    with progress_bar("indexing", "vec", not a.json) as cb:
        idx = rebuild_index(path, spec=a.index, progress=cb, recall_target=RECALL_TARGET if a.recall is None else a.recall)
    d = idx.describe()
    d["seconds"] = round(time.perf_counter() - t, 3)
    emit(d, a.json, f"{a.vault}: index {d['spec']}" + ("" if idx.exact else f", nprobe {d['nprobe']}, k_factor {d['k_factor']}, recall@5 {d['recall_at_5']:.3f}") + f" ({d['seconds']:.1f} s)")
    return 0


def cmd_pack(a: argparse.Namespace) -> int:
    path = existing_vault(a.vault, a.comfyui)
    out = output_file(a.out, "-o", overwrite=a.overwrite)
    from ..vault.package import pack

    t = time.perf_counter()
    with progress_bar("packing", "B", not a.json) as cb:
        card = pack(path, out, author=a.author, licence=a.licence, description=a.description,
                    overwrite=a.overwrite, progress=cb)
    seconds = time.perf_counter() - t
    size = out.stat().st_size
    emit({"package": str(out.resolve()), "bytes": size, "seconds": round(seconds, 3), "card": card}, a.json,
         f"{out.resolve()}: {card['entries']:,} entries, {size / 1e6:.1f} MB in {seconds:.1f} s ({size / 1e6 / max(seconds, 1e-9):.0f} MB/s)")
    return 0


def cmd_install(a: argparse.Namespace) -> int:
    package = input_file(a.package, "package")
    if a.card_only:
        from ..vault.package import describe_package

        card = describe_package(package)
        emit(card, a.json, json.dumps(card, indent=1, ensure_ascii=False))
        return 0
    to = vaults_folder(a.to, a.comfyui, "--to")
    from ..vault import Vault
    from ..vault.package import install

    t = time.perf_counter()
    with progress_bar("checking and installing", "B", not a.json) as cb:
        path = install(package, to, name=a.name, overwrite=a.overwrite, progress=cb).resolve()
    seconds = time.perf_counter() - t
    v = Vault.open(path)
    emit({"vault": str(path), "entries": len(v), "seconds": round(seconds, 3)}, a.json,
         f"installed {path}: {len(v):,} entries, encoder {v.encoder.name}, {v.info()['mode']} mode "
         f"({seconds:.1f} s; every check passed)")
    return 0


def cmd_card(a: argparse.Namespace) -> int:
    path = existing_vault(a.vault, a.comfyui)
    out = output_folder(a.out, "-o") if a.out else None
    from ..vault.package import write_card

    folder = write_card(path, out, author=a.author, licence=a.licence, description=a.description)
    emit({"folder": str(folder)}, a.json, f"card written to {folder} (card.json, README.md, contact_sheet.webp)")
    return 0
