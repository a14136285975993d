"""Projector benchmark: size and forward latency per target, and training throughput, against references.

Run by hand: `python bench/bench_projector.py [--device cpu|cuda] [--repeats 200] [--train-prompts 400]`.
- Size: parameters and fp16 safetensors file size per target (SDXL and Flux from a 1024-d ViT-H
  embedding, CLIP-L from a 768-d ViT-L one).
- Latency per crop at batch 1 and 16 (median and p90 of `repeats` forwards), and the same for the
  seed's naive head (one Linear from the embedding to every token and the pooled vector), measured
  in the same run: ratio = ours / naive. Flux's naive head (1.1B weights) is skipped unless --naive-flux.
- Training samples/s of `luna_vault.projector.train` on a synthetic SDXL vault, with the pairs held
  on the device and with the streaming loader: inside the training loop (data path + steps) and
  end to end (validation, checkpoints, logs included), against bare optimiser steps of the same
  model on batches already on the device: ratio = train / bare.
- Quality on synthetic data whose true mapping is known (`projector.synthetic`, a CLIP-L target from
  768-d embeddings): `luna_vault.projector.evaluate` on the held-out prompts, projector vs vault
  k-NN, ridge and the mean. Real-weight quality is measured elsewhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from luna_vault.projector.evaluate import evaluate
from luna_vault.projector.io import save_projector
from luna_vault.projector.model import TARGETS, Projector, ProjectorConfig
from luna_vault.projector.synthetic import make_synthetic_vault
from luna_vault.projector.train import TrainConfig, loss_parts, train
from luna_vault.vault import EncoderFingerprint, Vault

IN_DIM = {"sdxl": 1024, "sd15": 768, "flux": 1024}


class NaiveHead(torch.nn.Module):
    """The seed's head: Linear(embedding -> T*D) and Linear(embedding -> pooled)."""

    def __init__(self, in_dim: int, tokens: int, dim: int, pooled: int) -> None:
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.tok = torch.nn.Linear(in_dim, tokens * dim)
        self.pool = torch.nn.Linear(in_dim, pooled)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tok(x).view(-1, self.tokens, self.dim), self.pool(x)


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median, p90) milliseconds per forward."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        t_end = time.perf_counter() + 0.5  # warm up for half a second (caches, allocator, CPU clocks)
        while time.perf_counter() < t_end:
            model(x)
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def size_and_latency(device: torch.device, repeats: int, naive_flux: bool, folder: Path) -> list[dict[str, Any]]:
    rows = []
    for name, spec in TARGETS.items():
        torch.manual_seed(0)
        model = Projector(ProjectorConfig.preset(IN_DIM[name], name)).eval()
        file = save_projector(model, folder / f"{name}.safetensors", EncoderFingerprint("bench", IN_DIM[name], "b"))
        model.to(device)
        row: dict[str, Any] = {"target": name, "in_dim": IN_DIM[name], "parameters": model.parameter_count(),
                               "file_bytes": file.stat().st_size}
        for b in (1, 16):
            x = torch.randn(b, IN_DIM[name], device=device)
            med, p90 = time_forward(model, x, repeats if b == 1 else max(20, repeats // 4))
            row[f"ms_b{b}"], row[f"ms_b{b}_p90"] = med, p90
            row[f"ms_per_crop_b{b}"] = med / b
        if name != "flux" or naive_flux:
            naive = NaiveHead(IN_DIM[name], spec.tokens, spec.dim, spec.pooled_dim).eval().to(device)
            row["naive_parameters"] = sum(p.numel() for p in naive.parameters())
            row["naive_ms_b1"], _ = time_forward(naive, torch.randn(1, IN_DIM[name], device=device), max(20, repeats // 4))
            row["ratio_vs_naive_b1"] = row["ms_b1"] / row["naive_ms_b1"]
            del naive
        rows.append(row)
        print(f"{name:>6}: {row['parameters'] / 1e6:6.2f}M params, {row['file_bytes'] / 1e6:6.1f} MB fp16, "
              f"batch 1 {row['ms_b1']:.2f} ms (p90 {row['ms_b1_p90']:.2f}), batch 16 {row['ms_per_crop_b16']:.2f} ms/crop"
              + (f"; naive head {row['naive_parameters'] / 1e6:.0f}M params {row['naive_ms_b1']:.1f} ms -> "
                 f"ratio {row['ratio_vs_naive_b1']:.3f}" if "naive_ms_b1" in row else ""), flush=True)
    return rows


def training_throughput(device: torch.device, n_prompts: int, epochs: int, folder: Path) -> dict[str, Any]:
    spec = TARGETS["sdxl"]
    vault_path = folder / "syn-sdxl.vault"
    make_synthetic_vault(vault_path, spec, IN_DIM["sdxl"], n_prompts=n_prompts, per_prompt=4)
    runs = {}
    for resident in (True, False):  # pairs held on the device, and the streaming loader
        cfg = TrainConfig(epochs=epochs, batch_size=64, resident=resident)
        t = time.perf_counter()
        runs[resident] = train(vault_path, folder / "p.safetensors", cfg, resume=False, progress=False)
        runs[resident]["wall_s"] = time.perf_counter() - t
    summary = runs[True]
    pairs = summary["train_pairs"]
    # bare: the same model and loss on in-memory batches, optimiser steps only
    vault = Vault.open(vault_path)
    torch.manual_seed(0)
    model = Projector(ProjectorConfig.preset(vault.dim, spec)).to(device)
    model.set_stats(torch.zeros(spec.tokens, spec.dim), torch.ones(spec.tokens, spec.dim), torch.zeros(spec.pooled_dim),
                    torch.ones(spec.pooled_dim))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(64, vault.dim, device=device)
    tok = torch.randn(64, spec.tokens, spec.dim, device=device)
    pool = torch.randn(64, spec.pooled_dim, device=device)
    steps = max(5, pairs // 64)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = device.type == "cuda"
    for i in range(steps + 2):
        if i == 2:
            sync()
            t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = loss_parts(model, x, tok, pool, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    sync()
    bare = steps * 64 / (time.perf_counter() - t)
    res = {"train_pairs": pairs, "epochs": epochs, "bare_samples_per_s": bare}
    for resident, run in runs.items():
        key = "resident" if resident else "streaming"
        res[key] = {"samples_per_s": run["samples_per_s"], "loop_samples_per_s": run["loop_samples_per_s"],
                    "wall_s": run["wall_s"], "ratio": run["samples_per_s"] / bare,
                    "loop_ratio": run["loop_samples_per_s"] / bare}
        print(f"training (SDXL target, {pairs} pairs x {epochs} epochs, pairs {key}): "
              f"{run['loop_samples_per_s']:.0f} samples/s in the training loop (ratio {res[key]['loop_ratio']:.2f}), "
              f"{run['samples_per_s']:.0f} with validation, checkpoints and logs (ratio {res[key]['ratio']:.2f}); "
              f"bare steps {bare:.0f} samples/s", flush=True)
    return res


def synthetic_quality(n_prompts: int, epochs: int, folder: Path) -> dict[str, Any]:
    vault_path = folder / "syn-clip-l.vault"
    make_synthetic_vault(vault_path, TARGETS["sd15"], IN_DIM["sd15"], n_prompts=n_prompts, per_prompt=4,
                         family="sd15")
    out = folder / "syn-clip-l.safetensors"
    train(vault_path, out, TrainConfig(epochs=epochs, batch_size=64), resume=False, progress=False)
    info = evaluate(vault_path, out, None)
    print(f"synthetic CLIP-L pairs, {info['val_queries']} held-out queries, {info['candidates']} held-out prompts:")
    print(f"  {'method':<18} {'token MSE':>10} {'token cos':>10} {'pooled cos':>11} {'mean rank':>10} {'top-1':>7}")
    for name, m in info["methods"].items():
        print(f"  {name:<18} {m['token_mse']:>10.4f} {m['token_cosine']:>10.4f} {m['pooled_cosine']:>11.4f} "
              f"{m['mean_rank']:>10.1f} {m['top1']:>7.3f}", flush=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--train-prompts", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quality-prompts", type=int, default=1000, help="synthetic prompts for the quality run (0: skip)")
    ap.add_argument("--quality-epochs", type=int, default=30)
    ap.add_argument("--naive-flux", action="store_true", help="also time Flux's naive head (about 4.4 GB)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = {"device": str(device), "targets": size_and_latency(device, args.repeats, args.naive_flux, folder),
               "training": training_throughput(device, args.train_prompts, args.epochs, folder)}
        if args.quality_prompts:
            out["synthetic_quality"] = synthetic_quality(args.quality_prompts, args.quality_epochs, folder)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
