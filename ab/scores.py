"""Scores of one output against its reference, on the detailed region.

- clip_similarity: cosine of the two crops' embeddings in the vault's own CLIP vision model;
- ciede2000: mean CIEDE2000 colour difference in CIE Lab (scikit-image), lower = closer colours;
- hue_distance: half the L1 distance (0..1) of hue histograms weighted by saturation x value per pixel,
  lower = closer (grey regions carry almost no weight, so their hue noise cannot dominate);
- vault_agreement: share of the vault's top-k prompts that the output and the reference have in common;
- ssim: structural similarity to the first pass (the region before the detail pass): near 1 means the pass
  changed little, which with a strong image prompt shows spatial over-constraint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HUE_BINS = 36


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as float32 [H, W, 3] in 0..1."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def region_of(image: np.ndarray, region: tuple[int, int, int, int] | None) -> np.ndarray:
    if region is None:
        return image
    x, y, w, h = region
    return image[y:y + h, x:x + w]


def output_region(output: np.ndarray, ref_size: tuple[int, int], region: tuple[int, int, int, int] | None,
                  ) -> tuple[np.ndarray, str]:
    """The detailed region of an output: cut from a full-size output, taken whole when it is the crop, else
    resized to the region (said in the note)."""
    w, h = (region[2], region[3]) if region else ref_size
    oh, ow = output.shape[:2]
    if region is not None and (ow, oh) == ref_size:
        return region_of(output, region), ""
    if (ow, oh) == (w, h):
        return output, ""
    im = Image.fromarray((np.clip(output, 0, 1) * 255).round().astype(np.uint8)).resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0, f"output {ow}x{oh} resized to the {w}x{h} region"


def ciede2000(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(np.mean(deltaE_ciede2000(rgb2lab(a), rgb2lab(b))))


def hue_histogram(a: np.ndarray, bins: int = HUE_BINS) -> np.ndarray:
    """Hue histogram weighted by saturation x value, per pixel: it sums to the region's amount of colour
    (1 for pure colours, 0 for grey). Not renormalised, so the faint hue noise of a grey or dark region
    cannot count as much as a saturated iris."""
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(a)
    weights = (hsv[..., 1] * hsv[..., 2]).ravel()
    hist, _ = np.histogram(hsv[..., 0].ravel(), bins=bins, range=(0.0, 1.0), weights=weights)
    return hist / max(1, weights.size)


def hue_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(hue_histogram(a) - hue_histogram(b)).sum())


def ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """SSIM over the colour channels (None for regions under 7 px, the smallest window)."""
    from skimage.metrics import structural_similarity

    if min(a.shape[:2]) < 7:
        return None
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def pixel_scores(reference: np.ndarray, output: np.ndarray) -> dict[str, Any]:
    """The scores that need no model: colour and structure."""
    if reference.shape != output.shape:
        raise ValueError(f"reference region {reference.shape} and output region {output.shape} differ in shape")
    return {"ciede2000": ciede2000(reference, output), "hue_distance": hue_distance(reference, output),
            "ssim": ssim(reference, output)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(1e-12, float(np.linalg.norm(a) * np.linalg.norm(b))))


def agreement(ref_prompts: list[int], out_prompts: list[int], k: int) -> float:
    """|top-k prompts in common| / k (prompt ids, so two entries of one prompt count once)."""
    return len(set(ref_prompts[:k]) & set(out_prompts[:k])) / float(k)
