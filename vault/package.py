"""Vault packages: one file to share a vault (`pack`), checked in full before it appears (`install`).

A package NAME.lvault is a zip whose members are all stored (not compressed: safetensors barely
compress, and a stored member cannot be a decompression bomb):

    card.json               what the vault is (counts, encoder, text family, checkpoints and LoRAs used),
                            the size and SHA-256 of every vault file, and the packager's claims (name,
                            author, licence, description)
    README.md               the card for people, with the contact sheet
    contact_sheet.webp      previews of some entries
    vault/manifest.json     the vault itself: its manifest and the files it lists, nothing else
    vault/seg-*.safetensors
    vault/del-*.safetensors

A package is untrusted input. `install` reads only those names (no paths, no links, no duplicates,
no compressed or encrypted members, nothing unlisted), checks every size against the card and the
manifest before reading, hashes each file as it is written into a temporary folder beside the
target, opens and verifies the vault there (checksums, unit norms, prompt ids, metadata, every
stored preview's header), and only then swaps the folder into place (one atomic exchange, under
the target vault's writer lock, so a writer of the old vault finishes first and a later one sees
the new vault). A failure leaves nothing behind; a kill -9 leaves a staging folder that the next
install of that name removes. The card is advisory: what install keeps and shows is recomputed
from the vault (a card whose facts disagree is refused), the packager's words are kept as claims.
No search index travels: each machine builds its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..core import strict_json
from ..core.atomic import FOLDER_MODE, atomic_write, atomic_write_bytes, check_name, fsync_dir, writer_lock
from ..core.errors import VaultError, VaultExistsError
from ..core.nofollow import open_plain
from .manifest import DELETED_NAME, MANIFEST, MAX_MANIFEST_BYTES, SEGMENT_NAME, VAULT_SUFFIX, read_manifest
from .staging import exchange, hold, lock_held, remove_leftovers, staging_pattern
from .store import Vault
from .thumbnails import THUMBNAIL_SIZE, decode_thumbnail, thumbnail_size

PACKAGE_SUFFIX = ".lvault"
PACKAGE_FORMAT = "luna-vault-package"
PACKAGE_VERSION = 1
CARD, README, SHEET, VAULT_DIR = "card.json", "README.md", "contact_sheet.webp", "vault/"
MAX_CARD_BYTES = 1 << 20
MAX_README_BYTES = 1 << 20
MAX_SHEET_BYTES = 4 << 20
MAX_MEMBERS = 2 * 1000 + 8  # the manifest allows 1,000 segments, plus one deletion list and the card files
MAX_PACKAGE_BYTES = 1 << 40
MAX_DIRECTORY_ENTRY = 512  # bytes one member takes in the central directory at most (ours: ~120)
SHEET_COLUMNS, SHEET_ROWS = 8, 6
TOP = 20  # checkpoints / LoRAs listed on a card
CHUNK = 1 << 22
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

ProgressFn = Callable[[int, int], None]
log = logging.getLogger(__name__)


class PackageError(VaultError):
    """A package is malformed, damaged or unsafe; nothing was installed."""


# ---- the card ------------------------------------------------------------------------------------
def _counts(vault: Vault, keys: tuple[str, ...]) -> dict[str, int]:
    """How many live entries name each value of the first of `keys` they have (lists count each item)."""
    live = vault.live_mask()
    c: Counter[str] = Counter()
    for i, meta in enumerate(vault.iter_metadata()):
        if not live[i]:
            continue
        for key in keys:
            value = meta.get(key)
            if value is None:
                continue
            for v in value if isinstance(value, list) else [value]:
                c[str(v.get("name", v) if isinstance(v, dict) else v)[:200]] += 1  # LoRAs: {"name", "strength"}
            break
    return dict(c.most_common(TOP))


def contact_sheet_webp(vault: Vault, columns: int = SHEET_COLUMNS, rows: int = SHEET_ROWS) -> bytes | None:
    """Previews of up to columns x rows live entries, spread over the vault, as one WebP (None: no previews)."""
    if not vault.has_thumbnails or not len(vault):
        return None
    from .preview import entry_thumbnails

    live = np.flatnonzero(vault.live_mask())
    ids = live[np.linspace(0, len(live) - 1, min(len(live), columns * rows)).astype(np.int64)]
    cells = entry_thumbnails(vault, ids, THUMBNAIL_SIZE)
    n, s = len(cells), THUMBNAIL_SIZE
    cols = min(columns, n)
    grid = np.full((((n + cols - 1) // cols) * (s + 2) + 2, cols * (s + 2) + 2, 3), 24 / 255, np.float32)
    for k, cell in enumerate(cells):
        r, c = divmod(k, cols)
        grid[2 + r * (s + 2): 2 + r * (s + 2) + s, 2 + c * (s + 2): 2 + c * (s + 2) + s] = cell
    buf = io.BytesIO()
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(buf, format="WEBP", quality=85)
    return buf.getvalue()


# what a card states about its vault: install recomputes each from the vault and refuses a card that disagrees
FACTS = ("category", "entries", "prompts", "mode", "encoder", "text", "checkpoints", "loras", "thumbnails", "vault_id")
MAX_CLAIMS, MAX_CLAIM_CHARS = 16, 4000


def make_card(vault: Vault, files: list[dict[str, Any]] | None = None, *, author: str = "", licence: str = "",
              description: str = "") -> dict[str, Any]:
    """What a vault is, for someone deciding whether to use it; `files` (name, bytes, sha256) when packing.

    The facts are computed from the vault; what only the packager can say (name, author, licence,
    description, date) is under "claims"."""
    m = vault.manifest
    return {
        "format": PACKAGE_FORMAT, "version": PACKAGE_VERSION, "category": m.category,
        "entries": len(vault), "prompts": vault.n_prompts, "mode": "baked" if m.text else "text",
        "encoder": {"name": m.encoder.name, "dim": m.encoder.dim, "weights_hash": m.encoder.weights_hash},
        "text": None if m.text is None else {"family": m.text.family, "dim": m.text.dim, "pooled_dim": m.text.pooled_dim},
        "checkpoints": _counts(vault, ("checkpoint", "ckpt_name", "model")),
        "loras": _counts(vault, ("loras", "lora")),
        "thumbnails": vault.has_thumbnails, "vault_id": m.vault_id, "files": files or [],
        "claims": {"name": vault.name, "author": author, "licence": licence, "description": description,
                   "created": time.strftime("%Y-%m-%d")},
    }


def card_claims(card: dict[str, Any]) -> dict[str, Any]:
    """The packager's own statements on a card (under "claims", or top-level in cards that predate it, and any
    field we do not know), cut to short single values: shown as claims, never trusted."""
    raw = dict(card.get("claims") or {}) if isinstance(card.get("claims"), dict) else {}
    for k, v in card.items():
        if k not in FACTS + ("format", "version", "files", "claims", "_files", "verified", "claims_checked"):
            raw.setdefault(k, v)
    out: dict[str, Any] = {}
    for k, v in list(raw.items())[:MAX_CLAIMS]:
        if isinstance(v, str):
            out[str(k)[:60]] = v[:MAX_CLAIM_CHARS]
        elif v is None or isinstance(v, (bool, int, float)):
            out[str(k)[:60]] = v
    return out


def checked_card(vault: Vault, packaged: dict[str, Any], files: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The card install keeps: every fact recomputed from the installed vault (PackageError where the package's
    card said otherwise: it was edited), the packager's claims under "claims"."""
    claims = card_claims(packaged)
    card = make_card(vault, files)
    for key in FACTS:
        if key in packaged and packaged[key] != card[key]:
            said, found = json.dumps(packaged[key])[:80], json.dumps(card[key])[:80]
            raise PackageError(f"the card says {key} {said}, the vault holds {found}: the card was edited; "
                               "do not trust this package")
    card["claims"] = {**claims, "name": claims.get("name", name)}
    card["verified"] = True  # every fact above was recomputed from the vault on install; "claims" were not
    return card


