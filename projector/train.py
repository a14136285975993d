"""Projector training: one process (CPU or GPU) or many with torchrun (DDP, DistributedSampler).

Loss per target part (e.g. SDXL's CLIP-L and CLIP-G halves, each with its own weight): MSE of the
standardised tokens + (1 - cosine) of the raw tokens, and the same for the pooled output. AdamW,
warm-up + cosine schedule, gradient clipping, bf16 autocast on CUDA, a checkpoint every epoch (resume
with the same command), deterministic seeds. Rank 0 writes the projector (best validation loss),
a CSV + JSON log of the curves and a PNG plot of them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..core.atomic import atomic_write, atomic_write_bytes
from ..vault.store import Vault
from .checkpoint import load_checkpoint, save_checkpoint
from .data import PairDataset, PairSet, ResidentPairs
from .io import save_projector
from .model import Projector, ProjectorConfig, TargetSpec

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings (saved in the log and the projector's stats)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05  # share of all steps
    grad_clip: float = 1.0
    dropout: float = 0.1
    seed: int = 0
    cosine_weight: float = 1.0
    pooled_weight: float = 1.0
    part_weights: dict[str, float] = field(default_factory=lambda: {"clip_l": 2.0})  # CLIP-L counts double
    num_workers: int = 0
    resident: bool | None = None  # keep the pairs on the training device; None: when they fit (ResidentPairs.fits)


def loss_parts(model: Any, x: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor,
               cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted training loss, and each part's value for the log (detached tensors: reading them
    waits for the GPU, so a training step never does)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    head = inner.head
    z_tok, z_pool = model(x, standardised=True)  # through the DDP wrapper, so gradients are averaged
    raw_tok = head.token_mean + head.token_std * z_tok.float()
    raw_pool = head.pooled_mean + head.pooled_std * z_pool.float()
    t_tok = (tokens - head.token_mean) / head.token_std
    t_pool = (pooled - head.pooled_mean) / head.pooled_std
    total = x.new_zeros(())
    parts: dict[str, torch.Tensor] = {}
    for name, a, b in inner.cfg.target.parts:
        w = cfg.part_weights.get(name, 1.0)
        mse = F.mse_loss(z_tok[..., a:b].float(), t_tok[..., a:b])
        cos = F.cosine_similarity(raw_tok[..., a:b], tokens[..., a:b], dim=-1).mean()
        total = total + w * (mse + cfg.cosine_weight * (1 - cos))
        parts[f"{name}_mse"], parts[f"{name}_cos"] = mse.detach(), cos.detach()
    mse = F.mse_loss(z_pool.float(), t_pool)
    cos = F.cosine_similarity(raw_pool, pooled, dim=-1).mean()
    total = total + cfg.pooled_weight * (mse + cfg.cosine_weight * (1 - cos))
    parts["pooled_mse"], parts["pooled_cos"] = mse.detach(), cos.detach()
    return total, parts


def _dist() -> tuple[int, int, int]:
    """(rank, world, local rank), joining the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.device_count()  # 0 without CUDA (or with CUDA_VISIBLE_DEVICES='')
    if gpus and local_rank >= gpus:
        raise RuntimeError(
            f"torchrun started process {local_rank} of this machine, but it has {gpus} GPU(s) and each process "
            f"trains on its own: run torchrun --nproc-per-node {gpus}, or hide the GPUs (CUDA_VISIBLE_DEVICES='') "
            "to train in several CPU processes")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if gpus else "gloo")
    return int(os.environ.get("RANK", "0")), world, local_rank


