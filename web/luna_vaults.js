// The "Luna Vaults" sidebar tab: browse a vault's entries, search them, "more like this", delete (with undo
// until compaction), export a selection, install a package. Talks to the routes in nodes/routes.py.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const BASE = "/luna/vaults";
const PAGE = 60;

const css = `
.luna-vaults { display: flex; flex-direction: column; gap: 6px; padding: 8px; height: 100%; box-sizing: border-box;
  font-size: 12px; color: var(--fg-color, #ddd); }
.luna-vaults select, .luna-vaults input, .luna-vaults button { font-size: 12px; background: var(--comfy-input-bg, #222);
  color: inherit; border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 3px 6px; }
.luna-vaults button { cursor: pointer; }
.luna-vaults button:disabled { opacity: .5; cursor: default; }
.luna-vaults.drop { outline: 2px dashed #4af; outline-offset: -4px; }
.luna-row { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
.luna-row > input { flex: 1; min-width: 80px; }
.luna-info { opacity: .8; }
.luna-status { min-height: 1.2em; }
.luna-status.err { color: #f88; }
.luna-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(88px, 1fr)); gap: 4px; overflow-y: auto;
  flex: 1; align-content: start; }
.luna-cell { position: relative; border: 2px solid transparent; border-radius: 4px; background: #1b1b1f; cursor: pointer;
  aspect-ratio: 1; display: flex; align-items: center; justify-content: center; overflow: hidden; }
.luna-cell img { width: 100%; height: 100%; object-fit: cover; }
.luna-cell .cap { position: absolute; left: 0; right: 0; bottom: 0; font-size: 10px; background: rgba(0,0,0,.6);
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; padding: 1px 3px; }
.luna-cell .sim { position: absolute; top: 0; right: 0; font-size: 10px; background: rgba(0,0,0,.7); color: #fd6;
  padding: 0 3px; }
.luna-cell.sel { border-color: #4af; }
.luna-cell .noprev { font-size: 10px; opacity: .6; padding: 4px; text-align: center; }
.luna-detail { border-top: 1px solid var(--border-color, #444); padding-top: 6px; max-height: 35%; overflow-y: auto;
  white-space: pre-wrap; word-break: break-word; }
`;

