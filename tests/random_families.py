"""Random-initialised diffusion models and VAEs of the newer families, small, for sampling tests in a real ComfyUI.

Each diffusion model is ComfyUI's own class (built on the meta device: nothing is allocated) with a
config that comfy/model_detection.py reads back from the tensors we write: depth is counted from the
block keys and, where the detection reads widths from the weights (SD3's MMDiT, Wan, HunyuanImage),
the model is narrow too. Text inputs keep their real widths (T5 4096, Qwen2.5-VL 3584, Gemma 2 2304),
so the conditioning that reaches the model is what the real one gets. Files are views into one random
pool (../shared/comfyui-tools/make_clip_vision.build_sd): a few MB on disk, loaded with weights_only.

HiDream cannot be made small this way: its detection fixes 16 + 32 blocks of width 2560 with a
mixture of experts (17B parameters) whatever the file holds, so its sampling is not tested.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import torch

from random_models import _comfy

# family -> (module, class, the config model_detection gives for the tensors), each at one block per stack
DIT: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen_image": ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel",
                   {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1}),
    "lumina2": ("comfy.ldm.lumina.model", "NextDiT",
                {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304,
                 "n_layers": 1, "n_heads": 24, "n_kv_heads": 8, "qk_norm": True, "axes_dims": [32, 32, 32],
                 "axes_lens": [300, 512, 512]}),
    "chroma": ("comfy.ldm.chroma.model", "Chroma",
               {"image_model": "chroma", "in_channels": 64, "patch_size": 2, "out_channels": 64, "context_in_dim": 4096,
                "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 1, "depth_single_blocks": 1,
                "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "in_dim": 64, "out_dim": 3072,
                "hidden_dim": 5120, "n_layers": 5}),
    "wan": ("comfy.ldm.wan.model", "WanModel",
            {"image_model": "wan2.1", "dim": 128, "out_dim": 16, "num_heads": 1, "ffn_dim": 256, "num_layers": 1,
             "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
             "eps": 1e-6, "in_dim": 16, "model_type": "t2v"}),
    "hunyuan_image": ("comfy.ldm.hunyuan_video.model", "HunyuanVideo",
                      {"image_model": "hunyuan_video", "in_channels": 64, "patch_size": [1, 1], "out_channels": 64,
                       "vec_in_dim": None, "axes_dim": [64, 64], "meanflow": False, "context_in_dim": 3584,
                       "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 1,
                       "theta": 256, "qkv_bias": True, "byt5": True, "guidance_embed": False}),
    "sd3": ("comfy.ldm.modules.diffusionmodules.mmdit", "OpenAISignatureMMDITWrapper",
            {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
             "adm_in_channels": 2048, "context_embedder_config": {"target": "torch.nn.Linear",
                                                                  "params": {"in_features": 4096, "out_features": 128}},
             "num_patches": 36864, "pos_embed_max_size": 192, "qk_norm": "rms", "pos_embed_scaling_factor": None,
             "x_block_self_attn_layers": []}),
}
# ComfyUI's VAE classes for each family's latent space (comfy/sd.py VAE picks them by marker keys)
VAE_OF = {"qwen_image": "wan21", "wan": "wan21", "lumina2": "flux", "chroma": "flux", "sd3": "flux",
          "hunyuan_image": "hunyuan_image"}


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def diffusion_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """The tensors of family's small diffusion model (ComfyUI's class, on the meta device); checked to read back,
    through ComfyUI's own detection, as the config it was built with."""
    _comfy()
    import comfy.model_detection
    import comfy.ops

    module, cls, config = DIT[family]
    with torch.device("meta"):
        model = getattr(importlib.import_module(module), cls)(**config, dtype=torch.float16,
                                                             operations=comfy.ops.disable_weight_init)
    shapes = _meta_shapes(model)
    detected = comfy.model_detection.detect_unet_config({k: torch.empty(s, device="meta") for k, s in shapes.items()}, "")
    differs = {k: (v, detected.get(k)) for k, v in config.items() if detected.get(k) != v and k != "image_model"}
    if differs:
        raise AssertionError(f"{family}: ComfyUI would read this model back differently: {differs}")
    return shapes


def vae_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """A VAE's tensors in the layout comfy/sd.py's VAE recognises: 'flux' (16-channel AutoencoderKL, also SD3's),
    'wan21' (Wan 2.1's causal 3D VAE, Qwen-Image's too), 'hunyuan_image' (HunyuanImage 2.1's 32x VAE)."""
    _comfy()
    with torch.device("meta"):
        if kind == "flux":
            from comfy.ldm.models.autoencoder import AutoencodingEngine

            ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
            vae = AutoencodingEngine(
                regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
                decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
        elif kind == "wan21":
            from comfy.ldm.wan.vae import WanVAE

            vae = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0)
        elif kind == "hunyuan_image":
            from comfy.ldm.models.autoencoder import AutoencodingEngine

            ddconfig = {"block_out_channels": [128, 256, 512, 512, 1024, 1024], "in_channels": 3, "out_channels": 3,
                        "num_res_blocks": 2, "ffactor_spatial": 32, "downsample_match_channel": True,
                        "upsample_match_channel": True, "z_channels": 64}
            vae = AutoencodingEngine(
                regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                encoder_config={"target": "comfy.ldm.hunyuan_video.vae.Encoder", "params": ddconfig},
                decoder_config={"target": "comfy.ldm.hunyuan_video.vae.Decoder", "params": ddconfig})
        else:
            raise KeyError(kind)
    return _meta_shapes(vae)


def save_random(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> Path:
    """A random state dict (torch.save of pool views, a few MB) that ComfyUI's loaders read with weights_only=True."""
    _comfy()
    from make_clip_vision import build_sd

    pool = 1 << 22
    # build_sd fills every '*norm*.weight' with ones as a vector, and wants the rows of a large tensor: hide matrices
    # named norm (adaLN projections such as Qwen's norm_out.linear) from the first, and give it [1, N] as [N]
    names = {k: k.replace("norm", "n0rm") if len(s) > 1 else k for k, s in shapes.items()}
    big_rows = {k for k, s in shapes.items() if len(s) > 1 and s[0] == 1 and math.prod(s) > pool}
    sd = build_sd({names[k]: s[1:] if k in big_rows else s for k, s in shapes.items()}, "pt", seed=seed, pool=pool)
    sd = {k: sd[names[k]].unsqueeze(0) if k in big_rows else sd[names[k]] for k in shapes}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path
