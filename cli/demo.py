"""`luna-vault demo`: the whole Path-1 loop on generated data, needing no downloaded weights.

Generates eye crops whose prompts describe them (iris colour, pupil, lighting), embeds them with a
small random-initialised CNN, builds a vault with thumbnails, queries it with jittered crops the
vault has not seen, turns the matches into conditioning with a toy text encoder, and prints timings.
An untrained encoder has no semantic quality: it can only match colour and layout statistics.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from ..core.comfy_home import find_comfyui, vault_folders
from ..core.conditioning import EncodingCache, blend, retrieved_conditioning, text_lookup
from ..extraction.encoders import RandomImageEncoder
from ..vault import Vault, build, get_index, search
from ..vault.index import exact_search
from ..vault.thumbnails import make_thumbnail
from .common import emit, progress_bar
from .paths import output_folder

COLOURS = {
    "blue": (40, 90, 200), "green": (40, 150, 70), "brown": (110, 60, 25), "hazel": (140, 110, 40),
    "grey": (130, 135, 140), "amber": (210, 140, 20), "violet": (120, 50, 170), "red": (190, 30, 40),
}
PUPILS = {"small": 0.25, "round": 0.4, "dilated": 0.6}
LIGHT = {"soft light": (235, 215, 200), "warm light": (250, 200, 150), "cold light": (180, 200, 235), "dark": (90, 70, 70)}


def draw_eye(colour: str, pupil: str, light: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A stylised eye crop; `rng` jitters position, size and noise so no two crops are identical."""
    img = Image.new("RGB", (size, size), LIGHT[light])
    d = ImageDraw.Draw(img)
    cx, cy = size / 2 + rng.uniform(-6, 6), size / 2 + rng.uniform(-6, 6)
    w, h = size * rng.uniform(0.36, 0.44), size * rng.uniform(0.2, 0.26)
    d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=(245, 242, 238), outline=(60, 40, 40), width=2)
    r = h * rng.uniform(0.85, 1.0)
    iris = tuple(int(np.clip(c + rng.normal(0, 10), 0, 255)) for c in COLOURS[colour])
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=iris)
    pr = r * PUPILS[pupil]
    d.ellipse([cx - pr, cy - pr, cx + pr, cy + pr], fill=(10, 10, 10))
    d.ellipse([cx + r * 0.2, cy - r * 0.5, cx + r * 0.45, cy - r * 0.25], fill=(255, 255, 255))
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_dataset(n: int, seed: int) -> tuple[list[Image.Image], list[str], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    images, prompts, metas = [], [], []
    keys = [(c, p, li) for c in COLOURS for p in PUPILS for li in LIGHT]
    for i in range(n):
        c, p, li = keys[rng.integers(len(keys))]
        images.append(draw_eye(c, p, li, rng))
        prompts.append(f"close-up of a {c} eye, {p} pupil, {li}, detailed iris")
        metas.append({"source": f"demo/{i:05d}.png", "checkpoint": ["demoXL", "ponyDemo"][i % 2], "seed": int(seed * 100000 + i),
                      "quality": round(float(rng.uniform(0.5, 1.0)), 3), "colour": c})
    return images, prompts, metas


def to_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images]))


