"""Random-initialised diffusion models of the real architectures, for sampling tests in a real ComfyUI.

Shapes come from ComfyUI's own classes (built on the meta device, so nothing is allocated), and the
tensors are views into one random pool (../shared/comfyui-tools/make_clip_vision.build_sd): a full
SD1.5 checkpoint (UNet 860M, CLIP-L, VAE) is a few MB on disk and loads with weights_only=True.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from helpers import COMFYUI, SHARED, comfy_device

# comfy/model_detection.py's SD15 config: what CheckpointLoaderSimple detects from the keys we write
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
             "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
             "use_temporal_resblock": False}
# comfy/model_detection.py's SDXL config (the base model)
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _comfy() -> None:
    for p in (str(COMFYUI), str(SHARED / "comfyui-tools")):
        if p not in sys.path:
            sys.path.insert(0, p)
    comfy_device()


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _checkpoint_shapes(unet_config: dict[str, Any], clips: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """An original-format checkpoint's tensors: model.diffusion_model.* (ComfyUI's UNet), first_stage_model.*
    (its VAE) and each text encoder under its prefix (clip_l without text_projection, as SD checkpoints have)."""
    _comfy()
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from make_clip_text import text_shapes

    with torch.device("meta"):
        unet = UNetModel(**unet_config, dtype=torch.float16, operations=comfy.ops.disable_weight_init)
        vae = AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    shapes = _shapes(unet, "model.diffusion_model.")
    shapes.update(_shapes(vae, "first_stage_model."))
    for prefix, arch in clips.items():
        shapes.update({prefix + k: v for k, v in text_shapes(arch).items()
                       if not (arch == "clip_l" and k == "text_projection.weight")})
    return shapes


def sd15_shapes() -> dict[str, tuple[int, ...]]:
    """SD1.5: UNet 860M, CLIP-L (cond_stage_model), VAE."""
    return _checkpoint_shapes(SD15_UNET, {"cond_stage_model.transformer.": "clip_l"})


def sdxl_shapes() -> dict[str, tuple[int, ...]]:
    """SDXL base: UNet 2.6B, CLIP-L (conditioner.embedders.0) and CLIP-G (conditioner.embedders.1, in the
    layout ComfyUI converts OpenCLIP keys to), VAE."""
    return _checkpoint_shapes(SDXL_UNET, {"conditioner.embedders.0.transformer.": "clip_l",
                                          "conditioner.embedders.1.model.transformer.": "clip_g"})


def save_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> Path:
    """A random checkpoint (.ckpt: torch.save of {'state_dict': pool views}, a few MB) that
    CheckpointLoaderSimple loads with weights_only=True."""
    _comfy()
    from make_clip_vision import build_sd

    sd = build_sd(shapes, "pt", seed=seed, pool=1 << 22)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, path)
    return path


def save_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    return save_checkpoint(path, sd15_shapes(), seed)


def save_sdxl_checkpoint(path: Path, seed: int = 0) -> Path:
    return save_checkpoint(path, sdxl_shapes(), seed)
