"""Drive the "Luna Vaults" sidebar in ComfyUI's real web UI (headless Chromium) as a user and as an
attacker would, check what happens on disk, save screenshots and time the first page.

`python scripts/browser_check.py [--entries 500000] [--out docs/browser]`: starts a headless ComfyUI
serving its front end with this pack and a vault of `--entries` entries (previews of generated eye
crops, tuned values), then
- as a user: opens the tab, searches, opens an entry's detail from the bottom of a full grid (it
  must show where the user looks), moves and selects with the keyboard, copies a prompt to the
  clipboard, asks for "more like this", deletes an entry (checked on disk), undoes, installs a
  package through the file picker (upload progress), installs it again (the dialog offers another
  name, then replacing), and has a file that is not a package refused;
- as an attacker: a page served on another loopback port, with sandboxed iframes (Origin: null),
  posts text/plain deletes for generations 0..60, an export and two installs, reads the token and
  guesses one; then a page whose host name resolves to 127.0.0.1 (DNS rebinding, through Chromium's
  --host-resolver-rules) calls the routes same-origin. The vault folder must not change.
It prints the times Chromium measures (opening the tab; a vault's first page and the next one,
fetch + render) and the server's text-search time. tests/integration/test_browser_ui.py runs it small.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.server
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

from screenshot_workflows import SETTINGS, DevTools, chromium_page, open_comfyui  # noqa: E402

from comfy_server import ComfyServer  # noqa: E402

REBIND_HOST = "evil.test"  # Chromium resolves it to 127.0.0.1 (--host-resolver-rules): a DNS-rebinding page
STATUS = "document.querySelector('[data-luna=status]').textContent"


def make_vaults(vaults: Path, entries: int, work: Path) -> Path:
    """eyes.vault (`entries` entries, previews of generated eye crops, tuned values) and a package of rings."""
    from luna_vault.cli.demo import make_dataset
    from luna_vault.vault import EncoderFingerprint, build
    from luna_vault.vault.manifest import TunedDefaults
    from luna_vault.vault.package import pack
    from luna_vault.vault.store import VaultWriter
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
    with VaultWriter.open(vaults / "eyes.vault") as w:
        w.set_tuned(TunedDefaults(strength=0.3, k=5, temperature=0.05, blend_mode="average",
                                  checkpoint="sd_xl_base_1.0.safetensors", tuned_at="2026-11-26T12:00:00+00:00",
                                  metric="clip_similarity", improvement=0.021, samples=24, run="eyes-strength"))
    src = work / "rings.vault"
    build(src, x[:30], [f"{prompts[w]} ring" for w in which[:30]], None, [tiles[w] for w in which[:30]],
          encoder=enc, category="rings")
    pack(src, work / "rings.lvault", author="Luna", licence="CC-BY-4.0")
    (work / "zeros.lvault").write_bytes(bytes(4 << 20))  # not a package: refused at its first bytes
    return work / "rings.lvault"


def folder_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes under `folder`: any change changes it."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


# ---- the attacker's page, on another loopback port ---------------------------------------------------
ATTACK_JS = r"""
async function attack(frame, T, pkg) {
  const out = [];
  const send = async (label, path, opts) => {
    try { const r = await fetch(T + path, opts); out.push([label, r.status]); }
    catch (e) { out.push([label, "no readable response"]); }
  };
  const text = (body, mode) => ({ method: "POST", mode, headers: { "Content-Type": "text/plain" }, body: JSON.stringify(body) });
  for (let g = 0; g <= 60; g++) await send(`delete g${g}`, "/luna/vaults/eyes/delete", text({ ids: [0, 1, 2], generation: g }));
  for (let g = 0; g <= 5; g++) await send(`delete no-cors g${g}`, "/api/luna/vaults/eyes/delete", text({ ids: [3], generation: g }, "no-cors"));
  await send("restore", "/luna/vaults/eyes/restore", text({ ids: [0], generation: 2 }));
  await send("export", "/luna/vaults/eyes/export", text({ ids: [0, 1, 2], name: "stolen" }));
  const bytes = Uint8Array.from(atob(pkg), (c) => c.charCodeAt(0));
  await send("install blob", "/luna/vaults/install?name=planted", { method: "POST", mode: "no-cors", body: new Blob([bytes]) });
  await send("install text", "/luna/vaults/install?name=planted2", { method: "POST", headers: { "Content-Type": "text/plain" }, body: bytes });
  await send("read token", "/luna/vaults/token", {});
  await send("guessed token", "/luna/vaults/eyes/delete", { method: "POST",
    headers: { "Content-Type": "application/json", "X-Luna-Vault-Token": "guess" }, body: JSON.stringify({ ids: [4], generation: 1 }) });
  (frame === "page" ? window : parent).postMessage({ frame, results: out }, "*");
}
"""

ATTACK_PAGE = r"""<!doctype html><meta charset="utf-8"><title>a page of another origin</title><body>
<script>
%(attack)s
function formAttack(T) {  // a text/plain form: a navigation, no CORS at all; its body reads as JSON
  const f = document.createElement("form");
  f.method = "POST"; f.enctype = "text/plain"; f.action = T + "/luna/vaults/eyes/delete";
  const i = document.createElement("input");
  i.name = '{"ids":[5],"generation":1,"x":"'; i.value = '"}';
  f.append(i); document.body.append(f); f.submit();
}
const T = %(target)s, PKG = %(pkg)s;
window.results = {};
window.addEventListener("message", (e) => { window.results[e.data.frame] = e.data.results; });
function sandboxed(flags, code) {  // a sandboxed frame: its requests carry Origin: null
  const frame = document.createElement("iframe");
  frame.sandbox = flags;
  frame.srcdoc = "<body><script>" + code + "<\/script>";
  document.body.append(frame);
}
sandboxed("allow-scripts", attack.toString() + ";attack('sandboxed', " + JSON.stringify(T) + ", " + JSON.stringify(PKG) + ")");
sandboxed("allow-scripts allow-forms", formAttack.toString() + ";formAttack(" + JSON.stringify(T) + ")");
attack("page", T, PKG);  // and the page itself, from its own (foreign) origin
</script>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: Any) -> None:
        pass


