"""Synthetic baked vaults whose true image -> conditioning mapping is known (for tests and benchmarks).

Each prompt has a latent z (k dims). Its conditioning is a fixed nonlinear function of z: token t is
tanh(z @ A_t) scaled around a per-token mean, the pooled output tanh(z @ B). Each of its images
embeds as normalise(z @ M + noise). So the conditioning is predictable from the image embedding
(up to the noise), nonlinearly: a projector must beat the mean baseline clearly, and can beat a
linear (ridge) map.
"""

from __future__ import annotations

import os

import numpy as np

from ..core.encoder import EncoderFingerprint
from ..core.families import TextSpec
from ..vault.ops import build
from .model import TargetSpec


def make_synthetic_vault(path: str | os.PathLike[str], target: TargetSpec, in_dim: int, n_prompts: int = 300,
                         per_prompt: int = 4, latent: int = 12, noise: float = 0.3, seed: int = 0,
                         encoder: EncoderFingerprint | None = None, family: str | None = None) -> EncoderFingerprint:
    """Build a baked vault at `path` (overwriting); returns the (synthetic) encoder fingerprint used."""
    rng = np.random.default_rng(seed)
    T, D, P = target.tokens, target.dim, target.pooled_dim
    token_mean = rng.normal(0, 1.0, (T, D)).astype(np.float32)
    token_scale = rng.uniform(0.5, 2.0, (T, 1)).astype(np.float32)
    A = rng.normal(0, 1 / np.sqrt(latent), (T, latent, D)).astype(np.float32)
    B = rng.normal(0, 1 / np.sqrt(latent), (latent, P)).astype(np.float32)
    M = rng.normal(0, 1 / np.sqrt(latent), (latent, in_dim)).astype(np.float32)
    z = rng.normal(0, 1, (n_prompts, latent)).astype(np.float32)
    conds = {f"synthetic prompt {p}": (token_mean + token_scale * np.tanh(np.einsum("k,tkd->td", z[p], A)),
                                       np.tanh(z[p] @ B)) for p in range(n_prompts)}
    prompts, emb = [], []
    for p in range(n_prompts):
        for _ in range(per_prompt):
            prompts.append(f"synthetic prompt {p}")
            emb.append(z[p] @ M + noise * rng.normal(0, 1, in_dim) / np.sqrt(in_dim) * np.linalg.norm(z[p] @ M))
    fp = encoder or EncoderFingerprint(f"synthetic-{in_dim}d-seed{seed}", in_dim, f"synthetic{seed}")
    spec = TextSpec(family or target.family, D, P)
    build(path, np.stack(emb), prompts, [{"seed": i} for i in range(len(prompts))], encoder=fp, category="synthetic",
          text=spec, encode_text=lambda prompt: conds[prompt], overwrite=True)
    return fp
