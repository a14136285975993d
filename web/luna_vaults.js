// The "Luna Vaults" sidebar tab: browse a vault's entries, search them, "more like this", copy a prompt,
// delete (with undo until compaction), export a selection, install a package. Talks to nodes/routes.py;
// every change carries the server's token (read from GET /luna/vaults/token, which only this page can read).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const BASE = "/luna/vaults";
const PAGE = 60;
const TOKEN_HEADER = "X-Luna-Vault-Token";

const css = `
.luna-vaults { display: flex; flex-direction: column; gap: 6px; padding: 8px; height: 100%; box-sizing: border-box;
  font-size: 12px; color: var(--fg-color, #ddd); position: relative; }
.luna-vaults select, .luna-vaults input, .luna-vaults button { font-size: 12px; background: var(--comfy-input-bg, #222);
  color: inherit; border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 3px 6px; }
.luna-vaults button { cursor: pointer; }
.luna-vaults button:disabled { opacity: .5; cursor: default; }
.luna-vaults.drop { outline: 2px dashed #4af; outline-offset: -4px; }
.luna-row { display: flex; gap: 4px; align-items: center; flex-wrap: wrap; }
.luna-row > input { flex: 1; min-width: 80px; }
.luna-info { opacity: .8; }
.luna-tuned { opacity: .8; font-style: italic; }
.luna-status { min-height: 1.2em; }
.luna-status.err { color: #f88; }
.luna-progress { width: 100%; height: 6px; }
.luna-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(88px, 1fr)); gap: 4px; overflow-y: auto;
  flex: 1; min-height: 120px; align-content: start; outline: none; }
.luna-grid:focus-visible { box-shadow: inset 0 0 0 1px #4af; }
.luna-cell { position: relative; border: 2px solid transparent; border-radius: 4px; background: #1b1b1f; cursor: pointer;
  aspect-ratio: 1; display: flex; align-items: center; justify-content: center; overflow: hidden; }
.luna-cell img { width: 100%; height: 100%; object-fit: cover; }
.luna-cell .cap { position: absolute; left: 0; right: 0; bottom: 0; font-size: 10px; background: rgba(0,0,0,.6);
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; padding: 1px 3px; }
.luna-cell .sim { position: absolute; top: 0; right: 0; font-size: 10px; background: rgba(0,0,0,.7); color: #fd6;
  padding: 0 3px; }
.luna-cell.sel { border-color: #4af; }
.luna-cell.cur { outline: 2px dashed #fd6; outline-offset: -4px; }
.luna-cell .noprev { font-size: 10px; opacity: .6; padding: 4px; text-align: center; }
.luna-detail, .luna-dialog { position: sticky; bottom: 0; z-index: 2; background: var(--comfy-menu-bg, #2b2b30);
  border: 1px solid var(--border-color, #555); border-radius: 6px; padding: 6px 8px; max-height: 45vh; overflow-y: auto;
  white-space: pre-wrap; word-break: break-word; box-shadow: 0 -4px 16px rgba(0,0,0,.5); }
.luna-detail[hidden], .luna-dialog[hidden] { display: none; }
.luna-detail .close { float: right; }
.luna-keys { opacity: .55; font-size: 11px; }
`;

class HttpError extends Error {
  constructor(message, status, data) {
    super(message);
    this.status = status;
    this.data = data;
  }
}

async function call(path, options = {}) {
  const res = await api.fetchApi(path, options);
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new HttpError(data.error || `HTTP ${res.status}`, res.status, data);
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

function tunedText(t) {
  if (!t) return "not tuned yet (luna-vault ab --write-defaults stores the best settings here)";
  const sign = t.improvement >= 0 ? "+" : "";
  return `tuned: strength ${t.strength}, k ${t.k}, temperature ${t.temperature}, ${t.blend_mode} ` +
    `(${t.metric} ${sign}${t.improvement.toFixed(3)} over ${t.samples} pairs on ${t.checkpoint}, ${t.tuned_at.slice(0, 10)})`;
}

// The text goes to the clipboard: the Clipboard API where the page is a secure context (localhost, https),
// else a hidden text area and the copy command (ComfyUI reached over plain http on the LAN).
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch (e) { /* not allowed here: the fallback below */ }
  }
  const area = el("textarea", { style: "position:fixed;top:0;left:0;opacity:0", readonly: "" });
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("the browser did not allow copying to the clipboard");
}

