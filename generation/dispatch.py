"""Run a campaign's jobs on one or many ComfyUI servers, exactly once each, resumable.

Each server gets a worker that keeps `depth` of our prompts queued on it, follows them through
/history, downloads the images (/view) and writes each with a `.json` and `.txt` sidecar. A job
ledger (SQLite, in the output folder) records every job's state, so Ctrl-C or a crash loses nothing:
the next run re-queues what was in flight and skips what is done. A server that stops answering has
its jobs re-queued on the others and is retried with back-off; a prompt ComfyUI rejects or fails is
retried `retries` times, then reported. Files are named by job (`eyes/eyes-000042_0.png`) and written
atomically, and a job is marked done only after its files are on disk, so every image exists once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from ..core.atomic import atomic_write_bytes
from .campaign import Job
from .client import ComfyClient, PromptRejected, ServerDown, execution_seconds, outcome
from .workflow import WorkflowError, WorkflowTemplate

LEDGER = "ledger.sqlite"


class DispatchError(RuntimeError):
    """The run cannot go on (every server unreachable, or the output folder belongs to another plan)."""


def spec_hash(job: Job) -> str:
    return hashlib.sha256(json.dumps(job.to_json(), sort_keys=True).encode()).hexdigest()[:16]


class Ledger:
    """Job states in SQLite: pending -> running -> done | failed (running -> pending after a stop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS jobs (
            job_id TEXT PRIMARY KEY, category TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, server TEXT, error TEXT, images INTEGER NOT NULL,
            finished REAL)""")
        self.db.execute("CREATE TABLE IF NOT EXISTS runs (started REAL, ended REAL, images INTEGER)")

    def sync(self, jobs: list[Job]) -> None:
        """Add new jobs; refuse if a finished job's settings changed; in-flight jobs become pending."""
        known = {r[0]: (r[1], r[2]) for r in self.db.execute("SELECT job_id, spec, state FROM jobs")}
        changed = [j.job_id for j in jobs if j.job_id in known and known[j.job_id][1] == "done"
                   and known[j.job_id][0] != spec_hash(j)]
        if changed:
            raise DispatchError(f"{len(changed)} finished job(s) ({', '.join(changed[:3])}...) had other settings in "
                                f"{self.path.parent}: the campaign changed. Use a new --out folder, or put the old "
                                "settings back")
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO jobs (job_id, category, spec, state, images) VALUES (?, ?, ?, 'pending', ?)",
                [(j.job_id, j.category, spec_hash(j), j.batch) for j in jobs])
            self.db.executemany("UPDATE jobs SET spec = ?, images = ? WHERE job_id = ? AND state != 'done'",
                                [(spec_hash(j), j.batch, j.job_id) for j in jobs])
            self.db.execute("UPDATE jobs SET state = 'pending' WHERE state = 'running'")

    def states(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.db.execute("SELECT job_id, state FROM jobs")}

    def state(self, job_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def attempts(self, job_id: str) -> int:
        return int(self.db.execute("SELECT attempts FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0])

    def set(self, job_id: str, state: str, server: str | None = None, error: str | None = None,
            attempt: bool = False) -> None:
        self.db.execute(
            "UPDATE jobs SET state = ?, server = COALESCE(?, server), error = ?, attempts = attempts + ?, "
            "finished = CASE WHEN ? IN ('done', 'failed') THEN ? ELSE finished END WHERE job_id = ?",
            (state, server, error, int(attempt), state, time.time(), job_id))

    def retry_failed(self) -> int:
        return self.db.execute("UPDATE jobs SET state = 'pending', attempts = 0 WHERE state = 'failed'").rowcount

    def failures(self) -> list[dict[str, Any]]:
        return [{"job_id": r[0], "attempts": r[1], "error": r[2]}
                for r in self.db.execute("SELECT job_id, attempts, error FROM jobs WHERE state = 'failed' ORDER BY job_id")]

    def record_run(self, started: float, images: int) -> None:
        self.db.execute("INSERT INTO runs VALUES (?, ?, ?)", (started, time.time(), images))

    def measured_rate(self) -> float | None:
        """Images per second over the recorded runs (None before any image was made)."""
        secs, images = self.db.execute("SELECT SUM(ended - started), SUM(images) FROM runs").fetchone()
        return images / secs if images and secs and secs > 0 else None

    def close(self) -> None:
        self.db.close()


@dataclass
class ServerState:
    client: ComfyClient
    inflight: dict[str, tuple[Job, float]] = field(default_factory=dict)  # prompt id -> job, submitted at
    up: bool = True
    down_since: float | None = None
    backoff: float = 1.0
    images: int = 0
    errors: int = 0


@dataclass
class Report:
    done: int
    failed: list[dict[str, Any]]
    images: int
    per_server: dict[str, int]
    seconds: float
    skipped: int  # already done before this run
    requeued: int = 0  # jobs moved off a server that stopped answering or lost them

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Dispatcher:
    """Runs jobs (anything with job_id, category, batch, to_json) through a template: anything with fill(job),
    name, hash, sidecar(job) (the job's fields for each image's .json) and history_extras(entry) (what the
    finished prompt's /history adds to it), as WorkflowTemplate and ab's AbTemplate have. `prepare(client)`
    runs on each server before its first job and whenever it comes back, e.g. to upload input images."""

    def __init__(self, jobs: list[Any], template: WorkflowTemplate | Any, servers: list[str], out: str | Path,
                 depth: int = 2, retries: int = 2, poll: float = 0.2, give_up_after: float = 120.0, progress: bool = True,
                 on_job_done: Callable[[Any, str], None] | None = None,
                 prepare: Callable[[ComfyClient], Awaitable[None]] | None = None, unit: str = "img",
                 desc: str = "generate") -> None:
        if not servers:
            raise DispatchError("no --server given")
        if depth < 1:
            raise DispatchError(f"queue depth must be at least 1, got {depth}")
        self.jobs = {j.job_id: j for j in jobs}
        self.order = [j.job_id for j in jobs]
        self.template, self.server_names, self.out = template, servers, Path(out)
        self.depth, self.retries, self.poll, self.give_up_after = depth, retries, poll, give_up_after
        self.progress, self.on_job_done, self.prepare = progress, on_job_done, prepare
        self.unit, self.desc = unit, desc
        if jobs:
            template.fill(jobs[0])  # a template that needs values the campaign lacks fails before anything starts

    def run(self, retry_failed: bool = False) -> Report:
        """Run to the end (blocking). Ctrl-C stops cleanly; run again to resume."""
        return asyncio.run(self.arun(retry_failed))

    async def arun(self, retry_failed: bool = False) -> Report:
        self.out.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(self.out / LEDGER)
        started = time.time()
        written = 0
        try:
            ledger.sync(list(self.jobs.values()))
            if retry_failed:
                ledger.retry_failed()
            states = ledger.states()
            skipped = sum(1 for j in self.order if states.get(j) == "done")
            self.pending: deque[str] = deque(j for j in self.order if states.get(j) == "pending")
            self.ledger = ledger
            self.requeued = 0
            bar = self._bar(sum(self.jobs[j].batch for j in self.order),
                            sum(self.jobs[j].batch for j in self.order if states.get(j) == "done"))
            async with aiohttp.ClientSession() as session:
                self.servers = [ServerState(ComfyClient(s, session)) for s in self.server_names]
                self.bar = bar
                tasks = [asyncio.ensure_future(self._serve(s)) for s in self.servers]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for t in tasks:  # one worker gave up (or Ctrl-C): stop the others before cleaning up
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    written = sum(s.images for s in self.servers)
                    for s in self.servers:  # on Ctrl-C: take our queued prompts back
                        if s.inflight and s.up:
                            await asyncio.shield(s.client.delete(list(s.inflight)))
                    if bar is not None:
                        bar.close()
            failed = ledger.failures()
            if failed:
                atomic_write_bytes(self.out / "failed.jsonl", "".join(json.dumps(f) + "\n" for f in failed).encode())
            states = ledger.states()
            return Report(done=sum(1 for j in self.order if states.get(j) == "done"), failed=failed, images=written,
                          per_server={s.client.name: s.images for s in self.servers}, seconds=time.time() - started,
                          skipped=skipped, requeued=self.requeued)
        finally:
            ledger.record_run(started, written)
            ledger.close()

    # ---- one worker per server ---------------------------------------------------------------------
    def _busy(self) -> bool:
        return bool(self.pending) or any(s.inflight for s in self.servers)

    async def _serve(self, s: ServerState) -> None:
        prepared = False
        while self._busy():
            if not s.up:  # its jobs went back to pending when it went down
                if not self.pending:
                    return  # nothing left for us; the others finish their own
                await asyncio.sleep(s.backoff)
                if await s.client.alive():
                    s.up, s.down_since, s.backoff = True, None, 1.0
                    self._log(f"{s.client.name} is back")
                else:
                    s.backoff = min(10.0, s.backoff * 2)
                    if all(not o.up for o in self.servers) and time.time() - min(
                            o.down_since or time.time() for o in self.servers) > self.give_up_after:
                        raise DispatchError(f"no server has answered for {self.give_up_after:g} s "
                                            f"({', '.join(self.server_names)}); run again to resume")
                continue
            try:
                if not prepared and self.prepare is not None:
                    await self.prepare(s.client)
                prepared = True
                await self._fill(s)
                await self._follow(s)
            except ServerDown as e:
                self._server_down(s, str(e))
                prepared = False  # it may have restarted without our inputs
                continue
            await asyncio.sleep(self.poll)

    async def _fill(self, s: ServerState) -> None:
        while len(s.inflight) < self.depth and self.pending:
            job = self.jobs[self.pending.popleft()]
            try:
                graph = self.template.fill(job)
                self.ledger.set(job.job_id, "running", server=s.client.name)
                pid = await s.client.submit(graph)
            except ServerDown:
                self.pending.appendleft(job.job_id)
                self.ledger.set(job.job_id, "pending")
                raise
            except (PromptRejected, WorkflowError) as e:
                self._failed(job, s, f"rejected: {e}")
                continue
            s.inflight[pid] = (job, time.time())

    async def _follow(self, s: ServerState) -> None:
        if not s.inflight:
            return
        queued: set[str] | None = None
        for pid, (job, _) in list(s.inflight.items()):
            entry = await s.client.history(pid)
            if entry is None:
                # still queued, or lost (the server restarted): ask the queue once per round
                if queued is None:
                    queued = await s.client.queued()
                if pid not in queued and await s.client.history(pid) is None:
                    del s.inflight[pid]
                    self.pending.appendleft(job.job_id)
                    self.ledger.set(job.job_id, "pending")
                    self.requeued += 1
                    self._log(f"{s.client.name} lost {job.job_id} (restarted?); re-queued")
                continue
            state, detail = outcome(entry)
            if state == "running":
                continue
            del s.inflight[pid]
            if state == "error":
                self._failed(job, s, str(detail))
                continue
            if len(detail) < job.batch:
                self._failed(job, s, f"the workflow returned {len(detail)} image(s), the job needs {job.batch}")
                continue
            try:
                blobs = [await s.client.view(im) for im in detail[: job.batch]]
            except ServerDown:
                s.inflight[pid] = (job, time.time())  # follow it again once the server is back
                raise
            self._write(job, s, blobs, pid, entry)

    # ---- outcomes ----------------------------------------------------------------------------------
    def _write(self, job: Any, s: ServerState, blobs: list[bytes], prompt_id: str, entry: dict[str, Any]) -> None:
        if self.ledger.state(job.job_id) == "done":
            return  # finished elsewhere meanwhile
        folder = self.out / job.category
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for k, blob in enumerate(blobs):
            ext = _image_ext(blob)
            stem = f"{job.job_id}_{k}"
            side = {**self.template.sidecar(job), "batch_index": k, "server": s.client.name,
                    "workflow": self.template.name, "workflow_hash": self.template.hash, "job_id": job.job_id,
                    "comfy_prompt_id": prompt_id, "comfy_seconds": execution_seconds(entry), "timestamp": now,
                    **self.template.history_extras(entry)}
            atomic_write_bytes(folder / f"{stem}{ext}", blob)
            atomic_write_bytes(folder / f"{stem}.json", (json.dumps(side, indent=1) + "\n").encode())
            if isinstance(side.get("prompt"), str):
                atomic_write_bytes(folder / f"{stem}.txt", side["prompt"].encode())
        self.ledger.set(job.job_id, "done", server=s.client.name)
        s.images += len(blobs)
        if self.bar is not None:
            self.bar.update(len(blobs))
            el = max(1e-9, time.time() - self._t0)
            self.bar.set_postfix_str(" ".join(f"{o.client.name}={o.images / el:.2f}/s" + ("" if o.up else "(down)")
                                              for o in self.servers))
        if self.on_job_done is not None:
            self.on_job_done(job, s.client.name)

    def _failed(self, job: Any, s: ServerState, error: str) -> None:
        s.errors += 1
        self.ledger.set(job.job_id, "running", error=error, attempt=True)
        if self.ledger.attempts(job.job_id) > self.retries:
            self.ledger.set(job.job_id, "failed", server=s.client.name, error=error)
            self._log(f"{job.job_id} failed for good: {error}")
        else:
            self.ledger.set(job.job_id, "pending", error=error)
            self.pending.append(job.job_id)

    def _server_down(self, s: ServerState, why: str) -> None:
        if s.up:
            self._log(f"{s.client.name} is not answering ({why}); {len(s.inflight)} job(s) re-queued on the others")
        s.up, s.down_since = False, s.down_since or time.time()
        for job, _ in s.inflight.values():
            self.pending.appendleft(job.job_id)
            self.ledger.set(job.job_id, "pending")
            self.requeued += 1
        s.inflight.clear()

    def _bar(self, total: int, done: int) -> Any:
        self._t0 = time.time()
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=done, unit=self.unit, desc=self.desc, file=sys.stderr, dynamic_ncols=True,
                    disable=not sys.stderr.isatty())

    def _log(self, msg: str) -> None:
        if self.progress:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)


def _image_ext(blob: bytes) -> str:
    if blob.startswith(b"\x89PNG"):
        return ".png"
    if blob[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if blob[:4] == b"RIFF" and blob[8:12] == b"WEBP":
        return ".webp"
    return ".bin"
