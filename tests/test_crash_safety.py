"""Kill a writer process at random points: the vault is always the old one or the new one, never half."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import clustered
from luna_vault.vault import EncoderFingerprint, Vault, VaultNotFoundError, append, build

ENC = EncoderFingerprint("test-vit", 32, "w1")
N_NEW = 40_000

WRITER = f"""
import sys
import numpy as np
from luna_vault.vault import EncoderFingerprint, append, build
path, mode = sys.argv[1], sys.argv[2]
x = np.random.default_rng(1).standard_normal(({N_NEW}, 32)).astype(np.float32)
prompts = [f"new prompt {{i}}" for i in range({N_NEW})]
metas = [{{"seed": i, "source": f"img{{i}}.png"}} for i in range({N_NEW})]
print("READY", flush=True)
if mode == "append":
    append(path, x, prompts, metas, chunk=1000)
else:
    build(path, x, prompts, metas, encoder=EncoderFingerprint("test-vit", 32, "w1"), category="eyes", chunk=1000)
print("DONE", flush=True)
"""


def _run_and_kill(script: Path, path: Path, mode: str, delay: float) -> bool:
    """Start the writer, SIGKILL it `delay` s after it is ready; True if it finished first."""
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return finished


def _timed_full_run(script: Path, path: Path, mode: str) -> float:
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    t = time.perf_counter()
    assert proc.stdout.readline().strip() == "DONE"
    proc.wait(timeout=60)
    return time.perf_counter() - t


@pytest.mark.slow
def test_killed_append_leaves_old_or_new_vault(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    base = clustered(500, 32)
    # how long does a full append take here? kill points are spread over that time
    probe = tmp_path / "probe.vault"
    build(probe, base, [f"p{i}" for i in range(500)], encoder=ENC, category="eyes")
    duration = _timed_full_run(script, probe, "append")
    assert len(Vault.open(probe)) == 500 + N_NEW

    outcomes = []
    # kill points around the end (0.97, 1.02) land either side of the commit depending on the machine's load; 3.0
    # leaves the writer time to finish even when this run is slower than the timed one, so both outcomes occur
    for trial, frac in enumerate([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 1.02, 3.0]):
        path = tmp_path / f"v{trial}.vault"
        build(path, base, [f"p{i}" for i in range(500)], encoder=ENC, category="eyes")
        _run_and_kill(script, path, "append", duration * frac)
        v = Vault.open(path)
        assert len(v) in (500, 500 + N_NEW), f"half-written vault after kill at {frac:.0%}: {len(v)} entries"
        assert v.verify() == []
        outcomes.append(len(v))
        # the next writer cleans up what the killed one left, and the vault keeps working
        append(path, base[:3], ["after", "the", "crash"])
        v = Vault.open(path)
        assert len(v) == outcomes[-1] + 3
        listed = {s.file for s in v.manifest.segments} | {"manifest.json", ".lock"}
        assert {f.name for f in path.iterdir()} <= listed
        if len(v) > 503:
            assert v.prompt(int(v.prompt_ids([500 + 123])[0])) == "new prompt 123"
    assert 500 in outcomes and 500 + N_NEW in outcomes  # both outcomes were exercised


@pytest.mark.slow
def test_killed_first_build_leaves_no_vault_or_a_whole_one(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    duration = _timed_full_run(script, tmp_path / "probe.vault", "build")
    seen = set()
    for trial, frac in enumerate([0.2, 0.6, 0.95, 1.05]):
        path = tmp_path / f"b{trial}.vault"
        _run_and_kill(script, path, "build", duration * frac)
        try:
            v = Vault.open(path)
        except VaultNotFoundError:
            seen.add("none")
            build(path, clustered(5, 32), list("abcde"), encoder=ENC, category="eyes")  # can be built afresh
            assert len(Vault.open(path)) == 5
            continue
        assert len(v) == N_NEW and v.verify() == []
        seen.add("whole")
    assert "none" in seen
    assert np.isfinite(duration)