def _cosine_schedule(opt: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


@torch.no_grad()
def validate(model: Projector, pairs: PairSet, cfg: TrainConfig, device: torch.device,
             resident: ResidentPairs | None = None) -> dict[str, float]:
    if resident is not None:
        batches: Any = resident.batches(torch.arange(len(resident)), 256, drop_last=False)
    else:
        ds = PairDataset(pairs, pairs.val_ids)
        batches = (_to(device, *b) for b in torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False,
                                                                         collate_fn=ds.collate))
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for x, tokens, pooled in batches:
        loss, parts = loss_parts(model, x, tokens, pooled, cfg)
        b = len(x)
        for k, v in {"loss": loss, **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        n += b
    model.train()
    return {k: v / max(1, n) for k, v in sums.items()}


def train(vault_path: str | os.PathLike[str], out: str | os.PathLike[str], cfg: TrainConfig | None = None,
          target: TargetSpec | None = None, resume: bool = True, progress: bool = True,
          model_overrides: dict[str, Any] | None = None,
          on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train a projector on a baked vault; returns the summary (best epoch, validation metrics, paths).

    A checkpoint is written after every epoch; with resume=True the same command continues a run that
    was stopped (Ctrl-C, a killed job) and ends with the same weights as an uninterrupted one.
    on_epoch (rank 0) sees each epoch's log row after the checkpoint is written.
    """
    cfg = cfg or TrainConfig()
    out = Path(out)
    rank, world, local_rank = _dist()
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    vault = Vault.open(vault_path)
    pairs = PairSet.from_vault(vault, target)
    mcfg = ProjectorConfig.preset(vault.dim, pairs.target, dropout=cfg.dropout, **(model_overrides or {}))
    model = Projector(mcfg)
    stats = pairs.stats(rank=mcfg.rank, seed=cfg.seed)
    model.set_stats(**stats)
    model.to(device)
    net: Any = DistributedDataParallel(model) if world > 1 else model
    ds = PairDataset(pairs, pairs.train_ids)
    sampler = torch.utils.data.DistributedSampler(ds, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    gen = torch.Generator().manual_seed(cfg.seed)
    order = _EpochOrder(len(sampler) if sampler is not None else len(ds))  # one order feeds both data paths
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=order, collate_fn=ds.collate,
                                         generator=torch.Generator().manual_seed(cfg.seed),  # workers' seeds only
                                         num_workers=cfg.num_workers, drop_last=len(ds) > cfg.batch_size * world,
                                         pin_memory=device.type == "cuda")
    resident = resident_val = None
    if cfg.resident or (cfg.resident is None and ResidentPairs.fits(pairs, pairs.train_ids, device)):
        resident = ResidentPairs(pairs, pairs.train_ids, device)
        if len(pairs.val_ids) and rank == 0:
            resident_val = ResidentPairs(pairs, pairs.val_ids, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * max(1, len(loader))
    sched = _cosine_schedule(opt, total_steps, int(cfg.warmup * total_steps))
    ckpt = out.with_suffix(".ckpt.safetensors")
    history: list[dict[str, float]] = []
    start_epoch, best = 0, (math.inf, -1)
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, model, opt, sched, check=lambda fields: _check_resumable(ckpt, fields, cfg, mcfg))
        start_epoch, best = int(state["epoch"]), (float(state["best_loss"]), int(state["best_epoch"]))
        history = state["history"]
        gen.manual_seed(cfg.seed + start_epoch)
        if rank == 0:
            print(f"resuming from {ckpt.name} after epoch {start_epoch}", file=sys.stderr)
    amp = device.type == "cuda"
    t0 = time.perf_counter()
    samples, loop_s = 0, 0.0
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
            order.ids = list(sampler)
        else:
            gen.manual_seed(cfg.seed + epoch)  # the same order after a resume
            order.ids = torch.randperm(len(ds), generator=gen).tolist()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # and the same dropout masks
        net.train()
        run_loss, steps = 0.0, 0
        if resident is not None:
            batches: Any = resident.batches(torch.tensor(order.ids), cfg.batch_size, drop_last=loader.drop_last)
        else:
            batches = (_to(device, *b) for b in loader)
        bar = _bar(batches, f"epoch {epoch + 1}/{cfg.epochs}", progress and rank == 0, total=len(loader))
        t_loop = time.perf_counter()
        for x, tokens, pooled in bar:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = loss_parts(net, x, tokens, pooled, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            run_loss += loss.detach()
            steps += 1
            samples += len(x) * world
            if hasattr(bar, "set_postfix") and steps % 20 == 0:  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{float(run_loss) / steps:.4f}")
        run_loss = float(run_loss)
        loop_s += time.perf_counter() - t_loop
        if rank == 0:
            val = (validate(model, pairs, cfg, device, resident_val) if len(pairs.val_ids)
                   else {"loss": run_loss / max(1, steps)})
            row = {"epoch": epoch + 1, "train_loss": run_loss / max(1, steps), "lr": sched.get_last_lr()[0],
                   **{f"val_{k}": v for k, v in val.items()}}
            history.append(row)
            if val["loss"] < best[0]:
                best = (val["loss"], epoch + 1)
                save_projector(model, out, vault.encoder, _stats(cfg, pairs, history, best, samples, t0, world))
            save_checkpoint(ckpt, model, opt, sched, {"epoch": epoch + 1, "best_loss": best[0], "best_epoch": best[1],
                                                      "history": history, "config": _resume_key(cfg, mcfg)})
            _write_logs(out, history)
            if on_epoch is not None:
                on_epoch(row)
        if world > 1:
            dist.barrier()
    summary = {"projector": str(out), "best_epoch": best[1], "best_val_loss": best[0], "history": history,
               "samples_per_s": samples / max(1e-9, time.perf_counter() - t0),
               "loop_samples_per_s": samples / max(1e-9, loop_s), "resident": resident is not None,
               "parameters": model.parameter_count(),
               "train_pairs": int(len(pairs.train_ids)), "val_pairs": int(len(pairs.val_ids)), "world_size": world}
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


class _EpochOrder(torch.utils.data.Sampler):
    """The current epoch's order of the training pairs, set before each epoch (a DataLoader sampler)."""

    def __init__(self, n: int) -> None:
        self.ids: list[int] = list(range(n))

    def __iter__(self) -> Any:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def _to(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """To the device, then float32 (targets travel as float16: half the bytes, no conversion on the CPU)."""
    return tuple(t.to(device, non_blocking=True).float() for t in tensors)


def _resume_key(cfg: TrainConfig, mcfg: ProjectorConfig) -> str:
    """What must not change between a run and its resumption (the data loader's workers may)."""
    train_cfg = {k: v for k, v in asdict(cfg).items() if k not in ("num_workers", "resident")}
    return json.dumps({"train": train_cfg, "model": mcfg.to_json()}, sort_keys=True)


def _check_resumable(ckpt: Path, state: dict[str, Any], cfg: TrainConfig, mcfg: ProjectorConfig) -> None:
    saved, now = json.loads(state.get("config", "{}")), json.loads(_resume_key(cfg, mcfg))
    if saved != now:
        diff = sorted(f"{part}.{k}" for part in now for k in now[part]
                      if saved.get(part, {}).get(k) != now[part][k])
        raise ValueError(f"{ckpt} was written by a run with other settings ({', '.join(diff) or 'unknown'} differ); "
                         f"run with the same settings to resume, or pass --no-resume to start over")


def _stats(cfg: TrainConfig, pairs: PairSet, history: list[dict[str, float]], best: tuple[float, int], samples: int,
           t0: float, world: int) -> dict[str, Any]:
    return {"train": asdict(cfg), "best_epoch": best[1], "best_val_loss": best[0], "last": history[-1],
            "train_pairs": int(len(pairs.train_ids)), "val_pairs": int(len(pairs.val_ids)),
            "vault": pairs.vault.name, "vault_content_key": pairs.vault.manifest.content_key, "world_size": world,
            "samples_per_s": samples / max(1e-9, time.perf_counter() - t0)}


def _bar(batches: Any, desc: str, show: bool, total: int | None = None) -> Any:
    if not show:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True, total=total,
                disable=not sys.stderr.isatty())


def _write_logs(out: Path, history: list[dict[str, float]]) -> None:
    """Curves as CSV and JSON next to the projector, and a PNG plot of train/val loss."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    lines = [",".join(keys)] + [",".join(f"{row.get(k, '')}" for k in keys) for row in history]
    atomic_write_bytes(out.with_suffix(".train.csv"), ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".train.json"), json.dumps(history, indent=1).encode())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is missing: no training plot")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], label="train")
    if any("val_loss" in r for r in history):
        ax.plot(epochs, [r.get("val_loss", math.nan) for r in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{out.stem}: projector training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out.with_suffix(".train.png"), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)