async function call(path, options = {}) {
  const res = await api.fetchApi(path, options);
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// Text from someone else's vault, made safe to show: control characters and bidi overrides (which reorder what
// is read) become visible escapes, as the CLI and the nodes do (core/text.py).
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
function shown(s) {
  return String(s).replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

function human(bytes) {
  return bytes > 1e9 ? `${(bytes / 1e9).toFixed(1)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

class VaultBrowser {
  constructor(root) {
    this.root = root;
    this.vault = null;      // summary of the vault shown
    this.generation = null; // the manifest version the shown entries come from
    this.selected = new Set();
    this.lastDeleted = [];
    this.offset = 0;
    this.total = 0;
    this.mode = "page";     // or "similar"
    this.build();
    this.loadVaults();
  }

  build() {
    this.select = el("select", { "data-luna": "vault", onchange: () => this.open(this.select.value) });
    this.info = el("div", { class: "luna-info", "data-luna": "info" });
    this.text = el("input", { placeholder: "search prompts", "data-luna": "text",
                              onkeydown: (e) => e.key === "Enter" && this.search() });
    this.filter = el("input", { placeholder: "filter, e.g. quality>=0.7", "data-luna": "filter",
                                onkeydown: (e) => e.key === "Enter" && this.search() });
    this.status = el("div", { class: "luna-status", "data-luna": "status" });
    this.grid = el("div", { class: "luna-grid", "data-luna": "grid" });
    this.detail = el("div", { class: "luna-detail", "data-luna": "detail" });
    this.more = el("button", { "data-luna": "more", onclick: () => this.page(this.offset + PAGE) }, "Next page");
    this.prev = el("button", { "data-luna": "prev", onclick: () => this.page(Math.max(0, this.offset - PAGE)) }, "Previous");
    this.del = el("button", { "data-luna": "delete", onclick: () => this.deleteSelected() }, "Delete selected");
    this.undo = el("button", { "data-luna": "undo", onclick: () => this.restoreLast() }, "Undo delete");
    this.exp = el("button", { "data-luna": "export", onclick: () => this.exportSelected() }, "Export selection…");
    this.root.title = "Drop a .lvault package here to install it";
    this.file = el("input", { type: "file", accept: ".lvault", style: "display:none", "data-luna": "package",
                              onchange: () => this.install(this.file.files[0]) });
    const inst = el("button", { "data-luna": "install", onclick: () => this.file.click() }, "Install package…");
    this.root.append(
      el("style", {}, css),
      el("div", { class: "luna-row" }, this.select, inst, this.file),
      this.info,
      el("div", { class: "luna-row" }, this.text, this.filter,
         el("button", { "data-luna": "search", onclick: () => this.search() }, "Search")),
      el("div", { class: "luna-row" }, this.prev, this.more, this.del, this.undo, this.exp),
      this.status, this.grid, this.detail,
    );
    // drop a .lvault file anywhere on the tab to install it
    this.root.addEventListener("dragover", (e) => { e.preventDefault(); this.root.classList.add("drop"); });
    this.root.addEventListener("dragleave", () => this.root.classList.remove("drop"));
    this.root.addEventListener("drop", (e) => {
      e.preventDefault();
      this.root.classList.remove("drop");
      const file = [...(e.dataTransfer?.files || [])].find((f) => f.name.endsWith(".lvault"));
      if (file) this.install(file); else this.say("drop a .lvault package file here to install it", true);
    });
    this.updateButtons();
  }

  say(msg, err = false) {
    this.status.textContent = shown(msg);
    this.status.classList.toggle("err", err);
  }

  updateButtons() {
    this.del.disabled = !this.selected.size;
    this.exp.disabled = !this.selected.size;
    this.undo.disabled = !this.lastDeleted.length;
    this.prev.disabled = this.mode !== "page" || this.offset === 0;
    this.more.disabled = this.mode !== "page" || this.offset + PAGE >= this.total;
  }

  async loadVaults(keep) {
    try {
      const data = await call(BASE);
      this.select.replaceChildren(...data.vaults.map((v) => el("option", { value: v.name }, `${v.name} (${v.entries.toLocaleString()})`)));
      this.vaults = Object.fromEntries(data.vaults.map((v) => [v.name, v]));
      const problems = Object.entries(data.problems || {});
      if (!data.vaults.length) {
        this.say(problems.length ? `no readable vault: ${problems.map(([n, p]) => `${n}: ${p}`).join("; ")}`
                                 : `no vaults yet in ${data.folders.join(", ")}: build one with Luna Vault Builder`, !!problems.length);
        return;
      }
      const name = keep && this.vaults[keep] ? keep : data.vaults[0].name;
      this.select.value = name;
      await this.open(name);
      if (problems.length) this.say(`not shown (damaged): ${problems.map(([n, p]) => `${n}: ${p}`).join("; ")}`, true);
    } catch (e) {
      this.say(e.message, true);
    }
  }

  async open(name) {
    this.vault = this.vaults[name];
    const v = this.vault;
    this.info.textContent = `${v.entries.toLocaleString()} entries · ${v.prompts.toLocaleString()} prompts · ${shown(v.category)} · ` +
      `${v.mode}${v.text_family ? ` (${v.text_family})` : ""} · ${shown(v.encoder)} ${v.dim}-d · ${human(v.bytes)}` +
      (v.deleted ? ` · ${v.deleted} deleted (until compaction)` : "");
    this.selected.clear();
    this.lastDeleted = [];
    await this.page(0);
  }

  search() { return this.page(0); }

  async page(offset) {
    if (!this.vault) return;
    const q = new URLSearchParams({ offset, limit: PAGE, text: this.text.value, filter: this.filter.value });
    try {
      const data = await call(`${BASE}/${encodeURIComponent(this.vault.name)}/entries?${q}`);
      this.mode = "page";
      this.offset = data.offset;
      this.total = data.total;
      this.generation = data.generation;
      this.show(data.entries);
      this.say(data.total ? `${data.offset + 1}-${data.offset + data.entries.length} of ${data.total.toLocaleString()}` : "no entry matches");
    } catch (e) {
      this.say(e.message, true);
    }
    this.updateButtons();
  }

  async similar(id) {
    try {
      const data = await call(`${BASE}/${encodeURIComponent(this.vault.name)}/similar/${id}?k=24`);
      this.mode = "similar";
      this.generation = data.generation;
      this.show(data.entries);
      this.say(`more like #${id}: ${data.entries.length} nearest by stored embedding`);
    } catch (e) {
      this.say(e.message, true);
    }
    this.updateButtons();
  }

  show(entries) {
    this.grid.replaceChildren(...entries.map((e) => this.cell(e)));
  }

  cell(e) {
    const name = encodeURIComponent(this.vault.name);
    const c = el("div", { class: "luna-cell" + (this.selected.has(e.id) ? " sel" : ""), title: shown(e.prompt), "data-id": e.id });
    c.append(e.thumbnail ? el("img", { loading: "lazy", src: api.apiURL(`${BASE}/${name}/thumbnails/${e.id}`), alt: "" })
                         : el("div", { class: "noprev" }, "no preview"));
    c.append(el("div", { class: "cap" }, `#${e.id} ${shown(e.prompt)}`));
    if (e.similarity !== undefined) c.append(el("div", { class: "sim" }, e.similarity.toFixed(3)));
    c.addEventListener("click", () => {
      this.selected.has(e.id) ? this.selected.delete(e.id) : this.selected.add(e.id);
      c.classList.toggle("sel");
      this.showDetail(e);
      this.updateButtons();
    });
    return c;
  }

  showDetail(e) {
    const meta = Object.entries(e.metadata).map(([k, v]) => shown(`${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)).join("\n");
    this.detail.replaceChildren(
      el("div", {}, el("b", {}, `#${e.id}`), ` ${shown(e.prompt)}${e.truncated ? "…" : ""}`),
      el("div", { class: "luna-info" }, meta),
      el("div", { class: "luna-row" }, el("button", { "data-luna": "similar", onclick: () => this.similar(e.id) }, "More like this")),
    );
  }

  async change(action, ids) {
    return call(`${BASE}/${encodeURIComponent(this.vault.name)}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids, generation: this.generation }),
    });
  }

  async deleteSelected() {
    const ids = [...this.selected];
    try {
      const out = await this.change("delete", ids);
      this.lastDeleted = ids;
      this.selected.clear();
      await this.refresh();
      this.say(`deleted ${out.deleted}; ${out.entries.toLocaleString()} entries left (undo until the vault is compacted)`);
    } catch (e) {
      await this.staleReload(e);
    }
    this.updateButtons();
  }

  async restoreLast() {
    try {
      const out = await this.change("restore", this.lastDeleted);
      this.lastDeleted = [];
      await this.refresh();
      this.say(`restored ${out.restored}; ${out.entries.toLocaleString()} entries`);
    } catch (e) {
      await this.staleReload(e);
    }
    this.updateButtons();
  }

  async staleReload(e) {
    // the vault changed since this page was loaded: show it as it is now, nothing was changed
    if (/changed since/.test(e.message)) {
      this.selected.clear();
      await this.refresh().catch(() => {});
      this.say(`${e.message} (reloaded)`, true);
    } else {
      this.say(e.message, true);
    }
  }

  async exportSelected() {
    const name = window.prompt("Name of the new vault (in models/vaults):", `${this.vault.name}-picked`);
    if (!name) return;
    try {
      const out = await call(`${BASE}/${encodeURIComponent(this.vault.name)}/export`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ids: [...this.selected], name }),
      });
      await this.loadVaults(this.vault.name);
      this.say(`exported ${out.entries} entries as ${out.vault}`);
    } catch (e) {
      this.say(e.message, true);
    }
  }

  async install(file) {
    if (!file) return;
    this.say(`checking ${file.name}…`);
    try {
      const out = await call(`${BASE}/install`, { method: "POST", body: file });
      await this.loadVaults(out.installed.replace(/\.vault$/, ""));
      this.say(`installed ${out.installed} (every check passed)`);
    } catch (e) {
      this.say(`${file.name}: ${e.message}`, true);
    }
    this.file.value = "";
  }

  async refresh() {
    const keep = this.vault.name;
    const data = await call(BASE);
    this.vaults = Object.fromEntries(data.vaults.map((v) => [v.name, v]));
    this.vault = this.vaults[keep];
    const deleted = this.lastDeleted;
    await this.open(keep);
    this.lastDeleted = deleted;
    if (this.offset) await this.page(this.offset);
  }
}

app.registerExtension({
  name: "luna_vault.vaults_sidebar",
  async setup() {
    app.extensionManager.registerSidebarTab({
      id: "luna-vaults",
      icon: "pi pi-database",
      title: "Luna Vaults",
      tooltip: "Browse, curate and install Luna vaults",
      type: "custom",
      render: (root) => {
        root.replaceChildren();
        const box = el("div", { class: "luna-vaults" });
        root.append(box);
        window.lunaVaults = new VaultBrowser(box);  // also lets tests drive it
      },
    });
  },
});