def card_readme(card: dict[str, Any], sheet: bool) -> str:
    """The card as Markdown."""
    def table(title: str, counts: dict[str, int]) -> list[str]:
        if not counts:
            return []
        return [f"| {title} | entries |", "|---|---|", *(f"| {k.replace('|', '/')} | {v} |" for k, v in counts.items()), ""]

    claims = card.get("claims") or {}
    text = card["text"]
    lines = [
        f"# {claims.get('name') or card.get('name') or 'vault'}", "",
        f"{claims['description']} *(the packager's description)*" if claims.get("description")
        else f"A Luna vault of {card['category']}.", "",
        f"- **{card['entries']:,} entries**, {card['prompts']:,} prompts, category `{card['category']}`",
        f"- image encoder: `{card['encoder']['name']}` ({card['encoder']['dim']}-d); query it with the same CLIP vision model",
        f"- mode: {card['mode']}" + (f" ({text['family']} conditioning baked)" if text else " (prompts only: any model family)"),
        f"- author: {claims.get('author') or 'not given'}; licence: {claims.get('licence') or 'not given'}; packed "
        f"{claims.get('created') or 'on an unknown date'} (as the packager states them)",
        "",
    ]
    if sheet:
        lines += [f"![some of its entries]({SHEET})", ""]
    lines += table("checkpoint", card["checkpoints"]) + table("LoRA", card["loras"])
    if card["files"]:
        lines += ["Files (SHA-256):", "", *(f"- `{f['name']}` {f['bytes']:,} bytes `{f['sha256']}`" for f in card["files"]), ""]
    return "\n".join(lines)


