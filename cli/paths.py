"""The files and vaults a command names, checked before anything heavy is imported (a wrong one is answered
at once), and vault names looked up in the vault folders of the ComfyUI the command belongs to.

A VAULT argument that exists, or has a folder in it (`./eyes.vault`, `out/eyes.vault`), is that path. Any
other plain name (`eyes` or `eyes.vault`) is the vault of that name in ComfyUI's vault folders
(core.comfy_home), as the nodes list them; a new one goes into the first.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.comfy_home import ComfyUINotFound, find_comfyui, vault_folders
from .common import UsageError

SUFFIX = ".vault"  # the same as vault.manifest.VAULT_SUFFIX, without importing the vault package
MANIFEST = "manifest.json"


def is_plain_name(arg: str) -> bool:
    """`eyes` or `eyes.vault`: no folder part, so it names a vault in ComfyUI's vault folders."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return bool(arg) and not any(s in arg for s in seps) and arg not in (".", "..") and not arg.startswith("~")


def _name(arg: str) -> str:
    return arg[: -len(SUFFIX)] if arg.endswith(SUFFIX) else arg


def _folders_text(folders: list[Path]) -> str:
    return ", ".join(str(f) for f in folders)


def _names_in(folders: list[Path]) -> list[str]:
    names: set[str] = set()
    for f in folders:
        if f.is_dir():
            names.update(_name(p.name) for p in f.glob(f"*{SUFFIX}") if (p / MANIFEST).is_file())
    return sorted(names)


def existing_vault(arg: str, comfyui: str | None) -> Path:
    """The folder of the vault a reading verb names (its contents are checked when it is opened)."""
    p = Path(arg).expanduser()
    if p.exists() or not is_plain_name(arg):
        if not p.exists():
            raise UsageError(f"no vault at {p}: no such folder; check the path (a vault is a NAME{SUFFIX} folder)")
        if not p.is_dir():
            raise UsageError(f"{p} is a file, not a vault (a vault is a NAME{SUFFIX} folder holding {MANIFEST})")
        return p
    root = find_comfyui(comfyui, required=False)
    if root is None:
        raise UsageError(f"no vault '{arg}' in the current folder, and no ComfyUI found to look in (pass --comfyui DIR "
                         f"or set $LUNA_COMFYUI); give the vault's path, e.g. models/vaults/{_name(arg)}{SUFFIX}")
    folders = vault_folders(root)
    for folder in folders:
        found = folder / f"{_name(arg)}{SUFFIX}"
        if (found / MANIFEST).is_file():
            return found
    have = ", ".join(_names_in(folders)) or "none yet"
    raise UsageError(f"no vault '{_name(arg)}' in {_folders_text(folders)} (vaults there: {have}) nor in the current "
                     "folder; check the name, or give the vault's path")


def new_vault(arg: str, comfyui: str | None, flag: str = "VAULT") -> Path:
    """Where a writing verb creates (or adds to) the vault it names: a path (or a name that exists here) must
    end in .vault; any other plain name is the vault of that name in ComfyUI's vault folders (the one that
    exists, else a new one in the first)."""
    p = Path(arg).expanduser()
    if p.exists() or not is_plain_name(arg):
        if not p.name.endswith(SUFFIX) or p.name == SUFFIX:
            raise UsageError(f"{flag} {arg}: a vault is a folder whose name ends in {SUFFIX} (ComfyUI lists only those); "
                             f"use {arg.rstrip('/')}{SUFFIX}")
        if p.exists() and not p.is_dir():
            raise UsageError(f"{flag} {arg} is a file; a vault is a NAME{SUFFIX} folder: choose another name")
        return p
    _check_plain(_name(arg), flag)
    try:
        root = find_comfyui(comfyui)
    except ComfyUINotFound as e:
        raise UsageError(f"{flag} '{arg}' names a vault in ComfyUI's models/vaults, but {e}; or give a path such as "
                         f"./{_name(arg)}{SUFFIX}") from None
    assert root is not None
    folders = vault_folders(root)
    for folder in folders:
        found = folder / f"{_name(arg)}{SUFFIX}"
        if found.exists():
            return found
    return folders[0] / f"{_name(arg)}{SUFFIX}"


def _check_plain(name: str, flag: str) -> None:
    from ..core.atomic import check_name

    try:
        check_name(name, f"{flag} name")
    except ValueError as e:
        raise UsageError(str(e)) from None


def vaults_folder(explicit: str | None, comfyui: str | None, flag: str) -> Path:
    """The folder of vaults a verb writes into: `explicit` (its --to / --vault-dir / --out), else the first
    vault folder of the ComfyUI this belongs to."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.exists() and not p.is_dir():
            raise UsageError(f"{flag} {explicit} is a file; give a folder to hold vaults")
        return p
    try:
        root = find_comfyui(comfyui)
    except ComfyUINotFound as e:
        raise UsageError(f"where should the vault go? {e}; or pass {flag} DIR") from None
    assert root is not None
    return vault_folders(root)[0]


def input_file(arg: str, what: str) -> Path:
    """A file a verb reads: it must exist and be a file."""
    p = Path(arg).expanduser()
    if p.is_dir():
        raise UsageError(f"{what} {arg} is a folder; give a file")
    if not p.is_file():
        raise UsageError(f"{what} {arg}: no such file")
    return p


def input_folder(arg: str, what: str) -> Path:
    p = Path(arg).expanduser()
    if p.is_file():
        raise UsageError(f"{what} {arg} is a file; give the folder that holds them")
    if not p.is_dir():
        raise UsageError(f"{what} {arg}: no such folder")
    return p


def output_file(arg: str, what: str, overwrite: bool | None = None) -> Path:
    """A file a verb writes: its folder must exist, it must not be a folder, and (when `overwrite` is not None)
    an existing file needs --overwrite."""
    p = Path(arg).expanduser()
    if p.is_dir():
        raise UsageError(f"{what} {arg} is a folder; give the name of a file (in it, or elsewhere)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{what} {arg}: the folder {parent} " + ("is a file" if parent.exists() else "does not exist")
                         + "; create it first or choose another place")
    if overwrite is False and p.exists():
        raise UsageError(f"{what} {arg} already exists; choose another name or pass --overwrite")
    return p


def output_folder(arg: str, what: str) -> Path:
    p = Path(arg).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {arg} is a file; give a folder (it is created when missing)")
    return p
