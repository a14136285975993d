"""Drive the "Luna Vaults" sidebar in ComfyUI's real web UI (headless Chromium), check what it does on disk,
save screenshots and time the first page.

`python scripts/browser_check.py [--entries 500000] [--out docs/browser]`: starts a headless ComfyUI
serving its front end with this pack and two vaults (one of `--entries` entries, previews of
generated eye crops), opens the tab, searches, asks for "more like this", deletes an entry (and
checks the vault on disk), undoes it, installs a package through the file picker, and prints the
times Chromium measures (opening the tab; a vault's first page and the next one, fetch + render)
and the server's text-search time.
tests/integration/test_browser_ui.py runs it small where Chromium is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

from screenshot_workflows import SETTINGS, DevTools, chromium_page, open_comfyui  # noqa: E402

from comfy_server import ComfyServer  # noqa: E402


def make_vaults(vaults: Path, entries: int, work: Path) -> Path:
    """eyes.vault (`entries` entries, previews of generated eye crops) and a package of a second vault."""
    from luna_vault.cli.demo import make_dataset
    from luna_vault.vault import EncoderFingerprint, build
    from luna_vault.vault.package import pack
    from luna_vault.vault.thumbnails import make_thumbnail

    d = 64
    enc = EncoderFingerprint("demo-vit", d, "w")
    crops, prompts, _ = make_dataset(min(entries, 240), seed=0)
    tiles = [make_thumbnail(c) for c in crops]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(tiles), d)).astype(np.float32)
    which = np.arange(entries) % len(tiles)
    x = centres[which] + 0.3 * rng.standard_normal((entries, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    build(vaults / "eyes.vault", x, [f"{prompts[w]}, variant {i}" for i, w in enumerate(which)],
          [{"quality": round(float(q), 2), "checkpoint": "ponyXL" if i % 3 else "sdxl_base"}
           for i, q in enumerate(rng.uniform(0, 1, entries))], [tiles[w] for w in which], encoder=enc, category="eyes")
    src = work / "rings.vault"
    build(src, x[:30], [f"{prompts[w]} ring" for w in which[:30]], None, [tiles[w] for w in which[:30]],
          encoder=enc, category="rings")
    pack(src, work / "rings.lvault", author="Luna", licence="CC-BY-4.0")
    return work / "rings.lvault"


async def drive(url: str, chromium: str, vaults: Path, package: Path, out: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def shot(cdp: DevTools, name: str) -> None:
        if out is not None:
            png = await cdp.call("Page.captureScreenshot", format="png")
            (out / f"{name}.png").write_bytes(base64.b64decode(png["data"]))

    async with chromium_page(chromium, (1600, 1000)) as cdp:
        await open_comfyui(cdp, url)
        t0 = await cdp.eval("performance.now()")
        await cdp.eval("window.app.extensionManager.command.execute('Workspace.ToggleSidebarTab.luna-vaults')")
        await cdp.wait_for("document.querySelectorAll('.luna-grid .luna-cell').length > 0")
        t1 = await cdp.eval("performance.now()")
        result["tab_open_ms"] = round(t1 - t0, 1)  # ComfyUI opens its sidebar, our tab lists vaults, first page
        # a vault's first page on its own: fetch + render of 60 cells (median of 5), then the next page
        opens, nexts = [], []
        for _ in range(5):
            opens.append(await cdp.eval("(async () => { const t = performance.now(); "
                                        "await window.lunaVaults.open('eyes'); return performance.now() - t; })()"))
            nexts.append(await cdp.eval("(async () => { const t = performance.now(); "
                                        "await window.lunaVaults.page(60); return performance.now() - t; })()"))
        result["first_page_ms"] = round(sorted(opens)[2], 1)
        result["next_page_ms"] = round(sorted(nexts)[2], 1)
        await cdp.eval("window.lunaVaults.page(0)")
        result["cells"] = await cdp.eval("document.querySelectorAll('.luna-grid .luna-cell').length")
        await cdp.wait_for("[...document.querySelectorAll('.luna-cell img')].slice(0, 8).every(i => i.complete)")
        result["status"] = await cdp.eval("document.querySelector('[data-luna=status]').textContent")
        await shot(cdp, "browser_grid")

        # search by prompt text
        await cdp.eval("(() => { const b = window.lunaVaults; b.text.value = 'amber'; return b.search(); })()")
        await cdp.wait_for("document.querySelector('[data-luna=status]').textContent.includes('of ')")
        result["search_status"] = await cdp.eval("document.querySelector('[data-luna=status]').textContent")
        result["search_prompts_ok"] = await cdp.eval(
            "[...document.querySelectorAll('.luna-cell')].every(c => c.title.toLowerCase().includes('amber'))")
        await shot(cdp, "browser_search")

        # select the first entry, ask for more like it
        first = await cdp.eval("Number(document.querySelector('.luna-cell').dataset.id)")
        await cdp.eval("document.querySelector('.luna-cell').click()")
        await cdp.eval("document.querySelector('[data-luna=similar]').click()")
        await cdp.wait_for("document.querySelector('[data-luna=status]').textContent.startsWith('more like')")
        result["similar_cells"] = await cdp.eval("document.querySelectorAll('.luna-cell .sim').length")
        await shot(cdp, "browser_more_like_this")

        # delete the selected entry, check the vault on disk, undo
        await cdp.eval("document.querySelector('[data-luna=delete]').click()")
        await cdp.wait_for("document.querySelector('[data-luna=status]').textContent.startsWith('deleted')")
        from luna_vault.vault import Vault

        v = Vault.open(vaults / "eyes.vault")
        result["deleted_on_disk"] = bool(not v.live_mask()[first])
        await shot(cdp, "browser_deleted")
        await cdp.eval("document.querySelector('[data-luna=undo]').click()")
        await cdp.wait_for("document.querySelector('[data-luna=status]').textContent.startsWith('restored')")
        result["restored_on_disk"] = bool(Vault.open(vaults / "eyes.vault").live_mask()[first])

        # install a package through the file picker
        doc = await cdp.call("DOM.getDocument")
        node = await cdp.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="[data-luna=package]")
        await cdp.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(package)])
        await cdp.eval("document.querySelector('[data-luna=package]').dispatchEvent(new Event('change'))")
        await cdp.wait_for("document.querySelector('[data-luna=status]').textContent.startsWith('installed')")
        result["installed_on_disk"] = (vaults / "rings.vault" / "manifest.json").is_file()
        await shot(cdp, "browser_installed")
    return result


def text_search_ms(server: ComfyServer, text: str = "amber", rounds: int = 5) -> float:
    server.get(f"/luna/vaults/eyes/entries?limit=60&text={text}")  # builds the prompt index once
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        server.get(f"/luna/vaults/eyes/entries?limit=60&text={text}")
        times.append((time.perf_counter() - t) * 1000)
    return round(float(np.median(times)), 1)


def run(entries: int, chromium: str, out: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp), frontend=True)
        server.prepare()
        package = make_vaults(server.base / "models" / "vaults", entries, Path(tmp))
        server.start()
        try:
            for key, value in SETTINGS.items():
                server.post(f"/settings/{key}", value)
            result = asyncio.run(drive(server.url, chromium, server.base / "models" / "vaults", package, out))
            result["text_search_ms"] = text_search_ms(server)
        finally:
            server.stop()
    result["entries"] = entries
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--out", default=str(REPO / "docs" / "browser"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.entries, args.chromium, out), indent=1))


if __name__ == "__main__":
    main()