def attacker_server(target: str, package: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Attack", (_Quiet,), {"page": (ATTACK_PAGE % {
        "attack": ATTACK_JS, "target": json.dumps(target),
        "pkg": json.dumps(base64.b64encode(package.read_bytes()).decode())}).encode()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def responses(cdp: DevTools, prefix: str) -> Iterator[tuple[str, str, int]]:
    """(method, url, status) of the responses that came back from URLs under `prefix`, also those that CORS then
    hid from the page (their status is in Network.responseReceivedExtraInfo)."""
    sent = {e["params"]["requestId"]: e["params"]["request"] for e in cdp.events
            if e["method"] == "Network.requestWillBeSent"}
    for e in cdp.events:
        if e["method"] == "Network.responseReceivedExtraInfo":
            request = sent.get(e["params"]["requestId"])
            if request is not None and request["url"].startswith(prefix):
                yield request["method"], request["url"], e["params"]["statusCode"]


# ---- the drive ---------------------------------------------------------------------------------------
async def drive(url: str, chromium: str, vaults: Path, work: Path, out: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    package = work / "rings.lvault"

    async def shot(cdp: DevTools, name: str) -> None:
        if out is not None:
            png = await cdp.call("Page.captureScreenshot", format="png")
            (out / f"{name}.png").write_bytes(base64.b64decode(png["data"]))

    async def choose_file(cdp: DevTools, path: Path) -> None:
        doc = await cdp.call("DOM.getDocument")
        node = await cdp.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="[data-luna=package]")
        await cdp.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])  # fires 'change'

    async def until(cdp: DevTools, expr: str, timeout: float = 90.0) -> None:
        """Wait for `expr`; on a timeout say what the sidebar said last."""
        try:
            await cdp.wait_for(expr, timeout)
        except TimeoutError as e:
            said = await cdp.eval("JSON.stringify(window.lunaVaults && window.lunaVaults.said)")
            raise TimeoutError(f"{e}; the sidebar said: {said}") from None

    async def key(cdp: DevTools, name: str, code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            await cdp.call("Input.dispatchKeyEvent", type=kind, key=name, code=name if name != " " else "Space",
                           windowsVirtualKeyCode=code)

    flags = (f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1",
             "--disable-features=IsolateSandboxedIframes")  # sandboxed frames in the page's process: their requests are seen
    async with chromium_page(chromium, (1600, 1000), flags) as cdp:
        await open_comfyui(cdp, url)
        await cdp.call("Emulation.setFocusEmulationEnabled", enabled=True)  # the clipboard needs a focused page
        await cdp.call("Browser.grantPermissions", origin=url, permissions=["clipboardReadWrite", "clipboardSanitizedWrite"])
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
        result["status"] = await cdp.eval(STATUS)
        result["tuned"] = await cdp.eval("document.querySelector('[data-luna=tuned]').textContent")
        await shot(cdp, "browser_grid")

        # the detail of an entry at the bottom of a full grid opens where the user looks
        await cdp.eval("(() => { const c = [...document.querySelectorAll('.luna-cell')].at(-1); "
                       "c.scrollIntoView({block: 'end'}); c.click(); })()")
        result["detail_in_view"] = await cdp.eval("""(() => {
          const d = document.querySelector('[data-luna=detail]'), r = d.getBoundingClientRect();
          const hit = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
          return !d.hidden && r.height > 20 && r.top >= 0 && r.bottom <= innerHeight && d.contains(hit); })()""")
        result["detail_id"] = await cdp.eval("Number(document.querySelector('[data-luna=detail] b').textContent.slice(1))")
        result["last_cell_id"] = await cdp.eval("Number([...document.querySelectorAll('.luna-cell')].at(-1).dataset.id)")
        await cdp.wait_for("[...document.querySelectorAll('.luna-cell img')].slice(-8).every(i => i.complete)")
        await shot(cdp, "browser_detail")
        await cdp.eval("document.querySelector('[data-luna=copy]').click()")
        await until(cdp, f"{STATUS}.startsWith('copied') || {STATUS}.startsWith('could not')")
        result["copy_status"] = await cdp.eval(STATUS)
        result["clipboard"] = await cdp.eval("navigator.clipboard.readText().catch(e => 'unreadable: ' + e.message)")
        result["full_prompt"] = (await cdp.eval(
            f"(async () => (await (await fetch('/luna/vaults/eyes/entries/{result['detail_id']}')).json()).prompt)()"))
        await cdp.eval("window.lunaVaults.toggle(window.lunaVaults.cursor)")  # unselect it again

        # the keyboard: two right, one down, select, show, close
        await cdp.eval("window.lunaVaults.page(0).then(() => document.querySelector('[data-luna=grid]').focus())")
        columns = await cdp.eval("window.lunaVaults.columns()")
        for name, code in (("ArrowRight", 39), ("ArrowRight", 39), ("ArrowRight", 39), ("ArrowLeft", 37),
                           ("ArrowDown", 40), (" ", 32), ("Enter", 13)):
            await key(cdp, name, code)
        result["keyboard"] = await cdp.eval("""(() => { const b = window.lunaVaults;
          return {cursor: b.cursor, selected: [...b.selected], detail: !document.querySelector('[data-luna=detail]').hidden,
                  shown: b.shown && b.shown.id, cursor_id: b.entries[b.cursor].id}; })()""")
        result["keyboard"]["want_cursor"] = 1 + columns  # the first arrow enters the grid at 0; then 1, 2, 1, down
        await key(cdp, "Escape", 27)
        result["keyboard"]["closed"] = await cdp.eval("document.querySelector('[data-luna=detail]').hidden")
        await key(cdp, " ", 32)  # unselect
        result["keyboard"]["unselected"] = await cdp.eval("window.lunaVaults.selected.size === 0")

        # search by prompt text
        await cdp.eval("(() => { const b = window.lunaVaults; b.text.value = 'amber'; return b.search(); })()")
        await until(cdp, f"{STATUS}.includes('of ')")
        result["search_status"] = await cdp.eval(STATUS)
        result["search_prompts_ok"] = await cdp.eval(
            "[...document.querySelectorAll('.luna-cell')].every(c => c.title.toLowerCase().includes('amber'))")
        await shot(cdp, "browser_search")

        # select the first entry, ask for more like it
        first = await cdp.eval("Number(document.querySelector('.luna-cell').dataset.id)")
        await cdp.eval("document.querySelector('.luna-cell').click()")
        await cdp.eval("document.querySelector('[data-luna=similar]').click()")
        await until(cdp, f"{STATUS}.startsWith('more like')", 900)  # the first one builds the vault's search index
        result["similar_cells"] = await cdp.eval("document.querySelectorAll('.luna-cell .sim').length")
        await shot(cdp, "browser_more_like_this")

        # delete the selected entry, check the vault on disk, undo
        await cdp.eval("document.querySelector('[data-luna=delete]').click()")
        await until(cdp, f"{STATUS}.startsWith('deleted')")
        from luna_vault.vault import Vault

        result["deleted_on_disk"] = bool(not Vault.open(vaults / "eyes.vault").live_mask()[first])
        await shot(cdp, "browser_deleted")
        await cdp.eval("document.querySelector('[data-luna=undo]').click()")
        await until(cdp, f"{STATUS}.startsWith('restored')")
        result["restored_on_disk"] = bool(Vault.open(vaults / "eyes.vault").live_mask()[first])

        # install a package through the file picker, with upload progress
        await choose_file(cdp, package)
        await until(cdp, f"{STATUS}.startsWith('installed') || !!document.querySelector('.luna-status.err')")
        result["install_status"] = await cdp.eval(STATUS)
        result["upload_said"] = await cdp.eval("window.lunaVaults.said.filter(s => s.startsWith('uploading'))")
        result["installed_on_disk"] = (vaults / "rings.vault" / "manifest.json").is_file()
        await shot(cdp, "browser_installed")
        # again: the name is taken, the dialog offers another name, then replacing the vault
        await choose_file(cdp, package)
        await until(cdp, "!document.querySelector('[data-luna=dialog]').hidden")
        result["dialog_name"] = await cdp.eval("document.querySelector('[data-luna=new-name]').value")
        await shot(cdp, "browser_install_dialog")
        await cdp.eval("document.querySelector('[data-luna=install-as]').click()")
        await until(cdp, f"{STATUS}.startsWith('installed') || !!document.querySelector('.luna-status.err')")
        result["installed_as"] = await cdp.eval(STATUS)
        result["installed_as_on_disk"] = (vaults / f"{result['dialog_name']}.vault" / "manifest.json").is_file()
        before = (vaults / "rings.vault" / "card.json").stat().st_mtime_ns
        await choose_file(cdp, package)
        await until(cdp, "!document.querySelector('[data-luna=dialog]').hidden")
        await cdp.eval("document.querySelector('[data-luna=overwrite]').click()")
        await until(cdp, f"{STATUS}.startsWith('installed') || !!document.querySelector('.luna-status.err')")
        result["replaced"] = await cdp.eval(STATUS)
        result["replaced_on_disk"] = (vaults / "rings.vault" / "card.json").stat().st_mtime_ns != before
        # a file that is not a package is refused at its first bytes
        await choose_file(cdp, work / "zeros.lvault")
        await until(cdp, "!!document.querySelector('.luna-status.err')")
        result["not_a_package"] = await cdp.eval(STATUS)
        result["leftovers"] = sorted(p.name for p in vaults.iterdir() if p.name.startswith("."))

        # ---- the attacks: nothing may change
        before_hash = folder_hash(vaults)
        httpd, attacker = attacker_server(url, package)
        try:
            await cdp.call("Network.enable")
            cdp.events.clear()
            await cdp.call("Page.navigate", url=attacker)
            await cdp.wait_for("window.results && window.results.sandboxed && window.results.page", timeout=120)
            result["attack_results"] = await cdp.eval("window.results")
            await asyncio.sleep(1.0)  # the form's navigation
            got = list(responses(cdp, url + "/"))
            result["attack_statuses"] = sorted({(m, s) for m, _, s in got})
            result["attack_posts_answered"] = sum(m == "POST" for m, _, _ in got)  # requests that reached ComfyUI
            # DNS rebinding: a page whose name resolves to 127.0.0.1 is same-origin with the routes it calls
            rebound = url.replace("127.0.0.1", REBIND_HOST)
            await cdp.call("Page.navigate", url=rebound)
            await cdp.wait_for("document.readyState === 'complete' && location.host.startsWith('evil')")
            result["rebinding"] = await cdp.eval("""(async () => {
              const s = async (p, o) => { const r = await fetch(p, o); return [r.status, await r.text()]; };
              return { token: await s('/luna/vaults/token'), list: await s('/luna/vaults'),
                       delete: await s('/luna/vaults/eyes/delete', { method: 'POST', headers: { 'Content-Type':
                         'application/json', 'X-Luna-Vault-Token': 'guess' }, body: '{"ids":[0],"generation":1}' }) };
            })()""")
            await cdp.call("Network.disable")
        finally:
            httpd.shutdown()
        result["vault_folder_unchanged"] = folder_hash(vaults) == before_hash
        result["vaults_after_attack"] = sorted(p.name for p in vaults.iterdir())
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
        make_vaults(server.base / "models" / "vaults", entries, Path(tmp))
        server.start()
        try:
            for key, value in SETTINGS.items():
                server.post(f"/settings/{key}", value)
            result = asyncio.run(drive(server.url, chromium, server.base / "models" / "vaults", Path(tmp), out))
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
