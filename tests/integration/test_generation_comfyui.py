"""Dataset generation against two real headless ComfyUI servers (no model weights: EmptyImage -> SaveImage).

One server is killed mid-run and a CLI run is interrupted with Ctrl-C and resumed: every job must end
on disk exactly once, with its sidecars, and failing prompts must be retried and then reported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_server import ComfyServer, require_comfyui

pytestmark = pytest.mark.slow
require_comfyui()

from luna_vault.generation.campaign import Campaign  # noqa: E402
from luna_vault.generation.dispatch import LEDGER, Dispatcher, Ledger  # noqa: E402
from luna_vault.generation.workflow import WorkflowTemplate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "examples" / "generation" / "workflows" / "empty_image_api.json"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    started = []
    try:
        for name in ("a", "b"):
            s = ComfyServer(tmp_path_factory.mktemp(f"comfy-{name}"))
            s.prepare()
            s.start()
            started.append(s)
        yield started
    finally:
        for s in started:
            s.stop()


def _campaign(tmp_path: Path, eyes: int = 23, hands: int = 10) -> Path:
    p = tmp_path / "campaign.yaml"
    p.write_text(f"""\
name: itest
seed: 7
sizes: [32, [48, 32]]
batch_size: 2
negative: lowres
checkpoints: [a.safetensors, b.safetensors]
categories:
  eyes:
    quota: {eyes}
    templates: ["{{blue|green|brown}} eyes, [detailed]"]
  hands:
    quota: {hands}
    batch_size: 3
    templates: ["a hand, {{open|fist}}"]
""")
    return p


def _check_exactly_once(out: Path, campaign: Path, servers: set[str] | None = None) -> list[dict[str, Any]]:
    jobs = Campaign.load(campaign).plan()
    expected = {f"{j.category}/{j.job_id}_{k}" for j in jobs for k in range(j.batch)}
    pngs = {str(p.relative_to(out).with_suffix("")) for p in out.rglob("*.png")}
    assert pngs == expected, (sorted(pngs - expected)[:5], sorted(expected - pngs)[:5])
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    sides = []
    by_id = {j.job_id: j for j in jobs}
    for stem in sorted(expected):
        side = json.loads((out / f"{stem}.json").read_text())
        job = by_id[side["job_id"]]
        assert (out / f"{stem}.txt").read_text() == job.prompt == side["prompt"]
        assert (side["seed"], side["checkpoint"], side["category"], side["campaign"]) == (job.seed, job.checkpoint,
                                                                                          job.category, "itest")
        assert side["negative"] == "lowres" and side["workflow_hash"] and side["timestamp"]
        with Image.open(out / f"{stem}.png") as im:
            assert im.size == (job.width, job.height)
        sides.append(side)
    if servers is not None:
        assert {s["server"] for s in sides} <= servers
    ledger = Ledger(out / LEDGER)
    try:
        assert set(ledger.states().values()) == {"done"} and len(ledger.states()) == len(jobs)
    finally:
        ledger.close()
    return sides


def test_a_server_killed_mid_run_loses_nothing(servers: list[ComfyServer], tmp_path: Path) -> None:
    a, b = servers
    campaign = _campaign(tmp_path)
    jobs = Campaign.load(campaign).plan()
    done_on: dict[str, int] = {}
    killed: list[float] = []

    def on_done(job: Any, server: str) -> None:
        done_on[server] = done_on.get(server, 0) + 1
        if server == b.url.split("://")[1] and not killed:
            b.proc.kill()  # the second PC goes away mid-run, with prompts still queued on it
            killed.append(time.time())

    out = tmp_path / "out"
    report = Dispatcher(jobs, WorkflowTemplate.load(TEMPLATE), [a.url, b.url], out, depth=3, poll=0.05,
                        progress=False, on_job_done=on_done).run()
    assert killed, "server b never finished a job before the run ended"
    assert report.failed == [] and report.done == len(jobs) and report.images == 33
    assert report.requeued >= 1  # b's queued prompts went to a
    names = {a.url.split("://")[1], b.url.split("://")[1]}
    sides = _check_exactly_once(out, campaign, names)
    per = {n: sum(1 for s in sides if s["server"] == n) for n in names}
    assert per[b.url.split("://")[1]] >= 1 and per[a.url.split("://")[1]] > 0
    assert report.per_server == {n: per[n] for n in names}
    # a second run has nothing left to do
    again = Dispatcher(jobs, WorkflowTemplate.load(TEMPLATE), [a.url], out, progress=False).run()
    assert again.images == 0 and again.skipped == len(jobs)


def test_ctrl_c_and_resume_through_the_cli(servers: list[ComfyServer], tmp_path: Path) -> None:
    a = servers[0]
    campaign = _campaign(tmp_path, eyes=60, hands=30)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "luna_vault.cli", "generate", str(campaign), "--workflow", str(TEMPLATE),
           "--server", a.url.split("://")[1], "--out", str(out), "--depth", "1"]
    # a shell that runs the suite in the background ignores SIGINT, and children inherit that: give the CLI the
    # default handler back, as a terminal would
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 8:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    first = len(list(out.rglob("*.png")))
    assert 8 <= first < 90, first
    # the plan reads the measured rate from the ledger
    res = subprocess.run([sys.executable, "-m", "luna_vault.cli", "plan", str(campaign), "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=120)
    info = json.loads(res.stdout)
    assert info["rate_source"] == "measured" and info["rate_images_per_s"] > 0 and info["already_done_jobs"] > 0
    res = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["skipped"] > 0 and report["failed"] == []
    _check_exactly_once(out, campaign)


def test_rejected_prompts_are_retried_then_reported(servers: list[ComfyServer], tmp_path: Path) -> None:
    a = servers[0]
    graph = json.loads(TEMPLATE.read_text())
    graph["1"]["inputs"]["width"] = "{{prompt}}"  # text into an INT input: ComfyUI refuses the prompt
    bad = tmp_path / "bad_api.json"
    bad.write_text(json.dumps(graph))
    campaign = _campaign(tmp_path, eyes=4, hands=0)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "luna_vault.cli", "generate", str(campaign), "--workflow", str(bad),
                          "--server", a.url.split("://")[1], "--out", str(out), "--retries", "1", "--json"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert res.returncode == 1, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert [f["job_id"] for f in report["failed"]] == ["eyes-000000", "eyes-000001"]
    assert all(f["attempts"] == 2 and "rejected" in f["error"] and "EmptyImage" in f["error"] for f in report["failed"])
    assert len((out / "failed.jsonl").read_text().splitlines()) == 2
    assert not list(out.rglob("*.png"))