def write_card(vault_path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, author: str = "",
               licence: str = "", description: str = "") -> Path:
    """card.json, README.md and contact_sheet.webp of a vault, into `out` (default: the vault folder)."""
    vault = Vault.open(vault_path)
    folder = Path(out) if out is not None else vault.path
    folder.mkdir(parents=True, exist_ok=True)
    card = make_card(vault, author=author, licence=licence, description=description)
    sheet = contact_sheet_webp(vault)
    # into the vault folder only under its writer lock (a writer's cleanup would take our temp files for its own)
    with writer_lock(folder) if folder == vault.path else contextlib.nullcontext():
        if sheet:
            atomic_write_bytes(folder / SHEET, sheet)
        atomic_write_bytes(folder / README, card_readme(card, sheet is not None).encode())
        atomic_write_bytes(folder / CARD, json.dumps(card, indent=1, ensure_ascii=False).encode())
    return folder


# ---- pack ------------------------------------------------------------------------------------------
def pack(vault_path: str | os.PathLike[str], out: str | os.PathLike[str], *, author: str = "", licence: str = "",
         description: str = "", overwrite: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Write the vault as one package file; returns its card. The vault's writers wait while it is read."""
    src = Path(vault_path)
    out = Path(out)
    if out.exists() and not overwrite:
        raise VaultExistsError(f"{out} already exists; choose another name or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out.parent, staging_pattern(out.name, ("tmp",)))  # what interrupted packs of it left
    with writer_lock(src):
        vault = Vault.open(src)
        m = vault.manifest
        if m.deleted_count:
            raise VaultError(f"vault '{vault.name}' has {m.deleted_count} deleted entries, whose data is still in its "
                             f"files; run `luna-vault rebuild {src} --compact` first so a package never carries them")
        listed = list(m.segments)
        with open_plain(src / MANIFEST) as f:
            manifest_bytes = f.read(MAX_MANIFEST_BYTES + 1)
        total = sum(s.bytes for s in listed) + len(manifest_bytes)
        files = [{"name": VAULT_DIR + MANIFEST, "bytes": len(manifest_bytes),
                  "sha256": hashlib.sha256(manifest_bytes).hexdigest()}]
        files += [{"name": VAULT_DIR + s.file, "bytes": s.bytes, "sha256": s.sha256} for s in listed]
        card = make_card(vault, files, author=author, licence=licence, description=description)
        sheet = contact_sheet_webp(vault)

        def write(tmp: Path) -> None:
            done = 0
            with open(tmp, "wb") as fh:
                hold(fh.fileno())  # marks the temp file live: a later pack removes it only once this process is gone
                with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                    z.writestr(CARD, json.dumps(card, indent=1, ensure_ascii=False))
                    z.writestr(README, card_readme(card, sheet is not None))
                    if sheet:
                        z.writestr(SHEET, sheet)
                    z.writestr(VAULT_DIR + MANIFEST, manifest_bytes)
                    for s in listed:  # the manifest's checksums were verified when the segment was written
                        info = zipfile.ZipInfo(VAULT_DIR + s.file, date_time=time.localtime()[:6])
                        with open_plain(src / s.file) as f, z.open(info, "w", force_zip64=True) as dst:
                            while block := f.read(CHUNK):
                                dst.write(block)
                                done += len(block)
                                if progress:
                                    progress(done, total)

        atomic_write(out, write)
    return card


# ---- install ---------------------------------------------------------------------------------------
def _allowed(name: str) -> bool:
    if name in (CARD, README, SHEET, VAULT_DIR + MANIFEST):
        return True
    if not name.startswith(VAULT_DIR):
        return False
    rest = name[len(VAULT_DIR):]
    return bool(SEGMENT_NAME.match(rest) or DELETED_NAME.match(rest))


def _members(z: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The package's members by name, after the checks that need no reading."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise PackageError(f"{len(infos)} files in the package; a vault package has at most {MAX_MEMBERS}")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if not _allowed(name):
            raise PackageError(f"unexpected file {name!r} in the package: a vault package holds only {CARD}, {README}, "
                               f"{SHEET} and the vault's own files under {VAULT_DIR} (no folders, paths or other files)")
        if name in members:
            raise PackageError(f"{name!r} appears twice in the package")
        if info.flag_bits & 0x1:
            raise PackageError(f"{name!r} is encrypted; packages are never encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise PackageError(f"{name!r} is compressed; `luna-vault pack` stores every file as it is")
        if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):
            raise PackageError(f"{name!r} is not a plain file (a link or a device)")
        members[name] = info
    for need in (CARD, VAULT_DIR + MANIFEST):
        if need not in members:
            raise PackageError(f"the package has no {need}; it was not made by `luna-vault pack`")
    if sum(i.file_size for i in infos) > MAX_PACKAGE_BYTES:
        raise PackageError("the package declares more than 1 TiB of files")
    return members


def _read_small(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise PackageError(f"{info.filename} is {info.file_size} bytes, over the {limit}-byte limit")
    with z.open(info) as f:
        data = f.read(limit + 1)
    if len(data) != info.file_size:
        raise PackageError(f"{info.filename} is not the size the package declares")
    return data


def read_card(z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> dict[str, Any]:
    """The card, checked: its file list names exactly the package's vault files, with sizes and checksums."""
    try:
        card = strict_json.loads(_read_small(z, members[CARD], MAX_CARD_BYTES))
    except strict_json.StrictJSONError as e:
        raise PackageError(f"{CARD} is not a card this program reads: {e}") from e
    if not isinstance(card, dict) or card.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{CARD} is not a Luna vault package card")
    if card.get("version") != PACKAGE_VERSION:
        raise PackageError(f"package version {card.get('version')!r}; this luna-vault reads version {PACKAGE_VERSION}: "
                           "update luna-vault")
    files = card.get("files")
    if not isinstance(files, list) or not files:
        raise PackageError(f"{CARD} lists no files")
    listed: dict[str, dict[str, Any]] = {}
    for f in files:
        ok = (isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("bytes"), int)
              and not isinstance(f.get("bytes"), bool) and 0 <= f["bytes"] <= MAX_PACKAGE_BYTES
              and isinstance(f.get("sha256"), str) and _SHA256.match(f["sha256"]))
        if not ok:
            raise PackageError(f"{CARD}: a file entry is malformed: {str(f)[:200]}")
        if f["name"] in listed:
            raise PackageError(f"{CARD} lists {f['name']!r} twice")
        listed[f["name"]] = f
    vault_members = {n for n in members if n.startswith(VAULT_DIR)}
    if set(listed) != vault_members:
        extra, missing = sorted(vault_members - set(listed)), sorted(set(listed) - vault_members)
        raise PackageError("the card and the package disagree: " + "; ".join(
            ([f"not on the card: {', '.join(extra[:5])}"] if extra else [])
            + ([f"missing from the package: {', '.join(missing[:5])}"] if missing else [])))
    for name, f in listed.items():
        if members[name].file_size != f["bytes"]:
            raise PackageError(f"{name} is {members[name].file_size} bytes in the package, the card says {f['bytes']}")
    card["_files"] = listed
    return card


def _copy_checked(z: zipfile.ZipFile, info: zipfile.ZipInfo, dst: Path, sha256: str, done: list[int],
                  total: int, progress: ProgressFn | None) -> None:
    h = hashlib.sha256()
    n = 0
    with z.open(info) as src, open(dst, "wb") as out:
        while block := src.read(CHUNK):
            n += len(block)
            if n > info.file_size:
                raise PackageError(f"{info.filename} is longer than declared")
            h.update(block)
            out.write(block)
            done[0] += len(block)
            if progress:
                progress(done[0], total)
        out.flush()
        os.fsync(out.fileno())
    if n != info.file_size:
        raise PackageError(f"{info.filename} is shorter than declared ({n} of {info.file_size} bytes)")
    if h.hexdigest() != sha256:
        raise PackageError(f"{info.filename}: checksum differs from the card (damaged or altered)")


def check_thumbnails(vault: Vault) -> None:
    """Every stored preview's header is a small image of a preview format (no pixel is decoded)."""
    for s in vault.segments:
        if s.thumb_blob is None:
            continue
        for i in range(s.n):
            data = vault.thumbnail(s.entry_base + i)
            if not data:
                continue
            try:
                thumbnail_size(data)
            except ValueError as e:
                raise PackageError(f"entry {s.entry_base + i}: {e}") from e


def install(package: str | os.PathLike[str], to: str | os.PathLike[str], *, name: str | None = None,
            overwrite: bool = False, progress: ProgressFn | None = None) -> Path:
    """Check a package in full and install its vault as TO/NAME.vault (NAME: the card's, unless given)."""
    try:
        return _install(Path(package), Path(to), name, overwrite, progress)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:  # e.g. a CRC that does not match its bytes
        raise PackageError(f"{package} is damaged: {e}") from e


def _open_zip(package: Path) -> zipfile.ZipFile:
    """The package as a zip, after its central directory's size was read from the end record: a directory
    with more members than a package can hold is refused before zipfile parses (and allocates) it."""
    try:
        with open(package, "rb") as f:
            _check_directory_size(f)
        return zipfile.ZipFile(package)
    except (zipfile.BadZipFile, OSError) as e:
        raise PackageError(f"{package} is not a readable package ({e})") from e


def _check_directory_size(f: Any) -> None:
    """PackageError when the zip's end record declares more than MAX_MEMBERS members or a central directory
    larger than MAX_MEMBERS of our entries; other oddities are left to zipfile's own checks."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    tail_len = min(size, 22 + 0xFFFF + 20)  # end record + the longest comment + the zip64 locator before it
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return
    count, cd_size = struct.unpack("<H", tail[at + 10 : at + 12])[0], struct.unpack("<I", tail[at + 12 : at + 16])[0]
    if (count == 0xFFFF or cd_size == 0xFFFFFFFF) and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
        (offset,) = struct.unpack("<Q", tail[at - 12 : at - 4])  # the zip64 end record
        if offset <= size - 56:
            f.seek(offset)
            rec = f.read(56)
            if rec[:4] == b"PK\x06\x06":
                count, cd_size = struct.unpack("<QQ", rec[32:48])
    if count > MAX_MEMBERS or cd_size > MAX_MEMBERS * MAX_DIRECTORY_ENTRY:
        raise PackageError(f"the package's directory declares {count:,} files in {cd_size:,} bytes; a vault package "
                           f"has at most {MAX_MEMBERS:,} files (refused before reading the directory)")


def _install(package: Path, to: Path, name: str | None, overwrite: bool, progress: ProgressFn | None) -> Path:
    with _open_zip(package) as z:
        members = _members(z)
        packaged_card = read_card(z, members)
        card_name = card_claims(packaged_card).get("name", "")
        target_name = check_name(name if name is not None else str(card_name), "vault name")
        target = to / f"{target_name}{VAULT_SUFFIX}"
        if os.path.lexists(target) and not overwrite:
            raise VaultExistsError(f"{target} already exists; install under another --name, or pass --overwrite")
        if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
            raise PackageError(f"{target} exists and is not a vault folder; move it away first")
        to.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(to, target_name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target_name}.installing-", dir=to))
        try:
            tmp.chmod(FOLDER_MODE)  # it becomes the vault: the mode every other vault folder has, not mkdtemp's 0700
            with writer_lock(tmp):  # the staging folder is live while this process is; a later run removes it after
                _stage(z, members, packaged_card, tmp, target_name, progress)
                with writer_lock(target) if target.is_dir() else contextlib.nullcontext():
                    if os.path.lexists(target) and not overwrite:  # created meanwhile
                        raise VaultExistsError(f"{target} already exists; install under another --name, or pass --overwrite")
                    _swap_in(tmp, target, to, target_name)  # writers of the old vault wait; later ones see the new
            fsync_dir(to)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the staging folder, or the old vault swapped into its place
    return target


def _clean_leftovers(to: Path, target_name: str, target: Path) -> None:
    """Remove what interrupted installs of this name left; an old vault caught between the two renames of the
    fallback swap (no RENAME_EXCHANGE) goes back into place first."""
    pattern = staging_pattern(target_name, ("installing", "replaced"))
    if not os.path.lexists(target):
        for e in sorted(os.scandir(to), key=lambda e: e.name):
            old = Path(e.path) / "vault"
            if e.name.startswith(f".{target_name}.replaced-") and pattern.match(e.name) and old.is_dir() \
                    and not old.is_symlink() and not lock_held(Path(e.path) / ".lock"):
                os.replace(old, target)
                log.warning("restored %s from an install interrupted while replacing it", target)
                break
    remove_leftovers(to, pattern)


def _swap_in(tmp: Path, target: Path, to: Path, target_name: str) -> None:
    """Put the staged vault at `target` in one step; the old vault, if any, ends up at `tmp`."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    if exchange(tmp, target):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target_name}.replaced-", dir=to))
    with writer_lock(old):  # a kill between the two renames leaves the old vault here, put back by the next run
        os.replace(target, old / "vault")
        os.replace(tmp, target)
    os.replace(old, tmp)


def _stage(z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], packaged_card: dict[str, Any], tmp: Path,
           target_name: str, progress: ProgressFn | None) -> None:
    """Copy, check and open the packaged vault in `tmp`; write the card recomputed from it (the package's own
    card only as claims) and its README."""
    listed = packaged_card.pop("_files")
    manifest = members[VAULT_DIR + MANIFEST]
    manifest_bytes = _read_small(z, manifest, MAX_MANIFEST_BYTES)
    if hashlib.sha256(manifest_bytes).hexdigest() != listed[manifest.filename]["sha256"]:
        raise PackageError(f"{manifest.filename}: checksum differs from the card (damaged or altered)")
    (tmp / MANIFEST).write_bytes(manifest_bytes)
    try:
        m = read_manifest(tmp)
    except VaultError as e:
        raise PackageError(f"the packaged manifest is not valid: {e}") from e
    files = {s.file: s for s in m.segments} | ({m.deleted.file: m.deleted} if m.deleted else {})
    packaged = {n[len(VAULT_DIR):] for n in listed if n != VAULT_DIR + MANIFEST}
    if set(files) != packaged:
        raise PackageError("the packaged manifest lists other files than the package holds")
    total = sum(members[VAULT_DIR + f].file_size for f in files)
    done = [0]
    for f, info in files.items():
        member = members[VAULT_DIR + f]
        if member.file_size != info.bytes or listed[member.filename]["sha256"] != info.sha256:
            raise PackageError(f"{f}: the card and the packaged manifest disagree on its size or checksum")
        _copy_checked(z, member, tmp / f, info.sha256, done, total, progress)
    try:
        vault = Vault.open(tmp)
        problems = vault.verify(checksums=False)  # norms, prompt ids, metadata, prompts; checksums were checked above
    except VaultError as e:
        raise PackageError(f"the packaged vault does not open: {e}") from e
    if problems:
        raise PackageError("the packaged vault is damaged: " + "; ".join(problems[:5]))
    check_thumbnails(vault)
    card = checked_card(vault, packaged_card, [listed[n] for n in sorted(listed)], target_name)
    del vault
    sheet = None
    if SHEET in members:
        sheet = _read_small(z, members[SHEET], MAX_SHEET_BYTES)
        try:
            decode_thumbnail(sheet)
        except ValueError as e:
            raise PackageError(f"{SHEET}: {e}") from e
        (tmp / SHEET).write_bytes(sheet)
    (tmp / README).write_text(card_readme(card, sheet is not None), encoding="utf-8")  # ours, not the packager's
    (tmp / CARD).write_text(json.dumps(card, indent=1, ensure_ascii=False), encoding="utf-8")
    fsync_dir(tmp)


def describe_package(package: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of a package after the structural checks, nothing extracted: all of it is still the packager's
    word ("verified": false); `install` recomputes the facts from the vault."""
    try:
        with _open_zip(Path(package)) as z:
            card = read_card(z, _members(z))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise PackageError(f"{package} is not a readable package ({e})") from e
    card.pop("_files")
    out = {k: card[k] for k in ("format", "version") + FACTS + ("files",) if k in card}
    out["claims"] = card_claims(card)
    out["verified"] = False
    return out


# ---- uploads: the card from a package's first bytes -----------------------------------------------
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local header (30 bytes), then its name and extra
_ZIP_MAGIC = b"PK\x03\x04"
_HEADER_ROOM = 512  # zip headers per member (local + central, names, zip64 extras), with room to spare


def card_from_head(head: bytes) -> dict[str, Any] | None:
    """The card of a package read from the first bytes of its file, or None while more bytes are needed.

    For a package streamed to a server: `pack` writes card.json first (stored, its sizes in its header),
    so a stream that is not a zip is refused at its 4th byte and one that is not a package once its card
    has arrived, long before the rest. The full checks still run at `install`.
    """
    if not head.startswith(_ZIP_MAGIC[:len(head)]):
        raise PackageError(f"not a package: a .lvault file is a zip, whose first bytes are 50 4b 03 04 ('PK'); this "
                           f"file starts with {bytes(head[:4]).hex(' ')}")
    if len(head) < _LOCAL_HEADER.size:
        return None
    _, _, flags, method, _, _, _, csize, usize, nlen, xlen = _LOCAL_HEADER.unpack_from(head)
    start = _LOCAL_HEADER.size + nlen + xlen
    if len(head) < _LOCAL_HEADER.size + nlen:
        return None
    name = bytes(head[_LOCAL_HEADER.size:_LOCAL_HEADER.size + nlen])
    if name != CARD.encode():
        raise PackageError(f"the package's first file is {name[:60].decode('utf-8', 'replace')!r}, not {CARD}: it was not written by `luna-vault "
                           "pack` (a package from elsewhere can be checked with `luna-vault install`)")
    if method != zipfile.ZIP_STORED or flags & 0x9 or csize != usize or usize > MAX_CARD_BYTES:
        raise PackageError(f"{CARD} is compressed, encrypted, of unknown size or over {MAX_CARD_BYTES} bytes: "
                           "`luna-vault pack` stores it plainly")
    if len(head) < start + usize:
        return None
    try:
        card = json.loads(bytes(head[start:start + usize]))
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, an over-long number, deep nesting
        raise PackageError(f"{CARD} is not valid JSON ({type(e).__name__})") from e
    if not isinstance(card, dict) or card.get("format") != PACKAGE_FORMAT or card.get("version") != PACKAGE_VERSION:
        raise PackageError(f"{CARD} is not a version-{PACKAGE_VERSION} Luna vault package card")
    files = card.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_MEMBERS or not all(
            isinstance(f, dict) and type(f.get("bytes")) is int and 0 <= f["bytes"] <= MAX_PACKAGE_BYTES for f in files):
        raise PackageError(f"{CARD} does not list the package's files with their sizes")
    return card


def package_bytes_limit(card: dict[str, Any]) -> int:
    """The most bytes a package with this card (from `card_from_head`) can hold: the vault files it lists,
    the card, README and contact sheet at their limits, and the zip's headers."""
    files = card["files"]
    return (sum(f["bytes"] for f in files) + MAX_CARD_BYTES + MAX_README_BYTES + MAX_SHEET_BYTES
            + _HEADER_ROOM * (len(files) + 4))


__all__ = ["PACKAGE_SUFFIX", "PackageError", "card_from_head", "card_readme", "contact_sheet_webp", "describe_package",
           "install", "make_card", "pack", "package_bytes_limit", "write_card"]
