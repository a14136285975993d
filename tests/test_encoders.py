"""Encoders built from small random-initialised models, loaded through the real loading code."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import COMFYUI, SHARED, make_folder, tiny_open_clip
from luna_vault.extraction.encoders import RandomImageEncoder, clip_preprocess, probe_image, resize_crop
from luna_vault.vault import EncoderMismatchError


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 90, 70, 3, generator=g)


def test_random_encoder_deterministic_normalised_and_fingerprinted() -> None:
    a, b, c = RandomImageEncoder(64, seed=1), RandomImageEncoder(64, seed=1), RandomImageEncoder(64, seed=2)
    x = _images()
    ea, eb = a.encode(x), b.encode(x)
    assert ea.shape == (3, 64) and torch.equal(ea, eb)
    torch.testing.assert_close(ea.norm(dim=1), torch.ones(3))
    assert a.fingerprint == b.fingerprint and a.fingerprint.weights_hash != c.fingerprint.weights_hash
    a.fingerprint.check_compatible(b.fingerprint)
    with pytest.raises(EncoderMismatchError, match="disagree on a test image"):
        a.fingerprint.check_compatible(c.fingerprint)
    with pytest.raises(ValueError, match="empty"):
        a.encode(torch.zeros(0, 8, 8, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        a.encode(torch.zeros(8, 8, 3))


def test_resize_crop_matches_comfyui_steps() -> None:
    x = _images(1)
    out = resize_crop(x, 32)
    assert out.shape == (1, 32, 32, 3)
    assert torch.equal(out * 255, (out * 255).round())  # 8-bit levels
    same = resize_crop(out, 32)
    assert torch.equal(same, out)  # already the right size: untouched, as in ComfyUI
    assert probe_image().shape == (1, 224, 224, 3)


@pytest.fixture(scope="module")
def open_clip_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return tiny_open_clip(tmp_path_factory.mktemp("open_clip"))


def test_open_clip_from_local_weights(open_clip_model: tuple[Path, Path, Path]) -> None:
    from luna_vault.extraction.open_clip_encoder import OpenClipImageEncoder

    cfg, w0, w1 = open_clip_model
    a = OpenClipImageEncoder("luna-tiny-vit", w0, config=cfg)
    b = OpenClipImageEncoder("luna-tiny-vit", w0, config=cfg)
    c = OpenClipImageEncoder("luna-tiny-vit", w1, config=cfg)
    x = _images()
    ea = a.encode(x)
    assert ea.shape == (3, 32) and a.input_size == 64
    torch.testing.assert_close(ea.norm(dim=1), torch.ones(3))
    assert torch.equal(ea, b.encode(x))
    assert not torch.allclose(ea, c.encode(x))
    assert a.fingerprint.weights_hash == b.fingerprint.weights_hash != c.fingerprint.weights_hash
    a.fingerprint.check_compatible(b.fingerprint)
    with pytest.raises(EncoderMismatchError):
        a.fingerprint.check_compatible(c.fingerprint)
    # the weights really came from the file: the model's tensors equal the saved ones
    from safetensors.torch import load_file

    saved = load_file(str(w1))
    key = "visual.conv1.weight"
    assert torch.equal(c.model.state_dict()[key].cpu(), saved[key])  # the model sits on the GPU where there is one
    with pytest.raises(FileNotFoundError, match="nothing is downloaded|no downloads"):
        OpenClipImageEncoder("luna-tiny-vit", w0.with_name("missing.safetensors"), config=cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_checks.sh runs it on a lent one)")
def test_cuda_pipeline_matches_cpu(open_clip_model: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The CUDA path (pinned uint8 batches, preprocessing on the GPU, one batch in flight, fp16 autocast)
    stores the same embeddings, in the same rows, as the CPU path."""
    from luna_vault.extraction.open_clip_encoder import OpenClipImageEncoder
    from luna_vault.extraction.pipeline import Extractor
    from luna_vault.vault import Vault

    cfg, w0, _ = open_clip_model
    make_folder(tmp_path / "data", 60)
    vaults = {}
    for device in ("cpu", "cuda"):
        enc = OpenClipImageEncoder("luna-tiny-vit", w0, device=device, config=cfg)
        report = Extractor(enc, vault=tmp_path / f"{device}.vault", batch_size=8, workers=2).run(tmp_path / "data")
        assert report.total_added == 60 and not report.skipped
        v = Vault.open(tmp_path / f"{device}.vault")
        vaults[device] = {v.metadata(i)["source"]: v.embeddings([i])[0].astype(np.float32) for i in range(len(v))}
    assert vaults["cpu"].keys() == vaults["cuda"].keys()
    for src, e in vaults["cpu"].items():
        np.testing.assert_allclose(vaults["cuda"][src], e, atol=1e-2)  # fp16 autocast on the GPU


def _make_clip_vision(path: Path, seed: int) -> Path:
    sys.path.insert(0, str(SHARED / "comfyui-tools"))
    from make_clip_vision import ARCHS, build_sd, save, vision_shapes  # noqa: F401

    save(build_sd(vision_shapes("vitl"), "pt", seed=seed), str(path), "pt")
    return path


@pytest.mark.slow
@pytest.mark.skipif(not (COMFYUI / "comfy" / "sd.py").is_file(), reason="needs ComfyUI at ../shared/comfyui")
def test_comfyui_loader_as_a_library(tmp_path: Path) -> None:
    from luna_vault.extraction.comfy_loader import load_clip_vision

    p0, p1 = _make_clip_vision(tmp_path / "vitl-0.pt", 0), _make_clip_vision(tmp_path / "vitl-1.pt", 1)
    enc = load_clip_vision(p0, comfyui=COMFYUI)
    x = _images(1)
    e1, e2 = enc.encode(x), enc.encode(x)
    assert e1.shape == (1, 768) and torch.equal(e1, e2)
    torch.testing.assert_close(e1.norm(dim=1), torch.ones(1))
    # our resize_crop + ComfyUI's encode == ComfyUI's own preprocessing of the full image
    torch.testing.assert_close(enc.encode(resize_crop(x, enc.input_size)), e1, atol=1e-5, rtol=0)
    import comfy.clip_vision as cv  # imported by the loader

    torch.testing.assert_close(clip_preprocess(x, 224), cv.clip_preprocess(x, size=224))
    fp0 = enc.fingerprint
    assert fp0.dim == 768 and fp0.probe is not None
    other = load_clip_vision(p1, comfyui=COMFYUI)
    assert other.fingerprint.weights_hash != fp0.weights_hash
    with pytest.raises(EncoderMismatchError):
        fp0.check_compatible(other.fingerprint)
    assert np.isfinite(np.asarray(fp0.probe)).all()
