// The imgindex web page: a hash router over the JSON API. No framework, no build step.

const view = document.getElementById("view");
const errorBox = document.getElementById("error");
let session = null;
let timer = null;

// --- helpers -------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function api(path, options = {}) {
  const opts = { credentials: "same-origin", ...options, headers: { ...(options.headers || {}) } };
  if (opts.method && opts.method !== "GET") opts.headers["X-CSRF-Token"] = session ? session.csrf : "";
  if (opts.json !== undefined) {
    opts.body = JSON.stringify(opts.json);
    opts.headers["Content-Type"] = "application/json";
    delete opts.json;
  }
  const res = await fetch(path, opts);
  if (res.status === 401) { location.hash = "#/login"; throw new Error("log in first"); }
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error((body && (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))) || res.statusText);
  return body;
}

const thumb = (id) => `/api/images/${id}/thumb`;
const size = (n) => n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${Math.round(n / 1024)} kB`;
const when = (t) => t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "—";

function tile(id, score, label) {
  return el("a", { href: `#/photo/${id}`, "data-image": id, title: label || "" },
    el("img", { src: thumb(id), loading: "lazy", alt: label || `image ${id}` }),
    score === undefined ? "" : el("span", { class: "score", text: score.toFixed(3) }));
}

// --- pages ---------------------------------------------------------------------------------

async function overview() {
  const draw = (s) => {
    const d = s.daemon || {};
    const stats = [
      ["Indexed", s.indexed], ["Failed", s.failed], ["Pending", s.pending],
      ["Clusters", s.clusters], ["Queue", s.queued], ["Model", s.model],
    ];
    const roots = (d.roots && Object.keys(d.roots).length) ? Object.entries(d.roots).map(([p, v]) => `${p}: ${JSON.stringify(v)}`).join("; ") : "";
    view.replaceChildren(
      el("h1", { text: "Library" }),
      el("div", { class: "stats", id: "stats" }, stats.map(([k, v]) =>
        el("div", { class: "stat", "data-stat": k.toLowerCase() }, el("b", { text: v }), k))),
      el("h2", { text: "Daemon" }),
      el("dl", {},
        el("dt", { text: "State" }), el("dd", { id: "daemon-state", text: d.state + (d.pid ? ` (pid ${d.pid})` : "") }),
        el("dt", { text: "Problem" }), el("dd", { text: d.problem || "none" }),
        el("dt", { text: "Pass" }), el("dd", { text: roots || "—" }),
        el("dt", { text: "Roots" }), el("dd", { text: s.roots.map((r) => r.path + (r.available === false ? " (unavailable)" : "")).join(", ") }),
        el("dt", { text: "Data dir" }), el("dd", { text: s.data_dir })),
      el("p", { class: "muted", id: "updated", text: `updated ${new Date(s.at * 1000).toLocaleTimeString()} (live)` }));
  };
  draw(await api("/api/status"));
  timer = setInterval(async () => {
    try { draw(await api("/api/status")); } catch (e) { showError(e.message); }
  }, 2000);
}

