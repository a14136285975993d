"""CLI verbs for the projector: train (one process or torchrun) and eval (against the baselines)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import UsageError, emit


def cmd_train(a: argparse.Namespace) -> int:
    from ..projector.model import TARGETS
    from ..projector.train import TrainConfig, train

    if a.target is not None and a.target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)} (default: the vault's baked family)")
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, dropout=a.dropout, seed=a.seed,
                      part_weights={"clip_l": a.clip_l_weight}, num_workers=a.workers)
    summary = train(a.vault, a.out, cfg, target=TARGETS[a.target] if a.target else None, resume=not a.no_resume,
                    progress=not a.json)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    last = summary["history"][-1] if summary["history"] else {}
    text = (f"{a.out}: best epoch {summary['best_epoch']} (validation loss {summary['best_val_loss']:.4f}); "
            f"{summary['parameters'] / 1e6:.2f}M parameters, {summary['train_pairs']} training / "
            f"{summary['val_pairs']} held-out pairs, {summary['samples_per_s']:.0f} samples/s"
            + (f" on {summary['world_size']} processes" if summary["world_size"] > 1 else "")
            + (f"\n  last epoch: train {last.get('train_loss', 0):.4f}, validation {last.get('val_loss', 0):.4f}" if last else "")
            + f"\n  curves: {Path(a.out).with_suffix('.train.csv')}, {Path(a.out).with_suffix('.train.png')}")
    emit(summary, a.json, text)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from ..projector.evaluate import evaluate

    info = evaluate(a.vault, a.projector, a.report, max_val=a.max_val)
    rows = [f"{info['val_queries']} held-out queries among {info['candidates']} held-out prompts "
            f"({info['target']}, vault {info['vault']})",
            f"{'method':<18} {'token MSE':>10} {'token cos':>10} {'pooled cos':>11} {'mean rank':>10} {'top-1':>7}"]
    for name, m in info["methods"].items():
        rows.append(f"{name:<18} {m['token_mse']:>10.4f} {m['token_cosine']:>10.4f} {m['pooled_cosine']:>11.4f} "
                    f"{m['mean_rank']:>10.1f} {m['top1']:>7.3f}")
    if a.report:
        rows.append(f"report: {a.report}/report.md, report.png")
    emit(info, a.json, "\n".join(rows))
    return 0
