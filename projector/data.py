"""Training pairs from a baked vault: image embeddings, their prompt's conditioning, a split by prompt."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ..core.errors import VaultError
from ..vault.store import Vault
from .model import TARGETS, TargetSpec

VAL_SHARE = 0.1


def target_for_vault(vault: Vault) -> TargetSpec:
    """The projector target matching a vault's baked conditioning (known families, or its own dims)."""
    if vault.text is None:
        raise VaultError(
            f"vault '{vault.name}' has no baked conditioning, so there is nothing to learn from: build it with "
            "`luna-vault extract --bake --checkpoint ...` or a Luna Vault Builder with a CLIP connected"
        )
    if vault.text.pooled_dim == 0 or vault.text.attention_mask:
        raise VaultError(
            f"vault '{vault.name}' bakes {vault.text.family} conditioning "
            f"({'no pooled output' if vault.text.pooled_dim == 0 else 'with an attention mask'}); the projector predicts "
            "tokens + a pooled output only (SD1.5, SDXL, Flux, SD3.5 vaults): use the vault in text mode for this family"
        )
    spec = TARGETS.get(vault.text.family)
    if spec is not None and (spec.dim, spec.pooled_dim) == (vault.text.dim, vault.text.pooled_dim):
        return spec
    tokens = int(vault.baked(0)[0].shape[0]) if vault.n_prompts else 77
    return TargetSpec(vault.text.family, tokens, vault.text.dim, vault.text.pooled_dim,
                      ((vault.text.family, 0, vault.text.dim),))


def fit_tokens(cond: np.ndarray, tokens: int) -> np.ndarray:
    """[T_i, D] -> [tokens, D]: the first `tokens` (long prompts), or repeated up to it (as ComfyUI pads)."""
    if len(cond) >= tokens:
        return cond[:tokens]
    reps = -(-tokens // max(1, len(cond)))
    return np.concatenate([cond] * reps)[:tokens]


def _in_val(prompt: str) -> bool:
    return int(hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8], 16) % 1000 < VAL_SHARE * 1000