function renamer(cluster, onDone) {
  const input = el("input", { type: "text", value: cluster.name || "", placeholder: cluster.label || `cluster ${cluster.id}`, "aria-label": "cluster name", maxlength: 200 });
  const save = async () => {
    const saved = await api(`/api/clusters/${cluster.id}/name`, { method: "POST", json: { name: input.value } });
    onDone(saved.name);
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") save().catch((x) => showError(x.message)); if (e.key === "Escape") onDone(undefined); });
  const form = el("span", { class: "rename" }, input, " ", el("button", { class: "primary", onclick: () => save().catch((x) => showError(x.message)), text: "Save" }));
  setTimeout(() => input.focus(), 0);
  return form;
}

function titleLine(cluster, tag = "div") {
  const holder = el(tag, { class: "title" });
  const show = () => {
    holder.replaceChildren(
      el("span", { class: "name", text: cluster.name || cluster.label || `cluster ${cluster.id}` }), " ",
      session.read_only ? "" : el("button", { class: "rename-button", title: "Rename", onclick: (e) => { e.preventDefault(); edit(); }, text: "Rename" }));
  };
  const edit = () => holder.replaceChildren(renamer(cluster, (name) => { if (name !== undefined) cluster.name = name; show(); }));
  show();
  return holder;
}

async function clusters() {
  const rows = await api("/api/clusters");
  view.replaceChildren(el("h1", { text: `Clusters (${rows.length})` }),
    rows.length ? "" : el("p", { class: "muted", text: "No clusters yet: the library has to be indexed first." }),
    el("div", { class: "cards" }, rows.map((c) => el("div", { class: "card", "data-cluster": c.id },
      el("a", { href: `#/cluster/${c.id}`, class: "thumbs" }, c.representative_ids.map((id) => el("img", { src: thumb(id), loading: "lazy", alt: "" }))),
      titleLine(c),
      el("div", { class: "muted" }, el("a", { href: `#/cluster/${c.id}`, text: `${c.size} images` }), ` · #${c.id}`)))));
}

async function cluster(id, page) {
  const per = 100;
  const c = await api(`/api/clusters/${id}?offset=${page * per}&limit=${per}`);
  const pages = Math.max(1, Math.ceil(c.size / per));
  const pager = () => el("div", { class: "pager" },
    el("a", { class: "button", href: page > 0 ? `#/cluster/${id}/${page - 1}` : null, "aria-disabled": page === 0, text: "‹ Previous" }),
    `page ${page + 1} of ${pages}`,
    el("a", { class: "button", href: page + 1 < pages ? `#/cluster/${id}/${page + 1}` : null, "aria-disabled": page + 1 >= pages, text: "Next ›" }));
  view.replaceChildren(el("h1", {}, titleLine(c, "span")), el("p", { class: "muted", text: `${c.size} images` }),
    pager(), el("div", { class: "grid", id: "members" }, c.members.map((m) => tile(m.id, undefined, m.path))), pager());
}

async function photo(id) {
  const p = await api(`/api/images/${id}`);
  const facts = [
    ["Path", p.path], ["Status", p.status], ["Why it failed", p.reason],
    ["Size", `${size(p.size)}${p.width ? `, ${p.width} × ${p.height}` : ""}${p.format ? `, ${p.format}` : ""}`],
    ["Modified", when(p.modified)],
  ].filter(([, v]) => v);
  view.replaceChildren(
    el("div", { class: "photo" },
      el("div", { class: "preview" }, p.status === "indexed" || p.width ? el("img", { src: `/api/images/${id}/preview`, alt: p.path }) : el("p", { class: "muted", text: "no preview" })),
      el("div", {},
        el("dl", { id: "facts" }, facts.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]),
          el("dt", { text: "Cluster" }), el("dd", {}, p.cluster === null ? "none" : el("a", { href: `#/cluster/${p.cluster}`, id: "cluster-link", text: p.cluster_title }))),
        el("h2", { text: `Duplicates (${p.duplicates.length})` }),
        el("div", { class: "grid", id: "duplicates" }, p.duplicates.map((d) => tile(d.id, d.score, d.path))))),
    el("h2", { text: `Nearest neighbours (${p.neighbours.length})` }),
    el("div", { class: "grid", id: "neighbours" }, p.neighbours.map((m) => tile(m.id, m.score, m.path))));
}

function search() {
  const results = el("div", { class: "grid", id: "results" });
  const note = el("p", { class: "muted", id: "search-note" });
  const input = el("input", { type: "file", accept: "image/*", id: "upload" });
  const run = async (file) => {
    if (!file) return;
    note.textContent = `searching with ${file.name}…`;
    results.replaceChildren();
    const res = await fetch("/api/search", {
      method: "POST", body: file, credentials: "same-origin",
      headers: { "X-CSRF-Token": session.csrf, "X-File-Name": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" },
    });
    const body = await res.json().catch(() => null);
    if (!res.ok) { note.textContent = ""; throw new Error((body && body.detail) || res.statusText); }
    note.textContent = `${body.length} similar images to ${file.name}`;
    results.replaceChildren(...body.filter((m) => m.id).map((m) => tile(m.id, m.score, m.path)));
  };
  input.addEventListener("change", () => run(input.files[0]).catch((e) => showError(e.message)));
  const drop = el("div", { class: "drop", id: "drop" }, el("p", { text: "Drop a photo here, or " }), input);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); run(e.dataTransfer.files[0]).catch((x) => showError(x.message)); });
  view.replaceChildren(el("h1", { text: "Search by photo" }), drop, note, results);
}

