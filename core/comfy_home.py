"""The ComfyUI a command belongs to, and its vault folders, found from files (ComfyUI is never imported).

One rule for every verb: `--comfyui DIR` when given; else the ComfyUI whose `custom_nodes/` holds this
pack; else `$LUNA_COMFYUI`. Its vault folders are `models/vaults` and the `vaults:` entries of its
`extra_model_paths.yaml` (read as ComfyUI's utils/extra_config.py reads them): the entries of a section
marked `is_default: true` first (ComfyUI's way of saying "new files go here"), then `models/vaults`,
then the other entries. New vaults go into the first; names are looked up in all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

ENV = "LUNA_COMFYUI"
VAULTS = "vaults"
EXTRA_PATHS = "extra_model_paths.yaml"
PACK = Path(__file__).resolve().parents[1]  # this pack's folder (core/ sits in it)


class ComfyUINotFound(FileNotFoundError):
    """No ComfyUI folder could be found, or a folder named as one is not a ComfyUI."""


def is_comfyui(folder: Path) -> bool:
    """A ComfyUI checkout: it holds ComfyUI's model code (comfy/sd.py) and its folder table (folder_paths.py)."""
    return (folder / "comfy" / "sd.py").is_file() and (folder / "folder_paths.py").is_file()


def pack_comfyui(packs: Sequence[Path] | None = None) -> Path | None:
    """The ComfyUI whose custom_nodes/ holds this pack (`packs`: where the pack is; by default its folder as
    imported and with symlinks resolved), or None."""
    for folder in packs if packs is not None else (Path(os.path.abspath(__file__)).parents[1], PACK):
        if folder.parent.name == "custom_nodes" and is_comfyui(folder.parent.parent):
            return folder.parent.parent.resolve()
    return None


def find_comfyui(explicit: str | os.PathLike[str] | None = None, *, required: bool = True,
                 packs: Sequence[Path] | None = None) -> Path | None:
    """The ComfyUI to use (see the module doc). A folder named by --comfyui or $LUNA_COMFYUI that is not a
    ComfyUI is an error, never skipped. With required=False, None when there is none."""
    if explicit:
        return _checked(Path(explicit).expanduser(), f"--comfyui {explicit}")
    own = pack_comfyui(packs)
    if own is not None:
        return own
    if os.environ.get(ENV):
        return _checked(Path(os.environ[ENV]).expanduser(), f"${ENV}={os.environ[ENV]}")
    if not required:
        return None
    raise ComfyUINotFound(f"no ComfyUI found (this pack is not in a ComfyUI's custom_nodes and ${ENV} is not set); "
                          "pass --comfyui /path/to/ComfyUI or set $LUNA_COMFYUI")


def _checked(folder: Path, given: str) -> Path:
    if not folder.is_dir():
        raise ComfyUINotFound(f"{given}: no such folder; give the folder that holds ComfyUI's main.py")
    if not is_comfyui(folder):
        raise ComfyUINotFound(f"{given} is not a ComfyUI folder (no comfy/sd.py and folder_paths.py in it); "
                              "give the folder that holds ComfyUI's main.py")
    return folder.resolve()


def vault_folders(root: Path) -> list[Path]:
    """ComfyUI's vault folders, in its search order; the first is where new vaults go."""
    first, rest = extra_model_paths(root, VAULTS)
    own = (root / "models" / VAULTS).resolve()
    out: list[Path] = []
    for p in [*first, own, *rest]:
        if p not in out:
            out.append(p)
    return out


def extra_model_paths(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """The folders `extra_model_paths.yaml` in `root` names for `name`, read the way ComfyUI's
    utils/extra_config.py reads them: (those of sections marked is_default, the others). A file that
    cannot be read is an error naming it (ComfyUI would not start with it either)."""
    path = root / EXTRA_PATHS
    if not path.is_file():
        return [], []
    import yaml  # only when the file is there

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0] if str(e) else "unreadable"
        raise ComfyUINotFound(f"{path} cannot be read as YAML ({reason}); fix it (ComfyUI reads it too)") from e
    first: list[Path] = []
    rest: list[Path] = []
    for section in (config or {}).values() if isinstance(config, dict) else ():
        if not isinstance(section, dict) or not isinstance(section.get(name), str):
            continue
        base = section.get("base_path")
        if isinstance(base, str):
            base = os.path.expandvars(os.path.expanduser(base))
            base = base if os.path.isabs(base) else str(root / base)
        for line in section[name].split("\n"):
            if not line:
                continue
            full = os.path.join(base, line) if isinstance(base, str) else (line if os.path.isabs(line) else str(root / line))
            p = Path(os.path.normpath(full))
            if section.get("is_default") is True:
                first.insert(0, p)  # as ComfyUI: each default goes to the front
            else:
                rest.append(p)
    return first, rest