@dataclass
class PairSet:
    """A baked vault's live entries split 90/10 by prompt (no prompt on both sides), with targets."""

    vault: Vault
    target: TargetSpec
    train_ids: np.ndarray
    val_ids: np.ndarray

    @classmethod
    def from_vault(cls, vault: Vault, target: TargetSpec | None = None) -> "PairSet":
        target = target or target_for_vault(vault)
        if vault.text is None or (vault.text.dim, vault.text.pooled_dim) != (target.dim, target.pooled_dim):
            raise VaultError(
                f"vault '{vault.name}' bakes {vault.text.family if vault.text else 'no'} conditioning "
                f"{(vault.text.dim, vault.text.pooled_dim) if vault.text else ''}; the {target.family} target needs "
                f"[*, {target.dim}] + pooled [{target.pooled_dim}]"
            )
        live = np.flatnonzero(vault.live_mask())
        if len(live) < 2:
            raise VaultError(f"vault '{vault.name}' has {len(live)} entries; training needs more")
        pids = vault.all_prompt_ids()[live]
        val_prompt = np.array([_in_val(vault.prompt(p)) for p in range(vault.n_prompts)], dtype=bool)
        if not val_prompt[np.unique(pids)].any() or val_prompt[np.unique(pids)].all():
            # tiny vaults: take every tenth prompt (at least one) by the same hash order instead
            order = sorted(np.unique(pids).tolist(), key=lambda p: hashlib.sha1(vault.prompt(p).encode()).hexdigest())
            val_prompt[:] = False
            val_prompt[order[: max(1, len(order) // 10)]] = True
        is_val = val_prompt[pids]
        return cls(vault, target, live[~is_val], live[is_val])

    # ---- targets -------------------------------------------------------------------------------
    def conditioning(self, pids: np.ndarray, dtype: Any = np.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets for prompt ids: tokens [n, T, D] and pooled [n, P] (float32; the training loader asks for the
        stored float16, half the bytes, and converts on the device)."""
        toks, pools = [], []
        for p in pids.tolist():
            cond, pooled = self.vault.baked(int(p))
            toks.append(fit_tokens(cond, self.target.tokens))
            pools.append(pooled)
        return (torch.from_numpy(np.stack(toks).astype(dtype, copy=False)),
                torch.from_numpy(np.stack(pools).astype(dtype, copy=False)))

    def prompt_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.vault.all_prompt_ids()[ids]

    def embeddings(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.vault.embeddings(ids).astype(np.float32))

    def stats(self, max_prompts: int = 4096, rank: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
        """Mean/std per (token, dim) and pooled over the training prompts (weighted by their images), and the
        top `rank` principal directions of the standardised tokens."""
        pids, counts = np.unique(self.prompt_ids(self.train_ids), return_counts=True)
        if len(pids) > max_prompts:
            pick = np.sort(np.random.default_rng(seed).choice(len(pids), max_prompts, replace=False))
            pids, counts = pids[pick], counts[pick]
        w = torch.from_numpy(counts.astype(np.float32))
        w = w / w.sum()
        tokens, pooled = self.conditioning(pids)
        t_mean = torch.einsum("n,ntd->td", w, tokens)
        t_std = torch.einsum("n,ntd->td", w, (tokens - t_mean) ** 2).sqrt()
        p_mean = torch.einsum("n,np->p", w, pooled)
        p_std = torch.einsum("n,np->p", w, (pooled - p_mean) ** 2).sqrt()
        # a (token, dim) that never varies must not blow up the standardised loss
        t_std = torch.maximum(t_std, 1e-3 * t_std.mean().clamp_min(1e-6) + 1e-6)
        p_std = torch.maximum(p_std, 1e-3 * p_std.mean().clamp_min(1e-6) + 1e-6)
        out: dict[str, Any] = {"token_mean": t_mean, "token_std": t_std, "pooled_mean": p_mean, "pooled_std": p_std}
        if rank:
            z = ((tokens - t_mean) / t_std).reshape(-1, tokens.shape[-1])
            q = min(rank, z.shape[0], z.shape[1])
            _, _, v = torch.pca_lowrank(z, q=q, center=False)
            basis = torch.randn(rank, z.shape[1]) / z.shape[1] ** 0.5
            basis[:q] = v.T
            out["basis"] = basis
        return out


class PairDataset(torch.utils.data.Dataset):
    """(embedding [D_in], prompt id) for a set of entry ids; targets are fetched per batch by `collate`."""

    def __init__(self, pairs: PairSet, ids: np.ndarray) -> None:
        self.pairs = pairs
        self.ids = ids
        self.pids = pairs.prompt_ids(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return int(self.ids[i]), int(self.pids[i])

    def collate(self, batch: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = np.array([b[0] for b in batch], dtype=np.int64)
        pids = np.array([b[1] for b in batch], dtype=np.int64)
        uniq, inverse = np.unique(pids, return_inverse=True)  # each prompt's conditioning read once per batch
        tokens, pooled = self.pairs.conditioning(uniq, np.float16)
        inv = torch.from_numpy(inverse)
        return self.pairs.embeddings(ids), tokens[inv], pooled[inv]


class ResidentPairs:
    """Pairs held where training runs: every embedding, and each prompt's conditioning once (fp16).

    Batches are gathered by index on that device, so a GPU step waits for no loader, collate or
    host-to-device copy (the streaming DataLoader path kept a fast GPU at a quarter of its speed).
    Used when the prompt table fits the device's budget (see `fits`); otherwise the loader streams.
    """

    def __init__(self, pairs: PairSet, ids: np.ndarray, device: torch.device) -> None:
        pids = pairs.prompt_ids(ids)
        uniq, inverse = np.unique(pids, return_inverse=True)
        tokens, pooled = pairs.conditioning(uniq, np.float16)
        self.embeddings = torch.from_numpy(pairs.vault.embeddings(ids)).to(device)  # fp16
        self.tokens, self.pooled = tokens.to(device), pooled.to(device)
        self.prompt_index = torch.from_numpy(inverse.astype(np.int64)).to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.prompt_index)

    @staticmethod
    def bytes_needed(pairs: PairSet, ids: np.ndarray) -> int:
        t = pairs.target
        prompts = len(np.unique(pairs.prompt_ids(ids)))
        return prompts * (t.tokens * t.dim + t.pooled_dim) * 2 + len(ids) * (pairs.vault.dim * 2 + 8)

    @staticmethod
    def fits(pairs: PairSet, ids: np.ndarray, device: torch.device, cpu_budget: int = 2 << 30) -> bool:
        """Whether the pairs fit: 40% of the GPU's free memory, or `cpu_budget` bytes of RAM."""
        if device.type == "cuda":
            budget = int(0.4 * torch.cuda.mem_get_info(device)[0])
        else:
            budget = cpu_budget
        return ResidentPairs.bytes_needed(pairs, ids) <= budget

    def batches(self, order: torch.Tensor, batch_size: int, drop_last: bool) -> Iterator[tuple[torch.Tensor, ...]]:
        """(embeddings, tokens, pooled) as float32 on the device, for consecutive slices of `order`."""
        order = order.to(self.device)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for a in range(0, stop, batch_size):
            idx = order[a : a + batch_size]
            p = self.prompt_index[idx]
            yield self.embeddings[idx].float(), self.tokens[p].float(), self.pooled[p].float()
