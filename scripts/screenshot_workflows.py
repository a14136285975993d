"""Screenshots of every example workflow loaded in ComfyUI's real web UI (headless Chromium).

`python scripts/screenshot_workflows.py [--chromium /usr/bin/chromium] [--out docs/workflows] [--only NAME ...]`
Starts a headless ComfyUI (../shared/comfyui) serving its installed front end with this pack, opens
it in headless Chromium (Debian's `chromium` package) over the DevTools protocol, loads each
example_workflows/*.json with `app.loadGraphData`, and saves a PNG per workflow (plus a JPEG thumbnail beside
each file in example_workflows/, which ComfyUI's template browser shows). It prints, per workflow,
the node types the UI does not know: only the third-party nodes a workflow is marked as needing
may appear there; and whether nodes overlap, or cover a group's title, as the UI lays them out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfy_server import ComfyServer  # noqa: E402

SETTINGS = {  # no dialogs over the canvas: the workflows name models and packs this test server lacks
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.TutorialCompleted": True,
    "Comfy.UseNewMenu": "Top",
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # always draw widgets and text, even zoomed out to fit
    "Comfy.Minimap.Visible": False,
}


# Overlaps as the web UI lays the graph out (its own node sizes, title bars included): two nodes on top
# of each other, a node over a group's title bar, or two groups over each other.
OVERLAPS_JS = """(() => {
  const T = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = window.app.graph._nodes.map(n => ({t: n.title || n.type, x: n.pos[0], y: n.pos[1] - T,
                                                  w: n.size[0], h: n.size[1] + T}));
  const hit = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
  const out = [];
  for (let i = 0; i < nodes.length; i++)
    for (let j = i + 1; j < nodes.length; j++)
      if (hit(nodes[i], nodes[j])) out.push(`nodes '${nodes[i].t}' and '${nodes[j].t}' overlap`);
  const groups = (window.app.graph._groups || []).map(g => {
    const [x, y, w, h] = g._bounding || [...g.pos, ...g.size];
    return {t: g.title, x, y, w, h, bar: {x, y, w, h: g.titleHeight || T}};
  });
  for (const g of groups)
    for (const n of nodes) if (hit(g.bar, n)) out.push(`node '${n.t}' covers the title of group '${g.t}'`);
  for (let i = 0; i < groups.length; i++)
    for (let j = i + 1; j < groups.length; j++)
      if (hit(groups[i], groups[j])) out.push(`groups '${groups[i].t}' and '${groups[j].t}' overlap`);
  return out;
})()"""


class DevTools:
    """The few Chrome DevTools Protocol calls we need, over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.next_id = ws, 0
        self.events: list[dict[str, Any]] = []  # the events that arrived while waiting for answers (Network.enable...)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=60)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg and len(self.events) < 10_000:
                self.events.append(msg)

    async def eval(self, expr: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expr[:80]}: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res.get("result", {}).get("value")

    async def wait_for(self, expr: str, timeout: float = 90.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if await self.eval(expr):
                    return
            except RuntimeError:
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the page never satisfied {expr!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def chromium_page(chromium: str, size: tuple[int, int], args: tuple[str, ...] = ()) -> AsyncIterator[DevTools]:
    """Headless Chromium with one page, driven over the DevTools protocol; closed on exit. `args`: more flags."""
    port = free_port()
    profile = tempfile.mkdtemp(prefix="luna-chromium-")
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                             f"--window-size={size[0]},{size[1]}", *args, "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            targets: list[dict[str, Any]] = []
            for _ in range(120):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json") as r:
                        targets = [t for t in await r.json() if t.get("type") == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.25)
            if not targets:
                raise RuntimeError("Chromium did not open its DevTools port")
            async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = DevTools(ws)
                await cdp.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                               deviceScaleFactor=1, mobile=False)
                yield cdp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


async def open_comfyui(cdp: DevTools, url: str) -> None:
    """Load ComfyUI's web UI and wait until its app and graph exist."""
    await cdp.call("Page.navigate", url=url)
    await cdp.wait_for("!!(window.app && window.app.graph && window.LiteGraph && window.app.extensionManager)")
    await asyncio.sleep(2.0)


async def shoot(url: str, chromium: str, workflows: list[Path], out: Path, size: tuple[int, int],
                overlaps: dict[str, list[str]]) -> dict[str, list[str]]:
    unknown: dict[str, list[str]] = {}
    async with chromium_page(chromium, size) as cdp:
        await open_comfyui(cdp, url)
        for wf in workflows:
            data = wf.read_text()
            await cdp.eval(f"window.app.loadGraphData({data}, true, true, {json.dumps(wf.stem)})")
            await asyncio.sleep(1.5)
            await cdp.eval("window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
            await asyncio.sleep(1.5)
            overlaps[wf.stem] = await cdp.eval(OVERLAPS_JS) or []
            unknown[wf.stem] = await cdp.eval(
                "[...new Set(window.app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                ".map(n => n.type))]") or []
            shot = await cdp.call("Page.captureScreenshot", format="png")
            png = base64.b64decode(shot["data"])
            (out / f"{wf.stem}.png").write_bytes(png)
            thumb = Image.open(io.BytesIO(png)).convert("RGB")
            thumb.thumbnail((800, 800))
            thumb.save(REPO / "example_workflows" / f"{wf.stem}.jpg", quality=85)
            print(f"{wf.stem}: {out / (wf.stem + '.png')}"
                  + (f" (not installed here: {', '.join(unknown[wf.stem])})" if unknown[wf.stem] else "")
                  + "".join(f"\n  layout: {o}" for o in overlaps[wf.stem]))
    return unknown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    ap.add_argument("--out", default=str(REPO / "docs" / "workflows"))
    ap.add_argument("--size", default="2200x1300", help="viewport WIDTHxHEIGHT")
    ap.add_argument("--only", nargs="*", help="workflow names to shoot (default: every example workflow)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workflows = sorted(p for p in (REPO / "example_workflows").glob("*.json") if not args.only or p.stem in args.only)
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp), frontend=True)
        server.prepare()
        server.start()
        try:
            for key, value in SETTINGS.items():
                server.post(f"/settings/{key}", value)
            overlaps: dict[str, list[str]] = {}
            unknown = asyncio.run(shoot(server.url, args.chromium, workflows, out, size, overlaps))  # type: ignore[arg-type]
        finally:
            server.stop()
    needs = {wf.stem: json.loads(wf.read_text())["extra"]["luna_vault"]["needs"] for wf in workflows}
    bad = {k: v for k, v in unknown.items() if v and not needs[k]}
    if bad:
        raise SystemExit(f"unknown node types in workflows that should need no other pack: {bad}")
    crowded = {k: v for k, v in overlaps.items() if v}
    if crowded:
        raise SystemExit(f"fix the layout in workflows/build.py: {crowded}")


if __name__ == "__main__":
    main()
