"""Crop embeddings -> conditioning through the projector, or the vault where it knows the look (hybrid)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.conditioning import (
    EncodingCache,
    match_token_length,
    retrieval_weights,
    weighted_conditioning,
)
from ..core.encoder import EncoderFingerprint
from ..core.errors import TextFamilyMismatchError
from ..core.filecache import FileCache
from ..vault.query import search
from ..vault.retrieval import SHARED_TEXT_CACHE, prompt_lookup
from ..vault.store import Vault
from .io import load_projector
from .model import Projector

_loaded: FileCache[tuple[Projector, dict[str, Any]]] = FileCache(4)


def load_cached(path: str | os.PathLike[str], encoder: EncoderFingerprint | None = None) -> tuple[Projector, dict[str, Any]]:
    """A projector kept in memory until its file changes; the encoder check runs on every call."""
    p = Path(path).resolve()
    hit = _loaded.get(p, p, load_projector)
    if encoder is not None:
        hit[1]["encoder"].check_compatible(encoder, where=f"projector '{p.name}'")
    return hit


@dataclass
class Translation:
    """Conditioning per crop and which path made it."""

    conditioning: list  # CONDITIONING: one entry, cond [B, T, D], pooled [B, P]
    paths: list[str]  # "vault" or "projector" per crop
    best_similarity: list[float | None]
    prompts: list[str | None]  # the best vault match's prompt where the vault was used

    def report(self, threshold: float | None) -> dict[str, Any]:
        return {"threshold": threshold, "crops": [
            {"path": p, "best_similarity": None if s is None else round(s, 6), "prompt": pr}
            for p, s, pr in zip(self.paths, self.best_similarity, self.prompts)]}


def translate(projector: Projector, embeddings: torch.Tensor, *, vault: Vault | None = None, threshold: float = 0.9,
              k: int = 5, temperature: float | None = 0.05, text_encoder: Any = None,
              encoder: EncoderFingerprint | None = None, cache: EncodingCache | None = SHARED_TEXT_CACHE) -> Translation:
    """Projector conditioning for every crop; with a vault, crops whose best match reaches `threshold` use the
    vault's retrieved conditioning instead (text mode with `text_encoder`, else baked)."""
    with torch.no_grad():
        tokens, pooled = projector(embeddings.float())
    target = projector.cfg.target
    n = len(embeddings)
    conds: list[torch.Tensor] = [tokens[b] for b in range(n)]
    pools: list[torch.Tensor] = [pooled[b] for b in range(n)]
    paths, best, prompts = ["projector"] * n, [None] * n, [None] * n
    if vault is not None:
        results = search(vault, embeddings, k=min(k, len(vault)), encoder=encoder)
        lookup, _ = prompt_lookup({vault.name: vault}, {vault.name}, text_encoder, cache,
                                  [[tokens[:1], {"pooled_output": pooled[:1]}]])
        for b, r in enumerate(results):
            best[b] = float(r.matches[0].similarity)
            if best[b] >= threshold:
                enc = weighted_conditioning([lookup(m) for m in r.matches], retrieval_weights(r.similarities, temperature))
                cond, pool = enc.cond, enc.pooled
                if cond.shape[-1] != target.dim or (pool is not None and pool.shape[-1] != target.pooled_dim):
                    raise TextFamilyMismatchError(
                        f"the vault path gives conditioning [*, {cond.shape[-1]}] but the projector predicts "
                        f"{target.family} [*, {target.dim}]; use a CLIP / vault of the projector's family"
                    )
                conds[b], pools[b] = cond, pool if pool is not None else pools[b]
                paths[b], prompts[b] = "vault", r.matches[0].prompt
    conds = match_token_length(conds)
    return Translation([[torch.stack(conds), {"pooled_output": torch.stack(pools)}]], paths, best, prompts)