class VaultBrowser {
  constructor(root) {
    this.root = root;
    this.vault = null;      // summary of the vault shown
    this.generation = null; // the manifest version the shown entries come from
    this.entries = [];      // the entries shown in the grid, in order
    this.cursor = -1;       // the keyboard's place in the grid
    this.selected = new Set();
    this.lastDeleted = [];
    this.offset = 0;
    this.total = 0;
    this.mode = "page";     // or "similar"
    this.token = null;
    this.build();
    this.loadVaults();
  }

  build() {
    this.select = el("select", { "data-luna": "vault", onchange: () => this.open(this.select.value) });
    this.info = el("div", { class: "luna-info", "data-luna": "info" });
    this.tuned = el("div", { class: "luna-tuned", "data-luna": "tuned" });
    this.text = el("input", { placeholder: "search prompts", "data-luna": "text",
                              onkeydown: (e) => e.key === "Enter" && this.search() });
    this.filter = el("input", { placeholder: "filter, e.g. quality>=0.7", "data-luna": "filter",
                                onkeydown: (e) => e.key === "Enter" && this.search() });
    this.status = el("div", { class: "luna-status", "data-luna": "status", role: "status" });
    this.progress = el("progress", { class: "luna-progress", "data-luna": "progress", max: "1", hidden: "" });
    this.grid = el("div", { class: "luna-grid", "data-luna": "grid", tabindex: "0", role: "listbox",
                            "aria-multiselectable": "true", "aria-label": "vault entries (arrow keys move, space selects)",
                            onkeydown: (e) => this.key(e) });
    this.detail = el("div", { class: "luna-detail", "data-luna": "detail", hidden: "" });
    this.dialog = el("div", { class: "luna-dialog", "data-luna": "dialog", hidden: "" });
    this.more = el("button", { "data-luna": "more", onclick: () => this.page(this.offset + PAGE) }, "Next page");
    this.prev = el("button", { "data-luna": "prev", onclick: () => this.page(Math.max(0, this.offset - PAGE)) }, "Previous");
    this.del = el("button", { "data-luna": "delete", onclick: () => this.deleteSelected() }, "Delete selected");
    this.undo = el("button", { "data-luna": "undo", onclick: () => this.restoreLast() }, "Undo delete");
    this.exp = el("button", { "data-luna": "export", onclick: () => this.exportSelected() }, "Export selection…");
    this.root.title = "Drop a .lvault package here to install it";
    this.file = el("input", { type: "file", accept: ".lvault", style: "display:none", "data-luna": "package",
                              onchange: () => { const f = this.file.files[0]; this.file.value = ""; this.install(f); } });
    this.inst = el("button", { "data-luna": "install", onclick: () => this.file.click() }, "Install package…");
    this.root.append(
      el("style", {}, css),
      el("div", { class: "luna-row" }, this.select, this.inst, this.file),
      this.info, this.tuned,
      el("div", { class: "luna-row" }, this.text, this.filter,
         el("button", { "data-luna": "search", onclick: () => this.search() }, "Search")),
      el("div", { class: "luna-row" }, this.prev, this.more, this.del, this.undo, this.exp),
      this.status, this.progress, this.grid,
      el("div", { class: "luna-keys" }, "keys: arrows move · space selects · enter shows · del deletes · " +
         "pgup/pgdn pages · esc closes"),
      this.dialog, this.detail,
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
    this.said = [...(this.said || []).slice(-49), msg];  // the last messages (tests read them)
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

  // ---- changes: each carries the token; a server restarted meanwhile has a new one, read again once
  async getToken(fresh = false) {
    if (!this.token || fresh) this.token = (await call(`${BASE}/token`)).token;
    return this.token;
  }

  async post(path, body) {
    for (let attempt = 0; ; attempt++) {
      const headers = { "Content-Type": "application/json", [TOKEN_HEADER]: await this.getToken(attempt > 0) };
      try {
        return await call(path, { method: "POST", headers, body: JSON.stringify(body) });
      } catch (e) {
        if (attempt === 0 && e.status === 403 && e.data?.token) continue;
        throw e;
      }
    }
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
    this.tuned.textContent = shown(tunedText(v.tuned));
    this.selected.clear();
    this.lastDeleted = [];
    this.closeDetail();
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
    this.entries = entries;
    this.cursor = -1;
    this.grid.replaceChildren(...entries.map((e, k) => this.cell(e, k)));
    this.grid.scrollTop = 0;
  }

  cell(e, k) {
    const name = encodeURIComponent(this.vault.name);
    const c = el("div", { class: "luna-cell" + (this.selected.has(e.id) ? " sel" : ""), title: shown(e.prompt), "data-id": e.id,
                          role: "option", "aria-selected": String(this.selected.has(e.id)) });
    c.append(e.thumbnail ? el("img", { loading: "lazy", src: api.apiURL(`${BASE}/${name}/thumbnails/${e.id}`), alt: "" })
                         : el("div", { class: "noprev" }, "no preview"));
    c.append(el("div", { class: "cap" }, `#${e.id} ${shown(e.prompt)}`));
    if (e.similarity !== undefined) c.append(el("div", { class: "sim" }, e.similarity.toFixed(3)));
    c.addEventListener("click", () => {
      this.moveTo(k);
      this.toggle(k);
      this.showDetail(e);
    });
    return c;
  }

  // ---- keyboard: the grid is one focusable list; the cursor is the dashed cell
  columns() {
    return Math.max(1, getComputedStyle(this.grid).gridTemplateColumns.split(" ").filter(Boolean).length);
  }

  moveTo(k) {
    if (!this.entries.length) return;
    k = Math.max(0, Math.min(this.entries.length - 1, k));
    this.grid.children[this.cursor]?.classList.remove("cur");
    this.cursor = k;
    const c = this.grid.children[k];
    c.classList.add("cur");
    c.scrollIntoView({ block: "nearest" });
    if (!this.detail.hidden) this.showDetail(this.entries[k]);
  }

  toggle(k) {
    const e = this.entries[k];
    const c = this.grid.children[k];
    if (!e || !c) return;
    this.selected.has(e.id) ? this.selected.delete(e.id) : this.selected.add(e.id);
    c.classList.toggle("sel", this.selected.has(e.id));
    c.setAttribute("aria-selected", String(this.selected.has(e.id)));
    this.updateButtons();
  }

  key(ev) {
    const k = this.cursor < 0 ? 0 : this.cursor;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: this.columns(), ArrowUp: -this.columns() };
    if (ev.key in moves) this.moveTo(this.cursor < 0 ? 0 : k + moves[ev.key]);
    else if (ev.key === "Home") this.moveTo(0);
    else if (ev.key === "End") this.moveTo(this.entries.length - 1);
    else if (ev.key === " ") this.toggle(k);
    else if (ev.key === "Enter" && this.entries[k]) this.showDetail(this.entries[k]);
    else if (ev.key === "Delete" && this.selected.size) this.deleteSelected();
    else if (ev.key === "Escape") this.closeDetail();
    else if (ev.key === "PageDown" && !this.more.disabled) this.page(this.offset + PAGE);
    else if (ev.key === "PageUp" && !this.prev.disabled) this.page(Math.max(0, this.offset - PAGE));
    else return;
    ev.preventDefault();
  }

  // ---- the detail: pinned to the bottom of what the user sees, over the grid
  showDetail(e) {
    const meta = Object.entries(e.metadata).map(([k, v]) => shown(`${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)).join("\n");
    this.shown = e;
    this.detail.replaceChildren(
      el("button", { class: "close", "data-luna": "close", title: "close (Esc)", onclick: () => this.closeDetail() }, "×"),
      el("div", {}, el("b", {}, `#${e.id}`), ` ${shown(e.prompt)}${e.truncated ? "…" : ""}`),
      el("div", { class: "luna-info" }, meta),
      el("div", { class: "luna-row" },
         el("button", { "data-luna": "similar", onclick: () => this.similar(e.id) }, "More like this"),
         el("button", { "data-luna": "copy", onclick: () => this.copyPrompt(e) }, "Copy prompt")),
    );
    this.detail.hidden = false;
  }

  closeDetail() {
    this.detail.hidden = true;
    this.shown = null;
  }

  async copyPrompt(e) {
    try {
      const prompt = e.truncated
        ? (await call(`${BASE}/${encodeURIComponent(this.vault.name)}/entries/${e.id}`)).prompt : e.prompt;
      await copyText(prompt);
      this.say(`copied the prompt of #${e.id} (${prompt.length.toLocaleString()} characters)`);
    } catch (err) {
      this.say(`could not copy the prompt: ${err.message}`, true);
    }
  }

  async change(action, ids) {
    return this.post(`${BASE}/${encodeURIComponent(this.vault.name)}/${action}`, { ids, generation: this.generation });
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
    if (e.status === 409) {
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
      const out = await this.post(`${BASE}/${encodeURIComponent(this.vault.name)}/export`, { ids: [...this.selected], name });
      await this.loadVaults(this.vault.name);
      this.say(`exported ${out.entries} entries as ${out.vault}`);
    } catch (e) {
      this.say(e.message, true);
    }
  }

  // ---- install: the upload shows its progress; a name that exists opens a dialog (another name / replace)
  upload(file, query) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", api.apiURL(`${BASE}/install${query ? `?${query}` : ""}`));
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader(TOKEN_HEADER, this.token);
      if (api.user) xhr.setRequestHeader("Comfy-User", api.user);
      xhr.upload.onprogress = (ev) => {
        if (!ev.lengthComputable) return;
        this.progress.value = ev.loaded / ev.total;
        this.say(`uploading ${file.name}: ${Math.floor(100 * ev.loaded / ev.total)}% of ${human(ev.total)}`);
      };
      xhr.upload.onload = () => this.say(`checking ${file.name} (every file hashed, the vault verified)…`);
      xhr.onload = () => {
        let data;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = { error: `HTTP ${xhr.status}` }; }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else reject(new HttpError(data.error || `HTTP ${xhr.status}`, xhr.status, data));
      };
      xhr.onerror = () => reject(new Error("the upload was cut off (the server refused it or went away)"));
      xhr.send(file);
    });
  }

  async install(file, query = "") {
    if (!file) return;
    this.say(`uploading ${file.name}…`);
    this.dialog.hidden = true;
    this.progress.hidden = false;
    this.progress.value = 0;
    this.inst.disabled = true;
    try {
      await this.getToken();
      let out;
      try {
        out = await this.upload(file, query);
      } catch (e) {
        if (e.status !== 403 || !e.data?.token) throw e;
        await this.getToken(true);  // ComfyUI restarted since the token was read
        out = await this.upload(file, query);
      }
      await this.loadVaults(out.vault);
      this.say(`installed ${out.vault} from ${file.name} (every check passed)`);
    } catch (e) {
      if (e.status === 409 && e.data?.exists) this.askName(file, e.data.exists);
      else this.say(`${file.name}: ${e.message}`, true);
    } finally {
      this.progress.hidden = true;
      this.inst.disabled = false;
    }
  }

  askName(file, taken) {
    let n = 2;
    while (this.vaults?.[`${taken}-${n}`]) n++;
    const name = el("input", { "data-luna": "new-name", value: `${taken}-${n}`, "aria-label": "install as" });
    const as = () => name.value.trim() && this.install(file, new URLSearchParams({ name: name.value.trim() }).toString());
    name.addEventListener("keydown", (e) => e.key === "Enter" && as());
    this.dialog.replaceChildren(
      el("div", {}, `A vault named '${taken}' already exists. Install ${file.name} under another name, or replace it:`),
      el("div", { class: "luna-row" }, name,
         el("button", { "data-luna": "install-as", onclick: as }, "Install as this name")),
      el("div", { class: "luna-row" },
         el("button", { "data-luna": "overwrite", onclick: () => this.install(file, `name=${encodeURIComponent(taken)}&overwrite=1`) },
            `Replace '${taken}'`),
         el("button", { "data-luna": "cancel", onclick: () => { this.dialog.hidden = true; this.say("install cancelled"); } },
            "Cancel")),
    );
    this.dialog.hidden = false;
    this.say(`a vault named '${taken}' already exists: choose another name or replace it`, true);
    name.focus();
    name.select();
  }

  async refresh() {
    const keep = this.vault.name;
    const data = await call(BASE);
    this.vaults = Object.fromEntries(data.vaults.map((v) => [v.name, v]));
    this.vault = this.vaults[keep];
    const deleted = this.lastDeleted;
    const offset = this.mode === "page" ? this.offset : 0;
    await this.open(keep);
    this.lastDeleted = deleted;
    if (offset) await this.page(offset);
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
