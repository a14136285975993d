"""The A/B report: one self-contained HTML page (images and plots inline), plus CSV and JSON.

At the top one verdict line per arm (better / worse / no difference that matters / unclear, per score,
with the interval and the pairs), then per seed (collapsible) a row of the reference region and each
arm's output; per category, each score's paired difference to the baseline against the vault strength
with its bootstrap 95% interval, and a table of means, differences, wins, ties and losses coloured by
the same verdicts. Few samples are said plainly at the top.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..core.atomic import atomic_write_bytes
from . import scores as sc
from .arms import AbTemplate, checkpoint_of
from .config import HIGHER_IS_BETTER, SCORES, AbConfig
from .stats import FEW, VERDICT_TEXT, arm_verdict, relevance, summarise

if TYPE_CHECKING:
    from .run import AbRun, Scorer

LABELS = {"clip_similarity": "CLIP similarity", "ciede2000": "CIEDE2000 (mean ΔE)", "hue_distance": "hue distance",
          "vault_agreement": "vault agreement", "ssim": "SSIM to first pass"}
SHORT = {"clip_similarity": "CLIP", "ciede2000": "ΔE", "hue_distance": "hue", "vault_agreement": "agree", "ssim": "SSIM"}
THUMB = 160


def _data_uri(arr: np.ndarray) -> str:
    im = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
    scale = THUMB / max(im.size)  # small crops are enlarged too: they are what people look at
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _plot(summary: dict[str, Any], arms: list[str], strengths: dict[str, float], scores: list[str], baseline: str) -> str:
    """One SVG figure: per score, each arm's paired difference to the baseline against its vault strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(2.8 * len(scores), 2.8), squeeze=False)
    for ax, s in zip(axes[0], scores):
        for arm in arms:
            p = summary[arm][s]
            if arm == baseline or p.get("diff") is None:
                continue
            x = strengths.get(arm, 0.0)
            lo, hi = p["ci"] if p.get("ci") else (p["diff"], p["diff"])
            ax.errorbar([x], [p["diff"]], yerr=[[p["diff"] - lo], [hi - p["diff"]]], fmt="o", capsize=3)
            ax.annotate(arm, (x, p["diff"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        better = HIGHER_IS_BETTER[s]
        ax.set_title(LABELS[s] + ("" if better is None else (" ↑" if better else " ↓")), fontsize=9)
        ax.set_xlabel("vault strength", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"arm − {baseline} (95% CI)", fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', svg, count=1)  # fits the page


def write_report(config: AbConfig, template: AbTemplate, run: "AbRun", scorer: "Scorer") -> dict[str, str]:
    out = run.out
    arms = [a.name for a in config.arms]
    present = [s for s in SCORES if any(r.get(s) is not None for r in run.rows)]
    thresholds = relevance(config.agreement_k, config.relevance)
    summary = summarise(run.rows, arms, config.baseline, present, thresholds)
    strengths = {}
    for a in arms:
        value = template.settings[a].get("strength")
        strengths[a] = float(value) if isinstance(value, (int, float)) else 0.0
    pairs = min((summary["all"][a][present[0]]["pairs"] for a in arms if a != config.baseline), default=0) if present else 0
    warnings = []
    if pairs < FEW:
        warnings.append(f"Only {pairs} paired sample(s) per arm (references × seeds): intervals are wide or missing and "
                        f"win rates coarse. Add references or seeds (at least {FEW} pairs) before trusting a difference.")
    if run.missing:
        warnings.append(f"{run.missing} of {len(run.rows) + run.missing} outputs are missing (failed or not run yet); "
                        "scores use the pairs that exist.")
    meta = {"name": config.name, "template": str(config.template), "template_hash": template.hash,
            "checkpoint": checkpoint_of(template.template), "baseline": config.baseline, "seeds": config.seeds,
            "references": [r.name for r in config.references], "arms": {a: template.settings[a] for a in arms},
            "vault": str(config.vault) if config.vault else None, "scored_with": {
                "clip_vision_node": template.encoder[0] if template.encoder else None, "vault": template.probe_vault or None},
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"), "timings": run.timings,
            "warnings": warnings, "notes": run.notes, "failed": run.failed,
            "relevance": {s: thresholds[s] for s in present if s in thresholds},
            "verdicts": {a: verdict_line(a, summary["all"][a], config.baseline) for a in arms if a != config.baseline}}
    files = {"json": str(out / "ab_summary.json"), "csv": str(out / "ab_scores.csv"), "html": str(out / "ab_report.html")}
    atomic_write_bytes(Path(files["json"]), json.dumps({"meta": meta, "summary": summary, "rows": run.rows},
                                                       indent=1, default=float).encode())
    buf = io.StringIO()
    cols = ["job_id", "arm", "reference", "category", "seed", "strength", "k", "temperature", "blend_mode", *SCORES,
            "comfy_seconds", "note", "image"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(run.rows)
    atomic_write_bytes(Path(files["csv"]), buf.getvalue().encode())
    atomic_write_bytes(Path(files["html"]), _html(config, template, run, scorer, summary, present, strengths, meta).encode())
    return files


ARM_TEXT = {**VERDICT_TEXT, "mixed": "mixed (better on one score, worse on another)", "unclear": "unclear (add pairs)"}


def _num(v: float) -> str:
    return f"{v:+.3g}"


def _score_text(score: str, p: dict[str, Any]) -> str:
    ci = p.get("ci")
    interval = f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else " (1 pair)"
    return f"{LABELS[score]} {_num(p['diff'])}{interval}: {VERDICT_TEXT[p['verdict']]}"


def verdict_line(arm: str, by_score: dict[str, Any], baseline: str) -> str:
    """One line: the arm's verdict against the baseline, then each score's difference, interval and verdict."""
    scored = {s: p for s, p in by_score.items() if p.get("verdict")}
    pairs = max((p["pairs"] for p in scored.values()), default=0)
    head = f"{arm}: {ARM_TEXT[arm_verdict(scored)]} against {baseline} over {pairs} pair{'s' * (pairs != 1)}"
    tail = f" (under {FEW} pairs: provisional)" if pairs < FEW else ""
    return head + tail + (" — " + "; ".join(_score_text(s, p) for s, p in scored.items()) if scored else "")


def _verdicts_html(summary: dict[str, Any], arms: list[str], baseline: str) -> str:
    e = html.escape
    items = []
    for arm in arms:
        if arm == baseline:
            continue
        scored = {s: p for s, p in summary[arm].items() if p.get("verdict")}
        pairs = max((p["pairs"] for p in scored.values()), default=0)
        word = arm_verdict(scored)
        spans = "; ".join(f"<span class='{p['verdict']}' data-score='{s}' data-verdict='{p['verdict']}'>"
                          f"{e(_score_text(s, p))}</span>" for s, p in scored.items())
        items.append(f"<li data-arm='{e(arm)}' data-verdict='{word}'><b>{e(arm)}</b>: <span class='{word}'>"
                     f"{e(ARM_TEXT[word])}</span> against {e(baseline)} over {pairs} pair{'s' * (pairs != 1)}"
                     f"{f' (under {FEW} pairs: provisional)' if pairs < FEW else ''}{' — ' + spans if spans else ''}</li>")
    return "<h2>Verdict</h2><ul class='verdicts'>" + "".join(items) + "</ul>"


def _outputs_html(config: AbConfig, run: "AbRun", scorer: "Scorer", present: list[str]) -> list[str]:
    """Per seed (the first open, the others folded), each reference beside every arm's output."""
    e = html.escape
    arms = [a.name for a in config.arms]
    by_key = {(r["arm"], r["reference"], r["seed"]): r for r in run.rows}
    parts = []
    for n, seed in enumerate(config.seeds):
        rows = []
        for ref in config.references:
            figs = [f"<figure><img src='{_data_uri(scorer.refs[ref.name]['crop'])}'>reference {e(ref.name)}</figure>"]
            for arm in arms:
                row = by_key.get((arm, ref.name, seed))
                if row is None:
                    figs.append(f"<figure><div style='width:{THUMB}px;height:{THUMB // 2}px;border:1px dashed #bbb'>"
                                f"</div>{e(arm)}: missing</figure>")
                    continue
                img, _ = sc.output_region(sc.load_rgb(run.out / row["image"]), ref.size, ref.region)
                cap = "<br>".join(f"{SHORT[s]} {row[s]:.3f}" for s in present if row.get(s) is not None)
                figs.append(f"<figure><img src='{_data_uri(img)}'><b>{e(arm)}</b><br>{cap}</figure>")
            rows.append(f"<div>{''.join(figs)}</div>")
        parts.append(f"<details class='seed' data-seed='{seed}'{' open' if n == 0 else ''}><summary>Seed {seed}: the "
                     f"detailed region of each arm beside its reference</summary>{''.join(rows)}</details>")
    return parts


def _cell(p: dict[str, Any]) -> str:
    txt = _fmt(p.get("mean"))
    if p.get("diff") is None:
        return f"<td>{txt}</td>"
    ci = p.get("ci")
    txt += (f"<br>Δ {_num(p['diff'])}" + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else " (1 pair)"))
    if p.get("verdict") is None:
        return f"<td>{txt}</td>"
    txt += f"<br>wins {p['wins']} · ties {p['ties']} · losses {p['losses']}"
    return f"<td class='{p['verdict']}' data-verdict='{p['verdict']}'>{txt}</td>"


def _html(config: AbConfig, template: AbTemplate, run: "AbRun", scorer: "Scorer", summary: dict[str, Any],
          present: list[str], strengths: dict[str, float], meta: dict[str, Any]) -> str:
    arms = [a.name for a in config.arms]
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>A/B: {e(config.name)}</title><style>"
             "body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}"
             "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th{background:#f3f3f3}td.l,th.l{text-align:left}.warn{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;"
             "margin:8px 0}.fail{background:#fde2e2;border:1px solid #d88;padding:8px 12px;margin:8px 0}"
             ".better{color:#17692f;font-weight:600}.worse{color:#a11;font-weight:600}.same,.few{color:#777}"
             ".mixed{color:#8a5a00;font-weight:600}ul.verdicts{font-size:15px;line-height:1.6}"
             "details.seed{margin:6px 0}details.seed summary{cursor:pointer;font-weight:600}"
             "figure{display:inline-block;margin:4px;"
             "text-align:center;font-size:11px}figure img{display:block;border:1px solid #bbb}</style></head><body>",
             f"<h1>Is the vault helping? — {e(config.name)}</h1>",
             f"<p>Template <code>{e(config.template.name)}</code> ({e(template.hash)}), checkpoint "
             f"<code>{e(str(meta['checkpoint']))}</code>, {len(config.references)} reference(s) × {len(config.seeds)} seed(s) "
             f"× {len(arms)} arms; baseline <b>{e(config.baseline)}</b>. Written {e(meta['written'])}.</p>"]
    for wmsg in meta["warnings"]:
        parts.append(f"<div class='warn'>{e(wmsg)}</div>")
    for note in run.notes:
        parts.append(f"<div class='warn'>{e(note)}</div>")
    for f in run.failed:
        parts.append(f"<div class='fail'>arm <b>{e(f['arm'])}</b>, reference {e(f['reference'])}, seed {f['seed']}: "
                     f"{e(str(f['error']))}</div>")
    if present:
        parts.append(_verdicts_html(summary["all"], arms, config.baseline))
    thresholds = ", ".join(f"{LABELS[s]} {v:g}" for s, v in meta["relevance"].items())
    parts.append("<h2>How to read this</h2><p>Each score compares an output's detailed region with the reference region. "
                 "↑ = higher is better, ↓ = lower is better. <i>Δ</i> is the arm minus the baseline on the same reference and "
                 "seed, with a bootstrap 95% interval. A score's verdict is <span class='better'>better</span> or "
                 "<span class='worse'>worse</span> when the interval excludes 0 and the mean difference reaches the "
                 "smallest difference that matters, <span class='same'>no difference that matters</span> when the whole "
                 "interval lies within that difference either side of 0, and <i>unclear</i> otherwise (more pairs decide). "
                 f"The smallest differences that matter: {e(thresholds)} (<code>relevance:</code> in the config changes "
                 "them). A pair is a <i>win</i> or a <i>loss</i> when the arm did better or worse by at least that much, "
                 "else a <i>tie</i>. SSIM to the first pass has no better side: close to 1 means the pass barely changed the "
                 "region (an image prompt that pins the layout).</p>")
    parts.append("<h2>Outputs</h2>")
    parts += _outputs_html(config, run, scorer, present)
    for cat, by_arm in summary.items():
        parts.append(f"<h2>{'All references' if cat == 'all' else 'Category ' + e(cat)}</h2>")
        if present:
            parts.append(_plot(by_arm, arms, strengths, present, config.baseline))
        head = "".join(f"<th>{e(LABELS[s])}</th>" for s in present)
        parts.append(f"<table data-category='{e(cat)}'><tr><th class='l'>arm</th><th>strength</th>{head}</tr>")
        for arm in arms:
            cells = "".join(_cell(by_arm[arm][s]).replace("<td", f"<td data-arm='{e(arm)}' data-score='{s}'", 1)
                            for s in present)
            parts.append(f"<tr><td class='l'>{e(arm)}{' (baseline)' if arm == config.baseline else ''}</td>"
                         f"<td>{_fmt(strengths.get(arm), 2)}</td>{cells}</tr>")
        parts.append("</table>")
    t = run.timings
    parts.append(f"<h2>Time</h2><p>ComfyUI executing: {t.get('comfy_s', 0):.1f} s over {len(run.rows)} outputs; "
                 f"this run: dispatch {t.get('dispatch_s', 0):.1f} s, scoring {t.get('scoring_s', 0):.1f} s "
                 f"(mostly while the servers sampled), setup {t.get('setup_s', 0):.1f} s.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