async function duplicates() {
  const d = await api("/api/duplicates");
  const undo = el("button", { id: "undo", disabled: !d.undoable || session.read_only, text: `Undo the last set-aside (${d.undoable})`,
    onclick: async () => { await api("/api/duplicates/undo", { method: "POST" }); await duplicates(); } });
  const groups = d.groups.map((g, i) => {
    let keeper = g.keeper;
    const cards = g.members.map((m) => {
      const radio = el("input", { type: "radio", name: `keep-${i}`, value: m.id, checked: m.id === keeper, "aria-label": "keep this one" });
      const card = el("label", { class: "member" + (m.id === keeper ? " keeper" : ""), "data-image": m.id },
        el("img", { src: thumb(m.id), loading: "lazy", alt: m.path }),
        el("div", {}, radio, " keep"),
        el("div", { text: `${size(m.size)} · ${m.width || "?"} × ${m.height || "?"}` }),
        el("div", { text: `taken ${when(m.taken)}` }),
        el("div", { class: "muted", text: `${m.metadata} EXIF tags · ${m.kind}` }),
        el("div", { class: "path", text: m.path }));
      radio.addEventListener("change", () => {
        keeper = m.id;
        for (const c of card.parentNode.children) c.classList.toggle("keeper", c === card);
      });
      return card;
    });
    return el("div", { class: "group", "data-group": i },
      el("div", {}, el("b", { text: `Group ${i + 1}` }), el("span", { class: "muted", text: ` · ${g.members.length} images · ${g.reason.join(", ")}` })),
      el("div", { class: "members" }, cards),
      el("button", { class: "primary set-aside", disabled: session.read_only || !d.quarantine, text: "Set aside the others",
        onclick: async () => { await api("/api/duplicates/resolve", { method: "POST", json: { keep: keeper } }); await duplicates(); } }));
  });
  view.replaceChildren(el("h1", { text: `Duplicates (${d.groups.length} groups)` }),
    el("p", { class: "muted" }, `Keeper policy: ${d.keep}. `, d.quarantine ? `The others move to ${d.quarantine} (nothing is deleted).` : "Set a quarantine folder first: imgindex config quarantine DIR"),
    el("p", {}, undo), ...(groups.length ? groups : [el("p", { class: "muted", text: "No duplicates." })]));
}

async function map() {
  const m = await api("/api/map");
  const canvas = el("canvas", { id: "map", width: 1000, height: 1000 });
  view.replaceChildren(el("h1", { text: `Map (${m.ids.length} images)` }), el("p", { class: "muted", text: "Similar images lie close together; click a point to open it." }), canvas);
  const ctx = canvas.getContext("2d");
  const hue = (c) => c < 0 ? "#999" : `hsl(${(c * 137.5) % 360} 65% 45%)`;
  const pad = 20, span = 960;
  for (let i = 0; i < m.ids.length; i++) {
    ctx.fillStyle = hue(m.cluster[i]);
    ctx.beginPath(); ctx.arc(pad + m.x[i] * span, pad + m.y[i] * span, 3, 0, 7); ctx.fill();
  }
  canvas.addEventListener("click", (e) => {
    const r = canvas.getBoundingClientRect();
    const x = ((e.clientX - r.left) * 1000 / r.width - pad) / span, y = ((e.clientY - r.top) * 1000 / r.height - pad) / span;
    let best = -1, dist = Infinity;
    for (let i = 0; i < m.ids.length; i++) { const d = (m.x[i] - x) ** 2 + (m.y[i] - y) ** 2; if (d < dist) { dist = d; best = i; } }
    if (best >= 0) location.hash = `#/photo/${m.ids[best]}`;
  });
}

function login() {
  const input = el("input", { type: "password", id: "password", autocomplete: "current-password", "aria-label": "password" });
  const go = async (e) => {
    e.preventDefault();
    const r = await api("/api/login", { method: "POST", json: { password: input.value } });
    session.csrf = r.csrf; session.authenticated = true;
    location.hash = "#/";
  };
  view.replaceChildren(el("h1", { text: "Log in" }),
    el("form", { onsubmit: (e) => go(e).catch((x) => showError(x.message)) }, input, " ", el("button", { class: "primary", type: "submit", text: "Log in" })));
}

// --- the router ----------------------------------------------------------------------------

async function route() {
  clearInterval(timer);
  showError("");
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const page = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === page || (page === "cluster" && a.dataset.nav === "clusters"));
  if (session.login_required && !session.authenticated && page !== "login") { location.hash = "#/login"; return; }
  const int = (s) => /^\d+$/.test(s || "") ? Number(s) : null;
  try {
    if (page === "overview") await overview();
    else if (page === "clusters") await clusters();
    else if (page === "cluster" && int(parts[1])) await cluster(int(parts[1]), int(parts[2]) || 0);
    else if (page === "photo" && int(parts[1])) await photo(int(parts[1]));
    else if (page === "search") search();
    else if (page === "duplicates") await duplicates();
    else if (page === "map") await map();
    else if (page === "login") login();
    else view.replaceChildren(el("h1", { text: "Not found" }));
    document.body.dataset.page = page;
  } catch (e) {
    showError(e.message);
  }
}

async function start() {
  session = await api("/api/session");
  document.getElementById("mode").textContent = session.read_only ? "read-only" : "";
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((e) => showError(e.message));