def toy_text_encoder(prompt: str, dim: int = 768, tokens: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in for a CLIP text encoder (CLIP-L shapes): a fixed random vector per word, position-mixed."""
    words = prompt.lower().replace(",", " ").split()[: tokens - 2]
    cond = torch.zeros(tokens, dim)
    for pos, word in enumerate(words, start=1):
        g = torch.Generator().manual_seed(int(hashlib.sha256(word.encode()).hexdigest()[:8], 16))
        cond[pos] = torch.randn(dim, generator=g) + 0.01 * pos
    pooled = cond[1 : len(words) + 1].mean(0)
    return cond, pooled


def run_demo(a: argparse.Namespace) -> int:
    t_all = time.perf_counter()
    keep, work = _where(a)
    work.mkdir(parents=True, exist_ok=True)
    vault_path = work / "demo-eyes.vault"
    timings: dict[str, float] = {}
    try:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        encoder = RandomImageEncoder(dim=256, seed=a.seed)

        t = time.perf_counter()
        images, prompts, metas = make_dataset(a.n, a.seed)
        timings["generate_s"] = time.perf_counter() - t

        t = time.perf_counter()
        with progress_bar("embedding", "img", not a.json) as cb:
            chunks = []
            for start in range(0, a.n, 128):
                chunks.append(encoder.encode(to_batch(images[start : start + 128])))
                if cb:
                    cb(min(start + 128, a.n), a.n)
        emb = torch.cat(chunks).numpy()
        timings["encode_s"] = time.perf_counter() - t
        thumbs = [make_thumbnail(im, 64) for im in images]

        t = time.perf_counter()
        report = build(vault_path, emb, prompts, metas, thumbs, encoder=encoder.fingerprint, category="eyes", overwrite=True)
        vault = Vault.open(vault_path)
        index = get_index(vault)
        timings["build_s"] = time.perf_counter() - t

        # queries: new crops drawn from the same descriptions (not in the vault)
        q_images, q_prompts, _ = make_dataset(a.queries, a.seed + 1)
        q = encoder.encode(to_batch(q_images)).numpy()
        search(vault, q[:1], k=a.k)  # warm-up
        lat = []
        results = []
        for row in q:
            t = time.perf_counter()
            results.extend(search(vault, row, k=a.k))
            lat.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        exact_search(vault, q, a.k, None)
        exact_ms = (time.perf_counter() - t) * 1e3 / len(q)
        colour_hits = sum(r.matches[0].metadata["colour"] in qp for r, qp in zip(results, q_prompts)) / len(results)
        exact_hits = sum(r.matches[0].prompt == qp for r, qp in zip(results, q_prompts)) / len(results)

        cache = EncodingCache()
        lookup = text_lookup(toy_text_encoder, cache, "toy-clip-l")
        t = time.perf_counter()
        retrieved = retrieved_conditioning(results[:8], lookup, temperature=0.05)
        user = [[toy_text_encoder("close-up of an eye, detailed")[0][None], {"pooled_output": toy_text_encoder("eye")[1][None]}]]
        blended = blend(user, retrieved, "average", 0.3)
        timings["conditioning_ms"] = (time.perf_counter() - t) * 1e3
        retrieved_conditioning(results[:8], lookup, temperature=0.05)  # served from the cache now

        p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        summary = {
            "vault": str(vault_path.resolve()) if keep else None,  # else it was made in a temporary folder, removed now
            "entries": len(vault), "prompts": vault.n_prompts, "skipped": len(report.skipped),
            "encoder": encoder.fingerprint.name, "dim": vault.dim, "index": index.describe(),
            "bytes_per_entry": vault.disk_bytes() / len(vault),
            "timings": {**{key: round(v, 3) for key, v in timings.items()},
                        "encode_images_per_s": round(a.n / timings["encode_s"], 1),
                        "build_entries_per_s": round(a.n / timings["build_s"], 1),
                        "query_p50_ms": round(p50, 3), "query_p99_ms": round(p99, 3),
                        "brute_force_batched_ms_per_query": round(exact_ms, 3)},
            "top1_same_iris_colour": round(colour_hits, 3), "top1_same_prompt": round(exact_hits, 3),
            "chance_same_iris_colour": round(1 / len(COLOURS), 3),
            "retrieved_conditioning": list(retrieved[0][0].shape), "blended_conditioning": list(blended[0][0].shape),
            "text_cache": {"hits": cache.hits, "misses": cache.misses},
            "examples": [{"query": qp, **r.to_json()} for qp, r in zip(q_prompts[:3], results[:3])],
        }
        lines = [
            "Luna Vault demo: generated eye crops -> random-initialised CNN -> vault -> k-NN -> conditioning",
            "NOTE: the encoder is untrained (no downloaded weights), so it matches colour/layout statistics only;",
            "      semantic quality needs a real CLIP vision model (see README).",
            "",
            f"built {vault_path.name}: {len(vault)} entries, {vault.n_prompts} unique prompts, {vault.dim}-d, "
            f"{summary['bytes_per_entry']:.0f} bytes/entry incl. 64px thumbnails, index {index.spec}",
        ]
        for qp, r in zip(q_prompts[:3], results[:3]):
            lines.append(f"\nquery crop (unseen): {qp}")
            for m in r.matches[:3]:
                lines.append(f"  {m.similarity:.4f}  #{m.id:<5d} {m.prompt}")
        lines += [
            "",
            f"top-1 match has the query's iris colour: {colour_hits:.0%} of {len(results)} unseen crops "
            f"(chance {1 / len(COLOURS):.0%}); same full prompt: {exact_hits:.0%}",
            f"retrieved conditioning {list(retrieved[0][0].shape)} (8 crops, toy CLIP-L text encoder), blended "
            f"(average, strength 0.3) {list(blended[0][0].shape)}; text cache {cache.hits} hits / {cache.misses} misses",
            "",
            "timings (this machine):",
            f"  generate {a.n} images     {timings['generate_s']:.2f} s",
            f"  embed                   {timings['encode_s']:.2f} s ({a.n / timings['encode_s']:.0f} img/s)",
            f"  build vault + index     {timings['build_s']:.2f} s ({a.n / timings['build_s']:.0f} entries/s)",
            f"  query k={a.k}              p50 {p50:.3f} ms, p99 {p99:.3f} ms with prompts + metadata "
            f"(brute-force scan of all vectors, batched: {exact_ms:.3f} ms/query)",
            f"  conditioning assembly   {timings['conditioning_ms']:.1f} ms for 8 crops",
            f"total {time.perf_counter() - t_all:.1f} s; vault kept at {vault_path.resolve()}" if keep else
            f"total {time.perf_counter() - t_all:.1f} s (no ComfyUI found to keep the vault in: pass --out DIR to keep it)",
        ]
        emit(summary, a.json, "\n".join(lines))
        return 0 if math.isfinite(p50) else 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _where(a: argparse.Namespace) -> tuple[bool, Path]:
    """(keep, folder) for the demo vault: --out, else ComfyUI's vault folder (kept, so the nodes list it), else
    a temporary folder removed at the end."""
    if a.out:
        return True, output_folder(a.out, "--out")
    root = find_comfyui(a.comfyui, required=False)
    if root is not None:
        return True, vault_folders(root)[0]
    return False, Path(tempfile.mkdtemp(prefix="luna-demo-"))
