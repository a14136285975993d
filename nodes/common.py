"""What the Luna nodes share: model folders, vault names, progress and interruption, previews."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

import folder_paths
import numpy as np
import torch

from ..core.atomic import check_name
from ..core.comfy_home import ComfyUINotFound, extra_model_paths
from ..core.filecache import file_stamp
from ..core.text import printable
from ..vault.manifest import MANIFEST, VAULT_SUFFIX, vault_name

VAULTS = "vaults"
PROJECTORS = "luna_projectors"
AUTO = "auto-detect"
CATEGORY = "Luna"


@functools.lru_cache(maxsize=1)
def live_node_types() -> Any:
    """The node definitions of this ComfyUI (custom packs included) over the built-in table: the
    prompt reader then follows graphs made with whatever nodes the user has installed."""
    import nodes

    from ..extraction.comfy_graph import NodeTypes

    info: dict[str, Any] = {}
    for name, cls in list(nodes.NODE_CLASS_MAPPINGS.items()):
        try:
            if hasattr(cls, "GET_NODE_INFO_V1"):
                info[name] = cls.GET_NODE_INFO_V1()
            else:
                info[name] = {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                              "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
                              "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}
        except Exception:  # noqa: BLE001  (a broken custom node must not stop the reader: it keeps the table)
            continue
    return NodeTypes.builtin().merged(NodeTypes.from_object_info(info))


def register_model_folders() -> None:
    """Add models/vaults and models/luna_projectors (extra_model_paths.yaml entries for them also work). New vaults go
    where the CLI puts them too (core.comfy_home): a yaml folder marked `is_default` first, else models/vaults."""
    for name in (VAULTS, PROJECTORS):
        own = os.path.join(folder_paths.models_dir, name)
        folder_paths.add_model_folder_path(name, own, is_default=True)
        paths = folder_paths.folder_names_and_paths[name][0]
        try:
            defaults = [str(p) for p in extra_model_paths(Path(folder_paths.base_path), name)[0]]
        except ComfyUINotFound:
            defaults = []
        first = [p for p in paths if os.path.normpath(p) in defaults]
        paths[:] = first + [p for p in paths if p not in first]
    paths, _ = folder_paths.folder_names_and_paths[PROJECTORS]
    folder_paths.folder_names_and_paths[PROJECTORS] = (paths, {".safetensors"})  # not the training logs beside them


def vault_folders() -> list[Path]:
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(VAULTS)]
    except KeyError:
        return [Path(folder_paths.models_dir) / VAULTS]


def vault_names() -> list[str]:
    """Names of the vaults in every vaults folder (a vault is a NAME.vault folder with a manifest)."""
    names: set[str] = set()
    for folder in vault_folders():
        if folder.is_dir():
            names.update(vault_name(p) for p in folder.glob(f"*{VAULT_SUFFIX}") if (p / MANIFEST).is_file())
    return sorted(names)


def vault_path(name: str) -> Path:
    """The folder of an existing vault, or a clear error listing what there is."""
    check_name(name, "vault name")
    for folder in vault_folders():
        p = folder / f"{name}{VAULT_SUFFIX}"
        if (p / MANIFEST).is_file():
            return p
    known = ", ".join(vault_names()) or "none yet"
    raise ValueError(f"no vault named '{name}' in {', '.join(map(str, vault_folders()))} (vaults there: {known}); "
                     "build one with Luna Vault Builder or `luna-vault extract`, then refresh the page")


def new_vault_path(name: str) -> Path:
    """Where a vault of this name lives (existing) or will be created (first vaults folder)."""
    check_name(name, "vault name")
    for folder in vault_folders():
        p = folder / f"{name}{VAULT_SUFFIX}"
        if p.exists():
            return p
    folder = vault_folders()[0]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}{VAULT_SUFFIX}"


def vault_stamp(name: str) -> str:
    """Changes whenever the vault's manifest changes (every write replaces it)."""
    try:
        mtime, size = file_stamp(vault_path(name) / MANIFEST)
        return f"{mtime}:{size}"
    except (ValueError, OSError):
        return "missing"


def check_interrupt() -> None:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def progress_bar() -> Callable[[int, int], None]:
    """A (done, total) callback driving ComfyUI's progress bar on the running node."""
    import comfy.utils

    bars: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(comfy.utils.ProgressBar(max(1, total)))
        bars[0].update_absolute(done, max(1, total))

    return update


def as_image_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack previews of possibly different sizes into one IMAGE batch (padded to the largest)."""
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = torch.zeros(len(arrays), h, w, 3)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0], : a.shape[1]] = torch.from_numpy(a)
    return out


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def per_image(values: list[Any], n: int, what: str) -> list[Any]:
    """One value for every image, or exactly one per image."""
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{len(values)} {what} for {n} images: give one per image (one per line) or one for all")
    return values


def ui_text(*parts: Any) -> dict[str, Any]:
    """A node's text output for the UI, control characters escaped (prompts come from others' vaults)."""
    return {"text": [printable(str(p)) for p in parts]}


MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def loaded_file(hidden: Any, input_name: str) -> str | None:
    """The model file behind a node's input, read from the running prompt: the loader node that feeds
    `input_name` (e.g. CLIPVisionLoader's clip_name). Lets errors and vaults name the file the user picked,
    not only the architecture. None when the input does not come straight from a file loader."""
    prompt = getattr(hidden, "prompt", None)
    node = prompt.get(str(getattr(hidden, "unique_id", ""))) if isinstance(prompt, dict) else None
    link = node.get("inputs", {}).get(input_name) if isinstance(node, dict) else None
    if not (isinstance(link, list) and link):
        return None
    source = prompt.get(str(link[0]))
    inputs = source.get("inputs", {}) if isinstance(source, dict) else {}
    for value in inputs.values() if isinstance(inputs, dict) else ():
        if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
            return os.path.basename(value)
    return None
