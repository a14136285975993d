"""`luna-vault ab`: dispatch every arm x reference x seed (resumable), score the outputs, write the report."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write_bytes
from ..generation.client import ComfyClient
from ..generation.dispatch import Dispatcher
from . import scores as sc
from .arms import AbJob, AbTemplate
from .config import SCORES, AbConfig, AbConfigError

SCORE_CACHE = "scores.json"


@dataclass
class AbRun:
    template: AbTemplate
    out: Path
    rows: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    missing: int  # jobs with no output (failed, or not run yet)
    timings: dict[str, float]
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Scorer:
    """Scores outputs against their references. Colour and structure are computed here from the saved
    pixels; CLIP similarity and vault agreement come from the Luna A/B Probe node the graph ran on the
    server (in the vault's own CLIP vision model, on the server's device)."""

    def __init__(self, config: AbConfig, template: AbTemplate) -> None:
        self.config, self.template = config, template
        self.notes: list[str] = list(template.notes)
        self.refs: dict[str, dict[str, Any]] = {
            r.name: {"crop": sc.region_of(sc.load_rgb(r.image), r.region)} for r in config.references}

    def score(self, job: AbJob, image: Path) -> dict[str, Any]:
        """Colour and structure of one output's detailed region (the probe's scores are in its .json)."""
        ref = self.template.refs[job.reference]
        out, note = sc.output_region(sc.load_rgb(image), ref.size, ref.region)
        return {**sc.pixel_scores(self.refs[job.reference]["crop"], out), "note": note}


def probe_scores(side: dict[str, Any]) -> dict[str, float]:
    """CLIP similarity and vault agreement, as the Luna A/B Probe reported them in the output's /history."""
    probe = side.get("probe") or {}
    return {key: float(probe[key]) for key in ("clip_similarity", "vault_agreement")
            if isinstance(probe.get(key), (int, float))}


def output_file(out: Path, job: AbJob) -> Path | None:
    folder = out / job.arm
    found = [p for p in folder.glob(f"{job.job_id}_0.*") if p.suffix in (".png", ".jpg", ".webp")] if folder.is_dir() else []
    return found[0] if found else None


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def run_ab(config: AbConfig, out: str | Path, servers: list[str] | None = None, depth: int = 2, retries: int = 1,
           progress: bool = True, retry_failed: bool = False, give_up_after: float = 120.0, report: bool = True) -> AbRun:
    """Run (or resume) an A/B comparison; returns the scored rows and writes the report into `out`.

    Outputs are scored as they arrive (a worker thread), while the servers sample the next ones."""
    t0 = time.perf_counter()
    out = Path(out)
    graph = config.template_graph()
    template = AbTemplate(config, graph)  # every arm's edits checked here, before anything is queued
    jobs = template.jobs()
    servers = servers or config.servers
    if not servers:
        raise AbConfigError(f"{config.path}: no servers: add servers: [host:port] or pass --server")
    if config.vault is not None:
        from ..vault.store import Vault

        Vault.open(config.vault)  # --write-defaults' target: a clear error now, not after the run
    scorer = Scorer(config, template)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / SCORE_CACHE
    try:
        cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}  # a damaged cache only costs re-scoring
    timings = {"setup_s": time.perf_counter() - t0, "scoring_s": 0.0}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ab-score")
    pending: dict[str, Future[dict[str, Any]]] = {}
    t_lock = threading.Lock()

    def score_timed(job: AbJob, image: Path) -> dict[str, Any]:
        t = time.perf_counter()
        try:
            return scorer.score(job, image)
        finally:
            with t_lock:
                timings["scoring_s"] += time.perf_counter() - t

    def on_done(job: AbJob, server: str) -> None:  # score while the servers sample the next ones
        image = output_file(out, job)
        if image is not None:
            pending[job.job_id] = pool.submit(score_timed, job, image)

    async def upload(client: ComfyClient) -> None:
        for ref in config.references:
            sub, name = template.uploads[ref.name].split("/", 1)
            await client.upload(name, ref.image.read_bytes(), sub)

    t1 = time.perf_counter()
    dispatched = Dispatcher(jobs, template, servers, out, depth=depth, retries=retries, progress=progress,
                            on_job_done=on_done, prepare=upload, give_up_after=give_up_after, unit="output",
                            desc=f"ab {config.name}")
    try:
        result = dispatched.run(retry_failed)
    finally:
        pool.shutdown(wait=True)
    timings["dispatch_s"] = time.perf_counter() - t1
    rows = []
    unscored: list[str] = []
    comfy_this_run = 0.0
    t2 = time.perf_counter()
    for job in jobs:
        image = output_file(out, job)
        if image is None:
            continue
        try:
            if job.job_id in pending:
                scored = pending[job.job_id].result()
            elif cache.get(job.job_id, {}).get("stamp") == _stamp(image):
                scored = cache[job.job_id]["scores"]
            else:
                scored = score_timed(job, image)
        except (OSError, ValueError) as e:  # an unreadable output is reported, the others still count
            unscored.append(f"{image.relative_to(out)} could not be scored: {e}")
            continue
        cache[job.job_id] = {"stamp": _stamp(image), "scores": scored}
        side = json.loads(image.with_suffix(".json").read_text()) if image.with_suffix(".json").is_file() else {}
        scored = {**scored, **probe_scores(side)}
        if job.job_id in pending:
            comfy_this_run += side.get("comfy_seconds") or 0.0
        settings = template.settings[job.arm]
        rows.append({"job_id": job.job_id, "arm": job.arm, "reference": job.reference,
                     "category": template.refs[job.reference].category, "seed": job.seed,
                     **{k: settings.get(k) for k in ("strength", "k", "temperature", "blend_mode")},
                     **{s: scored.get(s) for s in SCORES}, "note": scored.get("note", ""),
                     "comfy_seconds": side.get("comfy_seconds"), "image": str(image.relative_to(out))})
    atomic_write_bytes(cache_path, json.dumps(cache, indent=1).encode())
    timings["scoring_after_s"] = time.perf_counter() - t2
    by_id = {j.job_id: j for j in jobs}
    failed = [{**f, "arm": by_id[f["job_id"]].arm, "reference": by_id[f["job_id"]].reference,
               "seed": by_id[f["job_id"]].seed} for f in result.failed if f["job_id"] in by_id]
    run = AbRun(template, out, rows, failed, len(jobs) - len(rows), timings, notes=list(scorer.notes) + unscored)
    run.timings["comfy_s"] = float(sum(r["comfy_seconds"] or 0.0 for r in rows))
    run.timings["comfy_this_run_s"] = comfy_this_run
    if report:
        from .report import write_report

        t3 = time.perf_counter()
        run.files = write_report(config, template, run, scorer)
        run.timings["report_s"] = time.perf_counter() - t3
    run.timings["total_s"] = time.perf_counter() - t0
    return run


def print_failures(run: AbRun) -> None:
    for f in run.failed:
        print(f"arm '{f['arm']}', reference {f['reference']}, seed {f['seed']}: {f['error']}", file=sys.stderr)

