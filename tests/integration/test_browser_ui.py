"""The "Luna Vaults" sidebar in ComfyUI's real web UI, driven in headless Chromium (skipped without Chromium)
as a user (browse, search, detail in view, keyboard, clipboard, more like this, delete and undo on disk,
install with progress, the name-clash dialog, a non-package refused) and as an attacker (a page of another
loopback port with sandboxed frames, a DNS-rebinding page): the attacks change nothing on disk."""

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
    pytest.skip("needs Chromium (apt-get install chromium) to drive the web UI", allow_module_level=True)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


def test_the_sidebar_works_and_no_other_page_can_change_a_vault() -> None:
    from browser_check import run

    r = run(600, CHROMIUM, None)
    assert r["cells"] == 60 and r["status"].startswith("1-60 of 600")
    assert r["tuned"].startswith("tuned: strength 0.3, k 5, temperature 0.05, average (clip_similarity +0.021 over 24")
    # the detail of the last cell of a full grid shows inside the viewport, on top
    assert r["detail_in_view"] and r["detail_id"] == r["last_cell_id"] == 59
    assert r["copy_status"].startswith("copied the prompt of #59") and r["clipboard"] == r["full_prompt"]
    k = r["keyboard"]
    assert k["cursor"] == k["want_cursor"] and k["selected"] == [k["cursor_id"]] and k["shown"] == k["cursor_id"]
    assert k["detail"] and k["closed"] and k["unselected"]
    assert r["search_prompts_ok"] and "of " in r["search_status"]
    assert r["similar_cells"] == 24
    assert r["deleted_on_disk"] and r["restored_on_disk"]
    assert r["installed_on_disk"] and r["install_status"].startswith("installed rings")
    assert any("100%" in s for s in r["upload_said"])
    assert r["dialog_name"] == "rings-2" and r["installed_as_on_disk"] and r["installed_as"].startswith("installed rings-2")
    assert r["replaced_on_disk"] and r["replaced"].startswith("installed rings ")
    assert "not a package" in r["not_a_package"] and r["leftovers"] == []
    # the attacks: every request that reached ComfyUI was refused, and the vault folder did not change
    # 71 POSTs from the sandboxed frame, 71 from the page itself, the form: each reached ComfyUI and got 403 (a CORS
    # preflight, OPTIONS, is answered by ComfyUI's middleware without CORS headers: the request it asks for never comes)
    assert r["attack_posts_answered"] >= 143 and {s for m, s in r["attack_statuses"] if m != "OPTIONS"} == {403}
    assert all(code == 403 and '"header"' not in body for code, body in r["rebinding"].values())  # no token leaked
    assert r["vault_folder_unchanged"] and r["vaults_after_attack"] == ["eyes.vault", "rings-2.vault", "rings.vault"]
