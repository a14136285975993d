"""CLI verbs for the projector: train (one process or torchrun) and eval (against the baselines)."""

from __future__ import annotations

import os
from pathlib import Path

from .common import UsageError, emit


def cmd_train(vault: str, out: str, target: str | None = None, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
              weight_decay: float = 0.01, dropout: float = 0.1, seed: int = 0, clip_l_weight: float = 2.0,
              no_resume: bool = False, workers: int = 0, json: bool = False) -> int:
    from ..projector.model import TARGETS
    from ..projector.train import TrainConfig, train

    if target is not None and target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)} (default: the vault's baked family)")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, dropout=dropout, seed=seed,
                      part_weights={"clip_l": clip_l_weight}, num_workers=workers)
    summary = train(vault, out, cfg, target=TARGETS[target] if target else None, resume=not no_resume,
                    progress=not json)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    last = summary["history"][-1] if summary["history"] else {}
    text = (f"{out}: best epoch {summary['best_epoch']} (validation loss {summary['best_val_loss']:.4f}); "
            f"{summary['parameters'] / 1e6:.2f}M parameters, {summary['train_pairs']} training / "
            f"{summary['val_pairs']} held-out pairs, {summary['samples_per_s']:.0f} samples/s"
            + (f" on {summary['world_size']} processes" if summary["world_size"] > 1 else "")
            + (f"\n  last epoch: train {last.get('train_loss', 0):.4f}, validation {last.get('val_loss', 0):.4f}" if last else "")
            + f"\n  curves: {Path(out).with_suffix('.train.csv')}, {Path(out).with_suffix('.train.png')}")
    emit(summary, json, text)
    return 0


def cmd_eval(vault: str, projector: str | None = None, report: str | None = None, max_val: int = 2000,
             json: bool = False) -> int:
    from ..projector.evaluate import evaluate

    info = evaluate(vault, projector, report, max_val=max_val)
    rows = [f"{info['val_queries']} held-out queries among {info['candidates']} held-out prompts "
            f"({info['target']}, vault {info['vault']})",
            f"{'method':<18} {'token MSE':>10} {'token cos':>10} {'pooled cos':>11} {'mean rank':>10} {'top-1':>7}"]
    for name, m in info["methods"].items():
        rows.append(f"{name:<18} {m['token_mse']:>10.4f} {m['token_cosine']:>10.4f} {m['pooled_cosine']:>11.4f} "
                    f"{m['mean_rank']:>10.1f} {m['top1']:>7.3f}")
    if report:
        rows.append(f"report: {report}/report.md, report.png")
    emit(info, json, "\n".join(rows))
    return 0
