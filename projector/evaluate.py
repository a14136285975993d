"""Honest evaluation on the held-out prompts: the projector against the baselines, same queries.

Methods: the projector; vault k-NN over the training entries (k=1, and k=5 softmax-weighted); the
mean conditioning of the training set; a closed-form ridge map from image embedding to
(standardised) conditioning. Metrics: token MSE, mean per-token cosine, pooled cosine, and where the
true prompt ranks when each prediction is compared with every validation prompt's conditioning
(mean per-token cosine). Writes a markdown report and a bar plot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..core.atomic import atomic_write, atomic_write_bytes
from ..core.conditioning import retrieval_weights
from ..core.errors import VaultError
from ..vault.index import VaultIndex
from ..vault.store import Vault
from .data import PairSet
from .io import load_projector

Predictor = Callable[[torch.Tensor, np.ndarray], tuple[torch.Tensor, torch.Tensor]]  # (embeddings, entry ids) -> preds
MAX_CANDIDATES = 512


def _batches(ids: np.ndarray, size: int = 256) -> Iterator[np.ndarray]:
    for a in range(0, len(ids), size):
        yield ids[a : a + size]


def _token_normalised_flat(tokens: torch.Tensor) -> torch.Tensor:
    """[n, T, D] -> [n, T*D] with every token unit length, so a dot product / T = mean token cosine."""
    return F.normalize(tokens, dim=-1).flatten(1)


def ridge_predictor(pairs: PairSet, stats: dict[str, torch.Tensor], lam: float = 1e-2) -> Predictor:
    """Closed-form ridge from [embedding, 1] to standardised tokens and pooled, fitted on the training entries."""
    d = pairs.vault.dim
    xtx = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    t_shape = stats["token_mean"].shape
    xty_tok = torch.zeros(d + 1, t_shape[0] * t_shape[1], dtype=torch.float64)
    xty_pool = torch.zeros(d + 1, stats["pooled_mean"].shape[0], dtype=torch.float64)
    for ids in _batches(pairs.train_ids, 512):
        x = torch.cat([pairs.embeddings(ids), torch.ones(len(ids), 1)], dim=1).double()
        tokens, pooled = pairs.conditioning(pairs.prompt_ids(ids))
        z_tok = ((tokens - stats["token_mean"]) / stats["token_std"]).flatten(1).double()
        z_pool = ((pooled - stats["pooled_mean"]) / stats["pooled_std"]).double()
        xtx += x.T @ x
        xty_tok += x.T @ z_tok
        xty_pool += x.T @ z_pool
    reg = lam * torch.trace(xtx) / (d + 1) * torch.eye(d + 1, dtype=torch.float64)
    w_tok = torch.linalg.solve(xtx + reg, xty_tok).float()
    w_pool = torch.linalg.solve(xtx + reg, xty_pool).float()

    def predict(x: torch.Tensor, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        tok = stats["token_mean"] + stats["token_std"] * (x1 @ w_tok).view(len(x), *t_shape)
        return tok, stats["pooled_mean"] + stats["pooled_std"] * (x1 @ w_pool)

    return predict


def knn_predictor(pairs: PairSet, k: int, temperature: float = 0.05) -> Predictor:
    """Vault k-NN restricted to the training entries: softmax(similarity / T)-weighted baked conditioning."""
    allowed = np.zeros(pairs.vault.n_entries, dtype=bool)
    allowed[pairs.train_ids] = True
    index = VaultIndex(pairs.vault)
    prompt_of = pairs.vault.all_prompt_ids()

    def predict(x: torch.Tensor, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(x, dim=-1).numpy()
        sims, found = index.search(q, k, allowed)
        toks, pools = [], []
        for s_row, i_row in zip(sims, found):
            keep = i_row >= 0
            tokens, pooled = pairs.conditioning(prompt_of[i_row[keep]])
            w = retrieval_weights(s_row[keep], temperature if k > 1 else None)
            toks.append(torch.einsum("k,ktd->td", w, tokens))
            pools.append(torch.einsum("k,kp->p", w, pooled))
        return torch.stack(toks), torch.stack(pools)

    return predict


def evaluate(vault_path: str | os.PathLike[str], projector_path: str | os.PathLike[str] | None = None,
             report_dir: str | os.PathLike[str] | None = None, max_val: int = 2000, ridge_lambda: float = 1e-2,
             seed: int = 0) -> dict[str, Any]:
    """Compare the methods on the vault's held-out prompts; returns {method: metrics} (+ writes the report)."""
    vault = Vault.open(vault_path)
    model = header = None
    if projector_path is not None:
        model, header = load_projector(projector_path, encoder=vault.encoder)
    pairs = PairSet.from_vault(vault, header["config"].target if header else None)
    if not len(pairs.val_ids):
        raise VaultError(f"vault '{vault.name}' has no held-out prompts to evaluate on")
    val_ids = pairs.val_ids
    if len(val_ids) > max_val:
        val_ids = np.sort(np.random.default_rng(seed).choice(val_ids, max_val, replace=False))
    stats = pairs.stats(seed=seed)
    methods: dict[str, Predictor] = {}
    if model is not None:
        methods["projector"] = lambda x, ids: tuple(t.float() for t in model(x))  # type: ignore[misc]
    methods["vault k-NN (k=1)"] = knn_predictor(pairs, 1)
    methods["vault k-NN (k=5)"] = knn_predictor(pairs, min(5, len(pairs.train_ids)))
    methods["ridge"] = ridge_predictor(pairs, stats, ridge_lambda)
    methods["mean"] = lambda x, ids: (stats["token_mean"].expand(len(x), -1, -1), stats["pooled_mean"].expand(len(x), -1))

    # candidates for the rank metric: every validation prompt (sampled down to MAX_CANDIDATES)
    val_pids = pairs.prompt_ids(val_ids)
    cand = np.unique(val_pids)
    if len(cand) > MAX_CANDIDATES:
        keep = np.random.default_rng(seed).choice(cand, MAX_CANDIDATES, replace=False)
        mask = np.isin(val_pids, keep)
        val_ids, val_pids, cand = val_ids[mask], val_pids[mask], np.sort(keep)
    cand_tokens, _ = pairs.conditioning(cand)
    cand_flat = _token_normalised_flat(cand_tokens)
    pos = {int(p): i for i, p in enumerate(cand)}

    results: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, predict in methods.items():
            acc = {"token_mse": 0.0, "token_cosine": 0.0, "pooled_cosine": 0.0, "rank": 0.0, "top1": 0.0, "n": 0}
            ranks: list[int] = []
            for ids in _batches(val_ids):
                x = pairs.embeddings(ids)
                pids = pairs.prompt_ids(ids)
                tokens, pooled = pairs.conditioning(pids)
                p_tok, p_pool = predict(x, ids)
                acc["token_mse"] += float(((p_tok - tokens) ** 2).mean(dim=(1, 2)).sum())
                acc["token_cosine"] += float(F.cosine_similarity(p_tok, tokens, dim=-1).mean(dim=1).sum())
                acc["pooled_cosine"] += float(F.cosine_similarity(p_pool, pooled, dim=-1).sum())
                sims = _token_normalised_flat(p_tok) @ cand_flat.T  # [b, candidates]
                true = torch.tensor([pos[int(p)] for p in pids])
                rank = (sims > sims[torch.arange(len(ids)), true][:, None]).sum(dim=1) + 1
                ranks += rank.tolist()
                acc["n"] += len(ids)
            n = acc.pop("n")
            results[name] = {k: v / n for k, v in acc.items() if k not in ("rank", "top1")}
            results[name]["mean_rank"] = float(np.mean(ranks))
            results[name]["median_rank"] = float(np.median(ranks))
            results[name]["top1"] = float(np.mean(np.array(ranks) == 1))
    info = {"vault": vault.name, "target": pairs.target.family, "val_queries": int(len(val_ids)),
            "candidates": int(len(cand)), "train_pairs": int(len(pairs.train_ids)), "methods": results}
    if report_dir is not None:
        write_report(info, Path(report_dir))
    return info


def write_report(info: dict[str, Any], folder: Path) -> None:
    """report.md (a table), report.json and report.png (bars per metric)."""
    folder.mkdir(parents=True, exist_ok=True)
    methods = info["methods"]
    cols = [("token_mse", "token MSE ↓"), ("token_cosine", "token cosine ↑"), ("pooled_cosine", "pooled cosine ↑"),
            ("mean_rank", "mean rank ↓"), ("top1", "top-1 ↑")]
    lines = [f"# Projector evaluation: {info['vault']} ({info['target']})", "",
             f"{info['val_queries']} held-out queries (prompts never seen in training), ranked among "
             f"{info['candidates']} held-out prompts; {info['train_pairs']} training pairs.", "",
             "| method | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" if c != "mean_rank" else f"{m[c]:.1f}" for c, _ in cols) + " |")
    atomic_write_bytes(folder / "report.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(folder / "report.json", json.dumps(info, indent=1).encode())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(cols), figsize=(3 * len(cols), 3.2), dpi=100)
    names = list(methods)
    for ax, (key, label) in zip(axes, cols):
        ax.barh(names, [methods[n][key] for n in names], color=["#d4a017" if n == "projector" else "#6a7b8c" for n in names])
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    atomic_write(folder / "report.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
