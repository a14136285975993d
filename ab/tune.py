"""--write-defaults: the best vault arm's Query settings, stored in the vault's manifest (one atomic commit)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..vault.manifest import TunedDefaults
from .arms import AbTemplate, checkpoint_of
from .config import HIGHER_IS_BETTER, AbConfig, AbConfigError
from .stats import summarise


def best_arm(config: AbConfig, template: AbTemplate, rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The vault arm with the best mean paired difference to the baseline on config.tune_on; it must beat the
    baseline (a positive signed mean) or nothing is chosen."""
    metric = config.tune_on
    arms = [a.name for a in config.arms]
    summary = summarise(rows, arms, config.baseline, [metric])["all"]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    candidates = [(sign * summary[a][metric]["diff"], a) for a in arms
                  if a != config.baseline and template.settings[a].get("vault") != "off"
                  and summary[a][metric].get("diff") is not None]
    if not candidates:
        raise AbConfigError(f"no vault arm has {metric} scores paired with the baseline '{config.baseline}': nothing to "
                            "tune (is clip_vision set? did the arms run?)")
    gain, arm = max(candidates)
    if gain <= 0:
        raise AbConfigError(f"no vault arm beat the baseline '{config.baseline}' on {metric} (best: {arm}, "
                            f"{sign * gain:+.4f}); the vault's defaults were left as they are")
    return arm, summary[arm][metric]


def write_defaults(config: AbConfig, template: AbTemplate, rows: list[dict[str, Any]]) -> TunedDefaults:
    """Store the best arm's strength, k, temperature and blend mode in config.vault's manifest."""
    from ..vault.store import VaultWriter

    if config.vault is None:
        raise AbConfigError(f"{config.path}: --write-defaults needs vault: (the vault to store them in)")
    arm, stats = best_arm(config, template, rows)
    s = template.settings[arm]
    missing = [k for k in ("strength", "k", "temperature", "blend_mode") if s.get(k) is None]
    if missing:
        raise AbConfigError(f"arm '{arm}': its Query's {', '.join(missing)} come from links, not values; nothing to store")
    tuned = TunedDefaults(strength=float(s["strength"]), k=int(s["k"]), temperature=float(s["temperature"]),
                          blend_mode=str(s["blend_mode"]), checkpoint=checkpoint_of(template.arms[arm]) or "",
                          tuned_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), metric=config.tune_on,
                          improvement=float(stats["diff"]), samples=int(stats["pairs"]), run=config.name)
    with VaultWriter.open(config.vault) as w:
        w.set_tuned(tuned)
    return tuned
