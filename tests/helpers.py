"""Small synthetic data and a toy text encoder shared by the tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"  # ../shared beside the checkout
COMFYUI = SHARED / "comfyui"


def clustered(n: int, d: int, clusters: int = 20, seed: int = 0, spread: float = 0.3,
              sample_seed: int | None = None) -> np.ndarray:
    """Unit vectors around `clusters` random centres (float32 [n, d]).

    `seed` fixes the centres; `sample_seed` (default: seed) draws the points, so a different
    sample_seed gives new points from the same distribution.
    """
    centres = np.random.default_rng(seed).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed if sample_seed is None else (seed, sample_seed))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ivf_vault(path: Path, n: int = 24000, d: int = 32, segment: int = 131072) -> Path:
    """A vault of `n` clustered entries (two per prompt, `segment` per segment file) with a small IVF fast-scan
    index, for index-path tests; `ivf_queries` draws queries from the same clusters."""
    from luna_vault.vault import EncoderFingerprint, build

    build(path, clustered(n, d, seed=5, clusters=150), [f"p{i // 2}" for i in range(n)],
          encoder=EncoderFingerprint("t", d, "w"), category="c", index="IVF256,PQ16x4fs", chunk=segment)
    return path


def ivf_queries(m: int, d: int = 32) -> np.ndarray:
    """`m` queries from the clusters of `ivf_vault` (none of them stored)."""
    return clustered(m, d, seed=5, clusters=150, sample_seed=9)


def toy_encode(prompt: str, dim: int = 8, tokens: int = 77, pooled_dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic fake text encoder: values depend only on the prompt; long prompts get 154 tokens."""
    seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    t = tokens * (2 if len(prompt) > 60 else 1)
    return torch.randn(t, dim, generator=g), torch.randn(pooled_dim, generator=g)


def make_folder(root: Path, n: int, seed: int = 0, sub: str = "eyes") -> list[Path]:
    """n small noisy PNGs of slightly different sizes under root/sub, each with a .txt prompt (7 distinct)."""
    rng = np.random.default_rng(seed)
    (root / sub).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        colour = rng.integers(0, 255, 3)
        arr = np.clip(colour + rng.normal(0, 20, (48 + i % 5, 40, 3)), 0, 255).astype(np.uint8)
        p = root / sub / f"img{i:04d}.png"
        Image.fromarray(arr).save(p)
        p.with_suffix(".txt").write_text(f"{sub} prompt {i % 7}")
        paths.append(p)
    return paths


def import_comfyui() -> None:
    """Make ../shared/comfyui importable for a test module (on the CPU, see `comfy_device`), or skip the whole module."""
    import sys

    import pytest

    if not (COMFYUI / "comfy_api").is_dir():
        pytest.skip("needs ComfyUI at ../shared/comfyui", allow_module_level=True)
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    try:
        import comfy.cli_args  # noqa: F401 (the import is the check)
    except ImportError as e:  # ComfyUI's requirements are not installed
        pytest.skip(f"ComfyUI cannot be imported here: {e}", allow_module_level=True)
    comfy_device()


def comfy_on_gpu() -> bool:
    """LUNA_TEST_COMFY_GPU=1 (scripts/gpu_checks.sh on a lent GPU): ComfyUI, in-process and as a server, places
    its models as it does for a user, text encoders and CLIP vision on the GPU; otherwise tests run it on the CPU."""
    return os.environ.get("LUNA_TEST_COMFY_GPU") == "1"


def comfy_device() -> None:
    """Tell the in-process ComfyUI where its models go (see `comfy_on_gpu`)."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = not comfy_on_gpu()


def tiny_open_clip(folder: Path) -> tuple[Path, Path, Path]:
    """A 2-layer ViT (32-d embeddings, 64 px) in open_clip's format: its config `luna-tiny-vit.json` (registered
    with open_clip) and two random weight files (seeds 0 and 1). Skips the test when open_clip cannot import."""
    import json

    import pytest

    try:
        import open_clip
    except RuntimeError as e:  # pip's CUDA torchvision beside the CPU torch: its ops do not register
        pytest.skip(f"open_clip cannot be imported here ({e}); with ../shared/comfyui-tools beside the checkout "
                    "(see ../shared/COMFYUI.md) conftest makes torchvision importable")
    from safetensors.torch import save_file

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    cfg = folder / "luna-tiny-vit.json"
    cfg.write_text(json.dumps(config))
    open_clip.add_model_config(str(cfg))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = open_clip.create_model("luna-tiny-vit")
        paths.append(folder / f"tiny-{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(paths[-1]))
    return cfg, paths[0], paths[1]


def small_package(folder: Path, n: int = 40, seed: int = 1) -> bytes:
    """The bytes of a .lvault package of a small text-mode vault 'eyes' built in `folder`."""
    from luna_vault.vault import EncoderFingerprint, build
    from luna_vault.vault.package import pack

    build(folder / "eyes.vault", clustered(n, 16, seed=seed), [f"eye {i}" for i in range(n)],
          encoder=EncoderFingerprint("enc", 16, "w"), category="eyes")
    pack(folder / "eyes.vault", folder / "eyes.lvault")
    return (folder / "eyes.lvault").read_bytes()
