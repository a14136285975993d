"""CLI verbs for dataset generation: plan (what a campaign will make, and how long) and generate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import UsageError, emit, read_yaml_file
from .paths import input_file, output_folder


def _eta(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def _check_template(template: Any, campaign: Any) -> list[str]:
    """Warnings about campaign settings the template ignores (errors come from filling a job)."""
    notes = []
    used = set(template.placeholders)
    if any(c.settings["checkpoints"] for c in campaign.categories) and "checkpoint" not in used:
        notes.append(f"{template.name} has no {{{{checkpoint}}}}: the campaign's checkpoints are only recorded")
    if "prompt" not in used:
        notes.append(f"{template.name} has no {{{{prompt}}}}: prompts are only recorded in the sidecars")
    if any(c.settings["loras"] for c in campaign.categories) and not any(p.startswith("lora") for p in used):
        notes.append(f"{template.name} has no {{{{lora}}}}: the campaign's LoRAs are only recorded")
    return notes


def cmd_plan(a: argparse.Namespace) -> int:
    read_yaml_file(a.campaign, "campaign file")
    if a.workflow:
        input_file(a.workflow, "--workflow")
    if a.out:
        output_folder(a.out, "--out")
    from ..generation.campaign import Campaign
    from ..generation.dispatch import LEDGER, Ledger

    camp = Campaign.load(a.campaign)
    jobs = camp.plan()
    info = camp.summary(jobs)
    notes: list[str] = []
    if a.workflow:
        from ..generation.workflow import WorkflowTemplate

        tpl = WorkflowTemplate.load(a.workflow)
        if jobs:
            tpl.fill(jobs[0])  # fails here when the template needs what the campaign lacks
        notes = _check_template(tpl, camp)
    measured = None
    if a.out and (Path(a.out) / LEDGER).is_file():
        ledger = Ledger(Path(a.out) / LEDGER)
        measured = ledger.measured_rate()
        done = sum(1 for s in ledger.states().values() if s == "done")
        ledger.close()
        info["already_done_jobs"] = done
    use_rate = measured or a.rate
    info["rate_images_per_s"] = use_rate
    info["rate_source"] = "measured" if measured else ("--rate" if a.rate else None)
    remaining = info["images"] - sum(j.batch for j in jobs[: info.get("already_done_jobs", 0)])
    info["eta_s"] = remaining / use_rate if use_rate else None
    info["samples"] = {c.name: [j.prompt for j in jobs if j.category == c.name][:a.show] for c in camp.categories}
    info["notes"] = notes
    rows = [f"campaign {info['campaign']}: {info['jobs']:,} jobs, {info['images']:,} images (plan {info['plan_hash']})"]
    for name, c in info["categories"].items():
        ck = ", ".join(f"{k} {v:,}" for k, v in c["checkpoints"].items())
        rows.append(f"  {name:<14} quota {c['quota']:>8,}  jobs {c['jobs']:>7,}  unique prompts {c['unique_prompts']:>7,}  "
                    f"jobs per checkpoint: {ck}")
        for p in info["samples"][name]:
            rows.append(f"      e.g. {p}")
    rows.append("images per checkpoint: " + ", ".join(f"{k} {v:,}" for k, v in info["images_per_checkpoint"].items()))
    if use_rate:
        rows.append(f"ETA: {_eta(info['eta_s'])} at {use_rate:.2f} images/s ({info['rate_source']})")
    else:
        rows.append("ETA: unknown (pass --rate IMAGES_PER_S, or --out of a folder where generate has run)")
    rows += [f"note: {n}" for n in notes]
    emit(info, a.json, "\n".join(rows))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    if not a.server:
        raise UsageError("give at least one --server host:port")
    if not a.give_up_after > 0:
        raise UsageError(f"--give-up-after is a number of seconds > 0, got {a.give_up_after:g}")
    read_yaml_file(a.campaign, "campaign file")
    input_file(a.workflow, "--workflow")
    output_folder(a.out, "--out")
    from ..generation.campaign import Campaign
    from ..generation.dispatch import Dispatcher
    from ..generation.workflow import WorkflowTemplate

    camp = Campaign.load(a.campaign)
    tpl = WorkflowTemplate.load(a.workflow)
    jobs = camp.plan()
    if a.limit is not None:
        jobs = jobs[:a.limit]
    for note in _check_template(tpl, camp):
        print(f"note: {note}", file=sys.stderr)
    report = Dispatcher(jobs, tpl, a.server, a.out, depth=a.depth, retries=a.retries, give_up_after=a.give_up_after,
                        progress=not a.json).run(a.retry_failed)  # gives up with one line (exit 2); run again to resume
    text = (f"{a.out}: {report.images:,} images written this run ({report.skipped:,} jobs were already done), "
            f"{report.done:,}/{len(jobs):,} jobs done in {report.seconds:.0f} s; per server: "
            + ", ".join(f"{k} {v:,}" for k, v in report.per_server.items()))
    if report.failed:
        text += (f"\n{len(report.failed)} job(s) failed after {a.retries + 1} attempts, listed in {a.out}/failed.jsonl "
                 f"(first: {report.failed[0]['job_id']}: {report.failed[0]['error']}); --retry-failed tries them again")
    emit(report.to_json(), a.json, text)
    return 1 if report.failed else 0
