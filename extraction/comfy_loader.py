"""ComfyUI used as a library (outside a running server): load the user's CLIP vision and CLIP files.

The CLI finds ComfyUI as every verb does (core.comfy_home: `--comfyui DIR`, the ComfyUI whose
`custom_nodes/` holds this pack, `$LUNA_COMFYUI`), and then loads `clip_vision/*.safetensors` and checkpoint CLIPs with
ComfyUI's own loaders, so a batch job embeds exactly as the node path does.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from ..core.comfy_home import ComfyUINotFound, find_comfyui
from .comfy_adapters import ComfyClipTextEncoder, ComfyClipVisionEncoder


def import_comfy(root: Path) -> Any:
    """Import ComfyUI's `comfy` package from `root` (CPU mode when there is no CUDA)."""
    import torch

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        cli_args = importlib.import_module("comfy.cli_args")
        if not torch.cuda.is_available():
            cli_args.args.cpu = True  # as `main.py --cpu`; model_management reads it at import
        importlib.import_module("comfy.clip_vision")
        return importlib.import_module("comfy.sd")
    except ImportError as e:
        raise ComfyUINotFound(f"ComfyUI at {root} could not be imported ({e}); install its requirements.txt") from e


def load_clip_vision(path: str | os.PathLike[str], comfyui: str | os.PathLike[str] | None = None) -> ComfyClipVisionEncoder:
    """A ComfyUI clip_vision file (e.g. CLIP-ViT-H-14 .safetensors) as an ImageEncoder."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"CLIP vision file {path} " + ("is a folder; give the model file" if Path(path).is_dir()
                                                               else "does not exist"))
    root = find_comfyui(comfyui)
    assert root is not None
    import_comfy(root)
    clip_vision = importlib.import_module("comfy.clip_vision")
    model = clip_vision.load(str(path))
    if model is None:
        raise ValueError(f"{path} is not a CLIP vision model ComfyUI recognises")
    return ComfyClipVisionEncoder(model, name=Path(path).stem)


def load_text_encoder(checkpoint: str | os.PathLike[str] | None = None, clip_files: list[str] | None = None,
                      clip_type: str = "stable_diffusion", comfyui: str | os.PathLike[str] | None = None) -> ComfyClipTextEncoder:
    """The CLIP of a checkpoint, or standalone CLIP files with a loader type (any of ComfyUI's own: stable_diffusion,
    sdxl, flux, sd3, qwen_image, hidream, lumina2, chroma, wan, hunyuan_image, ...), as a TextEncoder."""
    root = find_comfyui(comfyui)
    assert root is not None
    sd = import_comfy(root)
    if checkpoint:
        out = sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=True, output_model=False)
        clip = out[1]
        if clip is None:
            raise ValueError(f"checkpoint {checkpoint} has no CLIP text encoder")
    elif clip_files:
        types = [t.name.lower() for t in sd.CLIPType]  # this ComfyUI's loader types, whatever its version
        if clip_type.lower() not in types:
            raise ValueError(f"clip type {clip_type!r} unknown to the ComfyUI at {root}; choose one of {', '.join(types)}")
        ctype = sd.CLIPType[clip_type.upper()]
        clip = sd.load_clip(ckpt_paths=[str(p) for p in clip_files], clip_type=ctype)
    else:
        raise ValueError("give a checkpoint or CLIP files to load a text encoder from")
    return ComfyClipTextEncoder(clip)
