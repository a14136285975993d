"""The "Luna Vaults" sidebar in ComfyUI's real web UI, driven in headless Chromium (skipped without Chromium):
open the tab, search, more like this, delete an entry and check the vault on disk, undo, install a package."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from comfy_server import require_comfyui

pytestmark = pytest.mark.slow
require_comfyui()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("needs Chromium (apt install chromium) to drive the web UI", allow_module_level=True)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


def test_the_sidebar_browses_curates_and_installs() -> None:
    from browser_check import run

    r = run(600, CHROMIUM, None)
    assert r["cells"] == 60 and r["status"].startswith("1-60 of 600")
    assert r["search_prompts_ok"] and "of " in r["search_status"]
    assert r["similar_cells"] == 24
    assert r["deleted_on_disk"] and r["restored_on_disk"] and r["installed_on_disk"]
