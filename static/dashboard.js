// Server Monitor dashboard: the fleet grid (one cell per GPU, one row per server), the
// problems strip, the who-is-using-GPUs-now panel and one server's detail on demand.
// Data: GET /api/fleet (one compact document, ETag/304) every 30 s; /api/servers/<id> when a
// server is opened. Every value from an agent is untrusted text: the DOM is built with
// createElement and textContent only (h() in common.js), never innerHTML.
"use strict";

const REFRESH_S = 30;
const GPU_STATE_TEXT = {
  driver_mismatch: "driver/library version mismatch (reboot pending?)",
  no_devices: "driver found no GPUs",
  driver_not_loaded: "NVIDIA driver not loaded",
  insufficient_permissions: "insufficient permissions for NVML",
  timeout: "nvidia-smi timed out",
  busy: "nvidia-smi hung (earlier call still running)",
  error: "nvidia-smi failed",
};
const STATE_WORD = {
  free: "free", busy: "busy", idle: "held idle", mig: "MIG mode", lost: "lost (missing from the latest report)",
  error: "error", offline: "host offline", stale: "host late (stale)", maint: "maintenance",
  alloc: "allocated to a Slurm job, no process yet",
};
const STATUS_RANK = { error: 0, offline: 1, stale: 2, maintenance: 3, online: 4 };
const SERVER_GLYPH = { online: "●", stale: "◐", offline: "○", error: "▲", maintenance: "■" };
const RULE_TEXT = {
  host_offline: "offline", gpu_failure: "GPU failure", collection_stale: "GPU data stale", gpu_lost: "GPU lost",
  gpu_ecc: "GPU health", gpu_temperature: "hot GPU", gpu_throttle: "throttled", gpu_pcie_degraded: "PCIe degraded",
  disk_full: "disk full", host_identity: "host name", gpu_xid: "XID", gpu_memory: "GPU memory", gpu_idle_held: "held idle",
};

// ---- state -------------------------------------------------------------------------
let doc = null;            // the last /api/fleet document
let wantFresh = true;      // the next /api/fleet must not be a reused (stale) document: the first after the page
                           // loads (an admin may just have changed something on /admin) and after own changes
let etag = null;
let skew = 0;              // hub clock minus ours (s), from generated_at
let nextRefreshAt = 0;
let lastUpdate = null;
let announcements = [];
let highlight = null;      // {kind: "user" | "container", value}
let gridKey = null;        // structure of the rendered grid (server and GPU ids)
let rowEls = new Map();    // section + "|" + server id -> {sid, row, name, sub, cells: [el]} (rows built so far)
let sections = [];         // host-group sections of the grid: {name, servers, el, body, head, built}
const sectionOpen = new Map();  // group name -> open? (what this viewer chose; kept across refreshes)
let hay = new Map();       // server id -> lower-case text the filter searches (name, models, state, groups, users, containers)
let filterText = "";       // the filter as last applied (lower case)
let filterFrame = 0;       // requestAnimationFrame id of a pending filter pass
// Above this many rows the group sections start closed: the overview (one summary line and
// heat-strip per group) fits a screen; a section's rows are built when it is opened.
const OVERVIEW_MIN_SERVERS = 1000;
const UNGROUPED = "";      // the section of servers in no group
let showAllProblems = false;
let openServer = null;     // server id shown in the detail panel

// replaceChildren() without the null/false placeholders of conditional pieces.
const fill = (el, ...kids) => el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
const nowHub = () => Date.now() / 1000 + skew;
const str = (v) => (v === undefined ? null : v);  // strings arrive inline (null when unknown)

// ---- small formatters ----------------------------------------------------------------
// fmtAge (a duration in words: "45 s", "12 min", "5 h 59 min", "6 h", "3 d") is in common.js.
function clock(epoch) {
  const d = new Date(epoch * 1000);
  const sameDay = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return sameDay ? t : d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " + t;
}
function gib(mib) { return mib === null || mib === undefined ? "–" : Math.round(mib / 1024) + "G"; }
function shortBus(bus) { return bus ? bus.replace(/^0+:/, "").replace(/\.\d$/, "") : "?"; }

// ---- GPU cells ------------------------------------------------------------------------
function holders(procs) {
  // Distinct users (by held VRAM, biggest first) of one GPU's processes.
  const by = new Map();
  for (const p of procs) {
    const key = p[1];
    by.set(key, (by.get(key) || 0) + (p[3] || 0));
  }
  return [...by.entries()].sort((a, b) => b[1] - a[1]).map((e) => e[0]);
}

function cellText(server, g) {
  const [, , state, util, memUsed, memTotal, , , bus, , procs] = g;
  const users = holders(procs);
  // One holder: the name (a cell holds 12 characters); several: the first name's head and "+N".
  const first = str(users[0]) || "?";
  const who = !users.length ? "" : users.length === 1 ? first : first.slice(0, 8) + "+" + (users.length - 1);
  switch (state) {
    case "free": return ["free", gib(memTotal)];
    case "busy": return [util === null ? "busy" : util + "%", who || (memUsed ? gib(memUsed) : "")];
    case "idle": return ["◌" + (util === null ? "" : util + "%"), who];
    case "mig": return ["MIG", who];
    case "lost": return ["✕lost", shortBus(bus)];
    case "error": return ["▲err", who];
    case "offline": return ["○off", who];
    case "stale": return ["◐" + (util === null ? "" : util), who];
    case "maint": return ["■mnt", who];
    case "alloc": return ["◷alloc", str((g[F_SLURM] || [])[1]) || who];
    default: return [state, who];
  }
}

// GPUs not made by NVIDIA carry a vendor (fleet document: last GPU field; gpus query: vendor).
const VENDOR_LABEL = { amd: "AMD", intel: "Intel" };

// ---- GPU health (fleet document: health, health_reasons, xid, mig after vendor) --------
const F_HEALTH = 12, F_REASONS = 13, F_XID = 14, F_MIG = 15, F_SLURM = 16;
// Slurm job holding the GPU (fleet document: slurm = [job id, user]): "Slurm job 4300 of user9".
function slurmText(g) {
  const job = g[F_SLURM];
  return job ? "Slurm job " + str(job[0]) + (job[1] ? " of " + str(job[1]) : "") : null;
}
// A process entry that stands for a Slurm allocation with no process (pid null, container slurm-alloc:…).
function isAllocation(p) { return p[0] === null && String(p[2] || "").startsWith("slurm-alloc:"); }
const HEALTH_GLYPH = { critical: "✖", warning: "⚠" };
// nvidia-smi clocks_event_reasons.* names (server_monitor.core.gpu_health) in words.
const THROTTLE_TEXT = {
  gpu_idle: "idle", applications_clocks_setting: "applications clocks", sw_power_cap: "power cap",
  hw_slowdown: "HW slowdown", sync_boost: "sync boost", sw_thermal_slowdown: "SW thermal slowdown",
  hw_thermal_slowdown: "HW thermal slowdown", hw_power_brake_slowdown: "HW power brake", display_clock_setting: "display clock",
};
function throttleWords(text) {
  return String(text).replace(/[a-z_]+/g, (w) => THROTTLE_TEXT[w] || w);
}
// The health text of one fleet cell: "critical: 2 uncorrectable ECC errors; last XID 79", or null.
function healthText(g) {
  const level = g[F_HEALTH];
  const parts = [];
  if (level) parts.push(level + ": " + (g[F_REASONS] ? throttleWords(g[F_REASONS]) : "see the server"));
  if (g[F_XID] !== null && g[F_XID] !== undefined) parts.push("last XID " + g[F_XID]);
  return parts.length ? parts.join("; ") : null;
}
// MIG device of the fleet document: [uuid, profile, gi, mem_used_mib, mem_total_mib, procs, state]; holders by GPU
// instance id. state (server_monitor/serving/fleet.py mig_states): free, busy, shared (a sibling compute instance of its GPU
// instance is busy: they share its memory), unknown (usage not read yet): only "free" is what /free offers.
const MIG_STATE_TEXT = { shared: ", idle but its GPU instance is in use (shared memory)",
  unknown: ", usage not read yet" };
function migHolders(procs, gi) {
  return gi === null || gi === undefined ? [] : holders(procs.filter((p) => p[5] === gi));
}
function migLabel(m, procs) {
  const users = migHolders(procs, m[2]).map((u) => str(u) || "?");
  const state = m[6];
  return "MIG " + (str(m[1]) || "?") + " (GI " + m[2] + "): " + fmtMiB(m[3]) + " of " + fmtMiB(m[4]) +
    (users.length ? ", used by " + users.join(", ") : m[5] ? ", " + m[5] + " process" + (m[5] === 1 ? "" : "es") :
      MIG_STATE_TEXT[state] || ", free");
}
function migSub(m, procs) {
  const users = migHolders(procs, m[2]);
  const profile = str(m[1]) || "?";
  const slices = Math.max(1, Math.min(8, parseInt(profile, 10) || 1));
  const line2 = users.length ? (str(users[0]) || "?") + (users.length > 1 ? "+" + (users.length - 1) : "") : (m[5] ? m[5] + "p" : gib(m[3]));
  const taken = users.length || m[5] || m[6] === "shared" || m[6] === "unknown";
  return h("span", { class: "mi grow-" + slices + (taken ? " mi-used" : ""), title: migLabel(m, procs),
                     dataset: { profile } },
    h("span", { class: "mi1" }, profile.split(".")[0]), h("span", { class: "mi2" }, line2));
}

function cellLabel(server, g) {
  const [, index, state, util, memUsed, memTotal, temp, power, bus, model, procs, vendor] = g;
  const users = holders(procs).map((u) => str(u) || "?");
  return server.name + " GPU " + (index === null ? shortBus(bus) : index) + (VENDOR_LABEL[vendor] ? " (" + VENDOR_LABEL[vendor] + ")" : "") +
    ": " + STATE_WORD[state] +
    (util !== null && util !== undefined ? ", " + util + "% utilization" : "") +
    (memTotal ? ", " + fmtMiB(memUsed) + " of " + fmtMiB(memTotal) + " VRAM" : "") +
    (users.length ? ", used by " + users.join(", ") : "") +
    (slurmText(g) ? ", " + slurmText(g) : "") +
    (healthText(g) ? ", health " + healthText(g) : "") +
    (g[F_MIG] && g[F_MIG].length ? ", " + g[F_MIG].map((m) => migLabel(m, procs)).join("; ") : "");
}

function updateCell(el, server, g) {
  const [l1, l2] = cellText(server, g);
  const memPct = g[5] ? Math.min(100, Math.round((100 * (g[4] || 0)) / g[5])) : 0;
  const migs = g[F_MIG] && g[F_MIG].length ? g[F_MIG] : null;
  const sig = g[2] + "|" + l1 + "|" + l2 + "|" + memPct + "|" + g[3] + "|" + g[6] + "|" + g[7] + "|" + g[F_HEALTH] + "|" +
    g[F_REASONS] + "|" + g[F_XID] + "|" + (migs ? JSON.stringify(migs) + JSON.stringify(g[10]) : "");
  if (el.dataset.sig === sig) return;
  el.dataset.sig = sig;
  el.className = "cell s-" + g[2] + (g[F_HEALTH] ? " h-" + g[F_HEALTH] : "") +
    (migs ? " mig-split span-" + Math.min(4, migs.length) : "") + (el.classList.contains("hl") ? " hl" : "");
  el.firstChild.textContent = l1;
  el.lastChild.textContent = l2;
  // Middle children: the health badge, then the MIG devices (one sub-cell each).
  while (el.childNodes.length > 2) el.childNodes[1].remove();
  const extra = [];
  if (g[F_HEALTH]) extra.push(h("span", { class: "hb hb-" + g[F_HEALTH], title: healthText(g), "aria-hidden": "true" },
    HEALTH_GLYPH[g[F_HEALTH]] || "!"));
  if (migs) extra.push(h("span", { class: "migs" }, migs.map((m) => migSub(m, g[10]))));
  for (const x of extra) el.insertBefore(x, el.lastChild);
  el.style.setProperty("--m", memPct + "%");
  el.setAttribute("aria-label", cellLabel(server, g));
}

function newCell(server, g, i) {
  const el = h("button", { type: "button", class: "cell", dataset: { s: String(server.id), i: String(i) } },
    h("span", { class: "l1" }), h("span", { class: "l2" }));
  updateCell(el, server, g);
  return el;
}

function serverSub(s) {
  const glyph = SERVER_GLYPH[s.state] || "?";
  if (s.state === "offline" || s.state === "stale") return glyph + " " + fmtAge(nowHub() - s.last_seen);
  if (s.state === "maintenance") return glyph + " maint";
  if (s.gpu_state && GPU_STATE_TEXT[s.gpu_state]) return glyph + " " + (s.gpu_state === "driver_mismatch" ? "driver" : "GPU err");
  const live = s.gpus.filter((g) => g[2] !== "lost");
  const busy = live.filter((g) => g[2] === "busy" || g[2] === "idle" || g[2] === "mig" || g[2] === "alloc").length;
  return glyph + " " + busy + "/" + live.length;
}

function serverTitle(s) {
  let t = s.name + " — " + s.state;
  if (s.state === "offline" || s.state === "stale") t += ", last seen " + fmtAge(nowHub() - s.last_seen) + " ago (" + clock(s.last_seen) + ")";
  if (s.gpu_state && GPU_STATE_TEXT[s.gpu_state]) t += ", " + GPU_STATE_TEXT[s.gpu_state];
  for (const g of s.gpus) if (g[2] === "lost") t += ", GPU " + (g[8] || g[1]) + " lost";
  if (s.note) t += " — " + s.note;
  if (s.models) t += " — " + s.models;
  if (s.cpu_percent !== null) t += " — CPU " + s.cpu_percent + "%, memory " + fmtPct(s.mem_percent);
  return t;
}

function shortName(name) {
  // Hostnames without the domain; long ones keep their head and their distinguishing tail.
  const max = window.matchMedia("(max-width: 600px)").matches ? 8 : 14;
  let n = /^[0-9.:]+$/.test(name) ? name : name.split(".")[0] || name;
  if (n.length > max) { const head = Math.ceil((max - 1) / 3); n = n.slice(0, head) + "…" + n.slice(n.length - (max - 1 - head)); }
  return n;
}

function updateRowHead(r, s) {
  r.row.className = "srow st-" + s.state;
  r.name.textContent = shortName(s.name);
  r.sub.textContent = serverSub(s);
  r.head.title = serverTitle(s);
  r.head.setAttribute("aria-label", "Open " + s.name + " (" + r.sub.textContent + ")");
  if (r.empty) r.empty.textContent = s.gpu_state && GPU_STATE_TEXT[s.gpu_state] ? "▲ " + GPU_STATE_TEXT[s.gpu_state] :
    s.state === "offline" ? "○ offline, no GPU data" : "no GPU";
}

function buildRow(s) {
  const head = h("button", { type: "button", class: "shead", dataset: { open: String(s.id) } },
    h("span", { class: "sname" }), h("span", { class: "ssub" }));
  const cells = s.gpus.map((g, i) => newCell(s, g, i));
  const empty = s.gpus.length ? null : h("span", { class: "cells-empty" });
  const row = h("div", { class: "srow", dataset: { sid: String(s.id) } }, head,
    h("div", { class: "cells" }, cells.length ? cells : empty));
  const r = { row, head, name: head.firstChild, sub: head.lastChild, cells, empty };
  updateRowHead(r, s);
  return r;
}

function sortedServers() {
  const sort = document.getElementById("sort").value;
  const list = doc.servers.slice();
  const free = (s) => s.gpus.filter((g) => g[2] === "free").length;
  const byName = (a, b) => naturalCompare(a.name, b.name) || a.id - b.id;  // dgx-a9, dgx-a10, dgx-a100
  if (sort === "problems") list.sort((a, b) => (STATUS_RANK[a.state] - STATUS_RANK[b.state]) || byName(a, b));
  else if (sort === "free") list.sort((a, b) => (free(b) - free(a)) || byName(a, b));
  else list.sort(byName);
  return list;
}

// ---- host groups: sections with a summary line and heat-strip (the overview) ----------
const STRIP_STATES = [["busy", "busy"], ["idle", "held idle"], ["alloc", "allocated"], ["mig", "MIG"], ["free", "free"],
  ["broken", "broken"], ["off", "offline"], ["maint", "maintenance"]];
function groupStats(servers) {
  // GPU counts by state, mean utilization of the GPUs reporting now, problems of these servers.
  const c = { busy: 0, idle: 0, alloc: 0, mig: 0, free: 0, broken: 0, off: 0, maint: 0 };
  let utilSum = 0, utilN = 0, gpus = 0;
  const ids = new Set();
  for (const s of servers) {
    ids.add(s.id);
    for (const g of s.gpus) {
      gpus++;
      const st = g[2];
      if (st === "lost" || st === "error") c.broken++;
      else if (st === "offline" || st === "stale") c.off++;
      else if (st in c) c[st]++;
      if (g[3] !== null && st !== "offline" && st !== "stale" && st !== "lost") { utilSum += g[3]; utilN++; }
    }
  }
  const problems = doc.problems.filter((p) => ids.has(p.server_id) && !p.acked_by && !p.silenced_until).length;
  return { c, gpus, servers: servers.length, util: utilN ? utilSum / utilN : null, problems };
}

function groupLine(st) {
  const parts = [st.servers + " server" + (st.servers === 1 ? "" : "s") + " · " + st.gpus + " GPUs:",
    st.c.free + " free", (st.c.busy + st.c.mig) + " busy", st.c.idle + " held idle"];
  if (st.c.alloc) parts.push(st.c.alloc + " allocated");
  parts.push(st.c.broken + " broken");
  if (st.c.off) parts.push(st.c.off + " offline");
  parts.push("util " + (st.util === null ? "–" : Math.round(st.util) + "%"));
  if (st.problems) parts.push(st.problems + " problem" + (st.problems === 1 ? "" : "s"));
  return parts.join(" · ").replace(": · ", ": ");
}

function updateSectionHead(sec) {
  const st = groupStats(sec.servers);
  sec.line.textContent = groupLine(st);
  sec.head.classList.toggle("g-problems", st.problems > 0 || st.c.broken > 0);
  // Heat-strip: one segment per GPU state, as wide as its share of the group's GPUs.
  const total = Math.max(1, st.gpus);
  sec.strip.replaceChildren(...STRIP_STATES.filter(([k]) => st.c[k]).map(([k, word]) =>
    h("span", { class: "gs gs-" + k, style: { width: (100 * st.c[k] / total).toFixed(2) + "%" }, title: st.c[k] + " " + word })));
  sec.strip.setAttribute("aria-label", STRIP_STATES.filter(([k]) => st.c[k]).map(([k, word]) => st.c[k] + " " + word).join(", "));
}

function buildSectionRows(sec) {
  if (sec.built) return;
  sec.built = true;
  sec.rows = sec.servers.map((s) => {
    const r = buildRow(s);
    r.sid = s.id;
    rowEls.set(sec.name + "|" + s.id, r);
    return r;
  });
  sec.body.replaceChildren(...sec.rows.map((r) => r.row));
  applyFilter(true);
  applyHighlight();
}

// Group names that share a prefix before "-", "_" or "." (cluster-a, cluster-b; rack-01, rack-02)
// form one dimension; the sections show one dimension at a time ("Group by"), so a server that is
// in one cluster and one rack has one row, and 250 racks never crowd out 5 clusters.
function dimensionOf(name, shared) {
  const m = /^([A-Za-z][A-Za-z0-9]*?)[-_.]/.exec(name) || /^([A-Za-z]+)\d+$/.exec(name);
  return m && shared.has(m[1]) ? m[1] : "other";
}

function dimensions(list) {
  // Map dimension -> sorted group names; "other" holds names whose prefix no other group shares.
  const names = new Set();
  for (const s of list) for (const g of s.groups || []) names.add(g);
  const count = new Map();
  for (const n of names) {
    const m = /^([A-Za-z][A-Za-z0-9]*?)[-_.]/.exec(n) || /^([A-Za-z]+)\d+$/.exec(n);
    if (m) count.set(m[1], (count.get(m[1]) || 0) + 1);
  }
  const shared = new Set([...count].filter(([, n]) => n > 1).map(([k]) => k));
  const dims = new Map();
  for (const n of [...names].sort(naturalCompare)) {
    const d = dimensionOf(n, shared);
    if (!dims.has(d)) dims.set(d, []);
    dims.get(d).push(n);
  }
  return dims;
}

function groupedLayout(list, groups) {
  // [[group name, servers in the hub's/sort order]] for the groups of one dimension (``groups``,
  // a Set; null = every group), by name; servers in none of them last, under UNGROUPED.
  const by = new Map();
  for (const s of list) {
    const mine = (s.groups || []).filter((g) => groups === null || groups.has(g));
    for (const g of (mine.length ? mine : [UNGROUPED])) {
      if (!by.has(g)) by.set(g, []);
      by.get(g).push(s);
    }
  }
  return [...by.entries()].sort((a, b) => (a[0] === UNGROUPED) - (b[0] === UNGROUPED) || naturalCompare(a[0], b[0]));
}

function chosenGroup() { return document.getElementById("group-filter").value; }

function renderGroupChoice(dims) {
  // The "Group by" and "Group" selects; hidden while no server is in a group.
  const by = document.getElementById("group-by"), select = document.getElementById("group-filter");
  const params = new URLSearchParams(location.search);
  const names = [...dims.values()].flat().sort(naturalCompare);
  const key = [...dims.keys()].join(",") + "\n" + names.join("\n");
  const wantBy = by.dataset.key ? by.value : params.get("by") || "";
  const wantGroup = select.dataset.key ? select.value : params.get("group") || "";
  if (by.dataset.key !== key) {
    const order = [...dims.keys()].filter((d) => d !== "other")
      .sort((a, b) => dims.get(a).length - dims.get(b).length || a.localeCompare(b));
    by.replaceChildren(...order.map((d) => h("option", { value: d }, "Group by " + d)),
      h("option", { value: "*" }, order.length ? "Every group" : "Group by host group"),
      h("option", { value: "-" }, "No groups (one grid)"));
    select.replaceChildren(h("option", { value: "" }, "All groups"), ...names.map((n) => h("option", { value: n }, n)));
    by.dataset.key = select.dataset.key = key;
  }
  by.value = [...by.options].some((o) => o.value === wantBy) ? wantBy : (by.options[0] ? by.options[0].value : "");
  select.value = [...select.options].some((o) => o.value === wantGroup) ? wantGroup : "";
  const none = names.length === 0;
  by.hidden = select.hidden = none;
  document.getElementById("groups-toggle").hidden = none || by.value === "-";
}

function renderGrid() {
  const grid = document.getElementById("grid");
  indexFilter();  // before any rows are built: building a section's rows applies the filter (?group= on load)
  const list = sortedServers();
  const dims = dimensions(list);
  renderGroupChoice(dims);
  const byValue = document.getElementById("group-by").value;
  const grouped = dims.size > 0 && byValue !== "-";
  const layout = grouped ? groupedLayout(list, byValue === "*" ? null : new Set(dims.get(byValue) || [])) : [[UNGROUPED, list]];
  const key = document.getElementById("sort").value + ":" + (grouped ? "g" + byValue : "f") + ":" +
    layout.map(([n, ss]) => n + "=" + ss.map((s) => s.id + "." + s.gpus.map((g) => g[0]).join(",")).join(";")).join("/");
  // A server in several groups has a row in each of their sections: count rows, not servers.
  const overview = layout.reduce((n, [, ss]) => n + ss.length, 0) > OVERVIEW_MIN_SERVERS;
  if (key !== gridKey) {
    rowEls = new Map();
    sections = [];
    if (!grouped) {  // no groups: the grid as it always was, one row per server
      const sec = { name: UNGROUPED, servers: list, body: grid, built: false, flat: true, rows: [] };
      sections.push(sec);
      if (list.length) buildSectionRows(sec);
      else grid.replaceChildren(h("p", { class: "muted empty" }, "No server has reported yet. Start an agent (see README)."));
    } else {
      grid.replaceChildren(...layout.map(([name, servers]) => {
        const open = sectionOpen.has(name) ? sectionOpen.get(name) : !overview;
        const strip = h("span", { class: "gstrip", role: "img" });
        const line = h("span", { class: "gline" });
        const head = h("summary", { class: "ghead" }, h("span", { class: "gname" }, name === UNGROUPED ? (byValue === "*" ? "(no group)" : "(no " + byValue + ")") : name),
          strip, line, h("span", { class: "gmatch" }));
        const body = h("div", { class: "gbody" });
        const el = h("details", { class: "gsec", dataset: { group: name } }, head, body);
        const sec = { name, servers, el, head, body, strip, line, match: head.lastChild, built: false, rows: [] };
        el.open = open;
        el.addEventListener("toggle", () => {
          sectionOpen.set(name, el.open);
          if (el.open) buildSectionRows(sec);
        });
        sections.push(sec);
        updateSectionHead(sec);
        return el;
      }));
      for (const sec of sections) if (sec.el.open) buildSectionRows(sec);
    }
    gridKey = key;
  } else {
    const byId = new Map(list.map((s) => [s.id, s]));
    for (const [k, r] of rowEls) {
      const s = byId.get(r.sid);
      updateRowHead(r, s);
      s.gpus.forEach((g, i) => updateCell(r.cells[i], s, g));
    }
    for (const sec of sections) {
      sec.servers = sec.servers.map((s) => byId.get(s.id));
      if (!sec.flat) updateSectionHead(sec);
    }
  }
  applyFilter(true);
  applyHighlight();
}

// ---- filter and highlight ----------------------------------------------------------
// The filter never re-renders: each server's searchable text is lower-cased once per fleet
// document (indexFilter), and a keystroke only toggles `hidden` on the rows and sections that
// change, in the next animation frame (several keys in one frame are one pass).
let inGroup = new Map();    // server id -> Set of its groups (the "Group" select)
let indexed = null;         // the document hay/inGroup were built from (built when a filter is first used)
function indexFilter() {
  indexed = null;  // built on the first filter pass that needs it: the overview of 10,000 servers draws without it
}
function ensureIndex() {
  if (indexed === doc) return;
  indexed = doc;
  hay = new Map();
  inGroup = new Map(doc.servers.map((s) => [s.id, new Set(s.groups || [])]));
  for (const s of doc.servers) {
    const parts = [s.name, s.models || "", s.state, (s.groups || []).join(" ")];
    for (const g of s.gpus) for (const p of g[10]) { if (p[1]) parts.push(p[1]); if (p[2]) parts.push(p[2]); }
    hay.set(s.id, parts.join(" ").toLowerCase());
  }
}

function applyFilter(force = false) {
  if (!doc) return;
  const text = document.getElementById("filter").value.trim().toLowerCase();
  const only = chosenGroup();
  const key = text + "\u0001" + only;
  if (!force && key === filterText) return;
  filterText = key;
  if (text || only) ensureIndex();
  const shown = (sid) => (text === "" || hay.get(sid).includes(text)) && (only === "" || inGroup.get(sid).has(only));
  // Rows to hide go at once; rows to show again go SHOW_CHUNK at a time in page order, the rest in
  // the next frames: clearing a narrow filter at 1,000 servers re-lays out every row, and the
  // first screenful (the filter sits above it) is painted without waiting for the rest.
  // A section with no match is hidden whole; its rows are left as they are until it shows again.
  const reveal = [];
  for (const sec of sections) {
    if (!sec.flat) {
      let n = sec.servers.length;
      if (text || only) { n = 0; for (const s of sec.servers) if (shown(s.id)) n++; }
      const hide = (text !== "" || only !== "") && n === 0;
      sec.match.textContent = text || only ? n + " match" + (n === 1 ? "" : "es") : "";
      if (hide) { if (!sec.el.hidden) sec.el.hidden = true; continue; }
      if (sec.el.hidden) {  // shown again: its rows are set while it is still hidden, then it is revealed whole
        for (const r of sec.rows) { const h = !shown(r.sid); if (r.row.hidden !== h) r.row.hidden = h; }
        reveal.push({ el: sec.el, weight: sec.el.open ? n : 1 });
        continue;
      }
    }
    for (const r of sec.rows) {
      if (!shown(r.sid)) { if (!r.row.hidden) r.row.hidden = true; }
      else if (r.row.hidden) reveal.push({ el: r.row, weight: 1 });
    }
  }
  revealRows(reveal, ++revealGeneration);
}

const SHOW_CHUNK = 120;     // rows un-hidden per animation frame
let revealGeneration = 0;  // a newer filter pass cancels the rows an older one still had to show
function revealRows(items, generation, from = 0) {
  // items: [{el: a row or a section, weight: rows it brings back}], in page order.
  if (generation !== revealGeneration) return;
  let i = from, budget = SHOW_CHUNK;
  while (i < items.length && (budget > 0 || i === from)) { items[i].el.hidden = false; budget -= items[i].weight; i++; }
  if (i < items.length) requestAnimationFrame(() => revealRows(items, generation, i));
}

function scheduleFilter() {
  if (filterFrame) return;
  filterFrame = requestAnimationFrame(() => { filterFrame = 0; applyFilter(); });
}
function gpuMatches(g, kind, value) {
  // As in the who panel: hosts that do not report now (and lost GPUs) hold nothing now.
  if (g[2] === "offline" || g[2] === "stale" || g[2] === "lost") return false;
  return g[10].some((p) => (kind === "user" ? str(p[1]) === value : str(p[2]) === value));
}

function applyFilterAndHighlight() {
  applyFilter(true);
  applyHighlight();
}

function applyHighlight() {
  if (!doc) return;
  const grid = document.getElementById("grid");
  let lit = 0;
  for (const s of scoped().servers) s.gpus.forEach((g) => { if (highlight !== null && gpuMatches(g, highlight.kind, highlight.value)) lit++; });
  const byId = new Map(doc.servers.map((s) => [s.id, s]));
  for (const r of rowEls.values()) {
    const s = byId.get(r.sid);
    s.gpus.forEach((g, i) => r.cells[i].classList.toggle("hl", highlight !== null && gpuMatches(g, highlight.kind, highlight.value)));
  }
  grid.classList.toggle("highlighting", highlight !== null);
  const pill = document.getElementById("highlight");
  pill.hidden = highlight === null;
  if (highlight) document.getElementById("highlight-text").textContent =
    (highlight.kind === "user" ? "User " : "Container ") + highlight.value + ": " + lit + " GPU" + (lit === 1 ? "" : "s");
  for (const tr of document.querySelectorAll("#who-body tr")) {
    tr.classList.toggle("selected", highlight !== null && highlight.kind === "user" && tr.dataset.user === highlight.value);
  }
}

function setHighlight(kind, value) {
  highlight = highlight && highlight.kind === kind && highlight.value === value ? null : { kind, value };
  applyFilterAndHighlight();
  if (highlight) {
    const first = document.querySelector("#grid .cell.hl");
    if (first && first.getBoundingClientRect().top > window.innerHeight) first.scrollIntoView({ block: "center" });
  }
}

// ---- the chosen host group scopes every panel -------------------------------------------
// With a group chosen ("Group" select, ?group=), the summary counts, the problems, "Using GPUs now"
// and "Idle holders" are the group's, not the viewer's whole scope: they are computed here from the
// fleet document's servers (their cells and processes), as server_monitor/serving/fleet.py computes
// the document's own `who` and `counts`. Once per document and group (a few ms at 1,000 servers).
let scopeCache = { doc: null, group: null, view: null };
function scoped() {
  const only = chosenGroup();
  if (!only) return { group: "", servers: doc.servers, ids: null, who: doc.who, problems: doc.problems, counts: doc.counts };
  if (scopeCache.doc === doc && scopeCache.group === only) return scopeCache.view;
  const servers = doc.servers.filter((s) => (s.groups || []).includes(only));
  const ids = new Set(servers.map((s) => s.id));
  const cs = {}, cg = {}, who = new Map();  // who: user -> [GPUs, MiB, hosts, idle GPUs, containers]
  for (const s of servers) {
    cs[s.state] = (cs[s.state] || 0) + 1;
    const mine = new Map();  // this server's users -> [GPUs, MiB, idle GPUs, containers]
    for (const g of s.gpus) {
      cg[g[2]] = (cg[g[2]] || 0) + 1;
      if (g[2] === "offline" || g[2] === "stale" || g[2] === "lost") continue;  // holds nothing now
      const seen = new Set();
      for (const p of g[10]) {
        const user = str(p[1]), container = str(p[2]);
        let e = mine.get(user);
        if (!e) mine.set(user, e = [0, 0, 0, new Set()]);
        e[1] += p[3] || 0;
        if (!seen.has(user)) { seen.add(user); e[0]++; e[2] += g[2] === "idle"; }
        if (container !== null) e[3].add(container);
      }
    }
    for (const [user, [n, mib, idle, containers]] of mine) {
      let e = who.get(user);
      if (!e) who.set(user, e = [0, 0, 0, 0, new Set()]);
      e[0] += n; e[1] += mib; e[2]++; e[3] += idle;
      for (const c of containers) e[4].add(c);
    }
  }
  const whoList = [...who].map(([user, e]) => ({ user, gpus: e[0], mib: e[1], hosts: e[2], idle: e[3], containers: [...e[4]].sort() }))
    .sort((a, b) => b.gpus - a.gpus || b.mib - a.mib || (a.user || "").localeCompare(b.user || ""));
  const view = { group: only, servers, ids, who: whoList, problems: doc.problems.filter((p) => ids.has(p.server_id)),
    counts: { servers: cs, gpus: cg } };
  scopeCache = { doc, group: only, view };
  return view;
}
const inScopeText = (view) => (view.group ? " in " + view.group : "");

function renderScoped() {
  renderSummary();
  renderProblems();
  renderWho();
  renderIdle();
  applyHighlight();
}

// ---- who is using GPUs now -----------------------------------------------------------
function renderWho() {
  const body = document.getElementById("who-body");
  const note = document.getElementById("who-note");
  const text = document.getElementById("who-filter").value.trim().toLowerCase();
  if (!doc.processes) {
    body.replaceChildren();
    note.textContent = "Your account does not show GPU processes or users.";
    return;
  }
  const view = scoped(), all = view.who;
  const rows = all.filter((w) => !text || (w.user || "").toLowerCase().includes(text) ||
    w.containers.some((c) => c.toLowerCase().includes(text)));
  body.replaceChildren(...rows.map((w) => {
    const user = w.user === null ? "(unknown)" : w.user;
    // The name links to the user's page like every holder name (userLink); the ◎ button beside it
    // highlights their GPUs in the grid.
    const button = h("button", { type: "button", class: "link-button who-user", dataset: { user },
      title: "Highlight the GPUs of " + user, "aria-label": "Highlight the GPUs of " + user }, "◎");
    const containers = w.containers.length ? h("div", { class: "who-containers" }, w.containers.slice(0, 4).map((c) =>
      h("button", { type: "button", class: "chip", dataset: { container: c }, title: "Highlight the GPUs of " + c }, c)),
    w.containers.length > 4 ? h("span", { class: "muted" }, " +" + (w.containers.length - 4)) : null) : null;
    const name = w.user === null ? h("span", { class: "who-unknown" }, user)
      : userLink(w.user, undefined, { class: "user-link who-page", title: "GPUs, GPU-hours and jobs of " + user });
    return h("tr", { dataset: { user } },
      h("td", { class: "who-name" }, name, " ", button, containers),
      h("td", { class: "num" }, String(w.gpus)),
      h("td", { class: "num" }, fmtMiB(w.mib)),
      h("td", { class: "num" }, String(w.hosts)),
      h("td", { class: "num" + (w.idle ? " warn-text" : "") }, w.idle ? String(w.idle) : "–"));
  }));
  note.textContent = all.length ? (rows.length < all.length ? rows.length + " of " + all.length : String(all.length)) + (all.length === 1 ? " user" : " users") + inScopeText(view) +
    " · a name opens the user's page; ◎ or a container highlights their GPUs" : "Nobody holds a GPU" + inScopeText(view) + " right now.";
}

// ---- idle holders: GPUs held at ~0 % for hours, by whom and for how long -----------------
// Rows of the idle_holders canned query (README: "Idle holders"); its thresholds are the hub's
// features.idle_* settings. A GPU whose utilization is not reported (MIG, [N/A]) is never in it.
let idleRows = [];
let idleFetchedAt = 0;     // Date.now() of the last idle_holders answer
// Idle runs last hours and the durations advance on the client (idle_since): the list is asked
// for every IDLE_REFRESH_S, not with every grid refresh (its streak search reads up to 48 h of
// samples per candidate GPU, the heaviest query of the page on a 1,000-server fleet).
const IDLE_REFRESH_S = 300;

function idleGroups(rows) {
  // One line per holder and server: GPUs idle since about the same time (10 min) together,
  // so a user idling a whole 8-GPU node is one line, "GPU 0, 1, 2, 3, 4, 5, 6, 7".
  const groups = new Map();
  for (const r of rows) {
    const key = r.users + "\u0000" + r.server_id + "\u0000" + Math.round(r.idle_since / 600);
    const g = groups.get(key);
    if (g) {
      g.gpus.push(r.gpu_index); g.held += r.held_mib || 0; g.since = Math.min(g.since, r.idle_since);
      for (const n of String(r.nudged || "").split(",").filter(Boolean)) g.nudged.add(n);
      g.nudgedAt = Math.max(g.nudgedAt, r.nudged_at || 0);
    } else groups.set(key, { users: r.users, server_id: r.server_id, server: r.server, gpus: [r.gpu_index], held: r.held_mib || 0, since: r.idle_since,
      nudged: new Set(String(r.nudged || "").split(",").filter(Boolean)), nudgedAt: r.nudged_at || 0 });
  }
  return [...groups.values()].sort((a, b) => a.since - b.since);
}

// The panel's rule and the nudges' quiet hours come from the page (#idle data-*, sm_pages.py
// idle_settings): one threshold for the panel and the nudges (config idle_hours).
function idleHoursText(hours) {
  return hours >= 1 ? (Math.round(hours * 10) / 10) + " h" : Math.round(hours * 60) + " min";
}
function idleZones(box) {
  // {holder (lower case): IANA time zone} of the holders' contacts (sm_pages.py holder_zones).
  try { return JSON.parse(box.dataset.zones || "{}") || {}; } catch (e) { return {}; }
}
function idleFailures(box, holders, nudgedAt) {
  // "nudge to bob failed 5m ago": holders whose last nudge failed on every contact target after
  // the last nudge that arrived (sm_pages.py holder_nudge_failures; /admin → Delivery failures).
  let failed = {};
  try { failed = JSON.parse(box.dataset.failed || "{}") || {}; } catch (e) { failed = {}; }
  const notes = [];
  for (const name of holders) {
    const at = failed[String(name).toLowerCase()];
    if (at && at > nudgedAt) notes.push("nudge to " + name + " failed " + fmtAge(nowHub() - at) + " ago");
  }
  return notes.join("; ");
}
function quietHour(hour, start, end) {
  return start < end ? hour >= start && hour < end : hour >= start || hour < end;
}
function idleQuietNote(box) {
  // "nudges held for quiet hours until 07:00 (hub time)" while the hub's local hour is quiet;
  // holders with their own time zone follow their clock instead (idleHolderQuiet).
  const d = box.dataset;
  if (d.nudges !== "1" || d.quietStart === undefined) return "";
  const start = Number(d.quietStart), end = Number(d.quietEnd);
  const hour = new Date((nowHub() + Number(d.utcOffset || 0)) * 1000).getUTCHours();
  const others = Object.keys(idleZones(box)).length ? " for holders without a time zone" : "";
  return quietHour(hour, start, end) ? " · nudges held for quiet hours until " + String(end).padStart(2, "0") + ":00 (hub time)" + others : "";
}
function idleHolderQuiet(box, holders) {
  // Per holder with a time zone, in quiet hours on their own clock: "held until 07:00 Europe/Zurich".
  const d = box.dataset;
  if (d.nudges !== "1" || d.quietStart === undefined) return "";
  const start = Number(d.quietStart), end = Number(d.quietEnd), zones = idleZones(box), notes = [];
  for (const name of holders) {
    const zone = zones[String(name).toLowerCase()];
    if (!zone) continue;
    let hour;
    try {
      hour = Number(new Intl.DateTimeFormat("en-GB", { timeZone: zone, hour: "numeric", hourCycle: "h23" }).format(new Date(nowHub() * 1000)));
    } catch (e) { continue; }
    if (quietHour(hour, start, end)) notes.push(name + ": held until " + String(end).padStart(2, "0") + ":00 " + zone);
  }
  return notes.join("; ");
}

function renderIdle() {
  const box = document.getElementById("idle");
  const body = document.getElementById("idle-body");
  if (!doc) { box.hidden = true; body.replaceChildren(); return; }
  // A chosen host group scopes the panel (scoped(): the group's servers only).
  const view = scoped();
  const rows = view.ids ? idleRows.filter((r) => view.ids.has(r.server_id)) : idleRows;
  // Never hidden once the fleet is loaded: the toolbar's "Idle holders" link always lands here.
  const rule = idleHoursText(Number(box.dataset.hours || 2)) + " or more";
  const table = document.getElementById("idle-table");
  if (!rows.length) {
    body.replaceChildren();
    table.hidden = true;
    document.getElementById("idle-note").textContent = "No GPU" + inScopeText(view) + " held idle (" + (box.dataset.minMib || "?") +
      " MiB or more at under " + (box.dataset.maxUtil || "?") + " % utilization) for " + rule + " right now" +
      idleQuietNote(box) + ".";
    box.hidden = false;
    return;
  }
  table.hidden = false;
  body.replaceChildren(...idleGroups(rows).map((g) => {
    // users: group_concat of the holders' names (idle_holders), each linked to its page.
    const holders = g.users === null || g.users === undefined ? (doc.processes ? "(unknown)" : "hidden")
      : userLinks(String(g.users).split(","));
    const gpus = g.gpus.sort((a, b) => a - b);
    const held = g.users ? idleHolderQuiet(box, String(g.users).split(",")) : "";
    const failed = g.users ? idleFailures(box, String(g.users).split(","), g.nudgedAt) : "";
    return h("tr", { dataset: { server: String(g.server_id) } },
      h("td", { class: "idle-user" }, holders),
      h("td", {}, h("button", { type: "button", class: "link-button", dataset: { open: String(g.server_id) } },
        shortName(String(g.server)) + " · GPU" + (gpus.length > 1 ? "s " : " ") + gpus.join(", "))),
      h("td", { class: "num" }, gib(g.held)),
      h("td", { class: "num warn-text idle-for", title: "since " + clock(g.since) }, fmtAge(nowHub() - g.since)),
      // Who the hub nudged about this idle run, and when last (jobs/nudge.py; docs/operations.md).
      h("td", { class: "idle-nudged", title: g.nudgedAt ? "last nudge " + clock(g.nudgedAt) : "" },
        g.nudged.size ? [...userLinks([...g.nudged]), " · " + fmtAge(nowHub() - g.nudgedAt) + " ago"] : (failed ? "" : "–"),
        failed ? h("span", { class: "warn-text idle-failed", title: "see /admin → Delivery failures" }, (g.nudged.size ? " · " : "") + failed) : null,
        held ? h("span", { class: "muted idle-held" }, " · " + held) : null));
  }));
  document.getElementById("idle-note").textContent = rows.length + " GPU" + (rows.length === 1 ? "" : "s") +
    inScopeText(view) + " held at near 0 % utilization for " + rule + idleQuietNote(box) + " · click a server to open it";
  box.hidden = false;
}

// ---- problems first ------------------------------------------------------------------
function problemText(p) {
  const age = fmtAge(nowHub() - p.since);
  const server = p.server || "?";
  switch (p.rule) {
    case "host_offline": return server + ": offline for " + age + " (last report " + clock(p.since) + ")";
    case "gpu_lost": return p.message.replace(/ is missing from the latest report$/, " lost") + " · for " + age;
    default: return p.message + " · since " + clock(p.since) + " (" + age + ")";
  }
}

function problemRow(p, admin) {
  const state = [];
  if (p.acked_by) state.push("acknowledged by " + p.acked_by + " " + clock(p.acked_at) + (p.ack_note ? ": " + p.ack_note : ""));
  if (p.silenced_until) state.push("silenced until " + clock(p.silenced_until));
  const row = h("li", { class: "problem sev-" + p.severity + (p.acked_by || p.silenced_until ? " quiet" : ""), dataset: { alert: String(p.id) } },
    h("span", { class: "sev", "aria-hidden": "true" }, p.severity === "critical" ? "▲" : "◆"),
    h("span", { class: "visually-hidden" }, p.severity + ": "),
    h("span", { class: "problem-rule" }, RULE_TEXT[p.rule] || p.rule),
    h("button", { type: "button", class: "link-button problem-text", dataset: { open: String(p.server_id) } }, problemText(p)),
    state.length ? h("span", { class: "problem-state" }, state.join(" · ")) : null,
    admin ? h("span", { class: "problem-actions" },
      p.acked_by ? null : h("button", { type: "button", class: "small", dataset: { ack: String(p.id) } }, "Acknowledge"),
      h("button", { type: "button", class: "small", dataset: { silence: String(p.id) } }, "Silence…")) : null);
  return row;
}

function renderProblems() {
  const box = document.getElementById("problems");
  const admin = document.body.dataset.role === "admin";
  if (box.querySelector("form")) return;  // an admin is typing a note: do not replace the form
  const view = scoped(), list = view.problems;
  if (!list.length) { box.replaceChildren(); return; }
  const limit = showAllProblems ? list.length : 4;
  const open = list.filter((p) => !p.acked_by && !p.silenced_until).length;
  fill(box,
    h("h2", { class: "problems-title" }, list.length + " problem" + (list.length === 1 ? "" : "s") + inScopeText(view) +
      (open < list.length ? " (" + (list.length - open) + " acknowledged or silenced)" : "")),
    h("ul", { class: "problem-list" }, list.slice(0, limit).map((p) => problemRow(p, admin))),
    list.length > 4 ? h("button", { type: "button", class: "link-button", id: "problems-more" },
      showAllProblems ? "Show fewer" : "Show all " + list.length + " problems") : null);
}

async function apiWrite(method, path, body) {
  const response = await fetch(path, { method, credentials: "same-origin", headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) {
    let msg = "HTTP " + response.status;
    try { msg = (await response.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return response.json();
}

function problemForm(li, p, kind) {
  const note = h("input", { type: "text", maxLength: 500, placeholder: "note (optional)", class: "note-input", "aria-label": "Note" });
  const parts = [note];
  let duration = null;
  let what = null;
  if (kind === "silence") {
    duration = h("select", { "aria-label": "For how long" }, [["60", "1 h"], ["240", "4 h"], ["1440", "1 day"], ["10080", "1 week"]].map(([v, t]) => h("option", { value: v }, t)));
    what = h("select", { "aria-label": "What to silence" },
      h("option", { value: "host" }, "this server, every rule"),
      h("option", { value: "rule" }, "this rule on every server"),
      h("option", { value: "both" }, "this rule on this server"));
    parts.unshift(what, duration);
  }
  const status = h("span", { class: "muted", role: "status" });
  const form = h("form", { class: "problem-form" }, parts,
    h("button", { type: "submit", class: "small" }, kind === "ack" ? "Acknowledge" : "Silence"),
    h("button", { type: "button", class: "small link-button", dataset: { cancel: "1" } }, "Cancel"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      if (kind === "ack") await apiWrite("POST", "/api/alerts/" + p.id + "/ack", { note: note.value });
      else {
        const body = { minutes: Number(duration.value), note: note.value, server_id: null, rule: null };
        if (what.value !== "rule") body.server_id = p.server_id;
        if (what.value !== "host") body.rule = p.rule;
        await apiWrite("POST", "/api/silences", body);
      }
      form.remove();
      etag = null;
      wantFresh = true;
      refresh();
    } catch (e) { status.textContent = "Failed: " + e.message; }
  });
  form.querySelector("[data-cancel]").addEventListener("click", () => { form.remove(); renderProblems(); });
  li.append(form);
  note.focus();
}

// ---- tooltip -------------------------------------------------------------------------
function gpuFromCell(el) {
  const s = doc.servers.find((x) => String(x.id) === el.dataset.s);
  return s ? [s, s.gpus[Number(el.dataset.i)]] : [null, null];
}

function showTip(el) {
  const [s, g] = gpuFromCell(el);
  if (!g) return;
  const [, index, state, util, memUsed, memTotal, temp, power, bus, model, procs, vendor] = g;
  const tip = document.getElementById("tip");
  const old = s.state === "offline" || s.state === "stale";
  fill(tip, [
    h("div", { class: "tip-head" }, s.name + " · GPU " + (index === null ? "?" : index)),
    h("div", { class: "muted" }, VENDOR_LABEL[vendor] ? h("span", { class: "badge badge-vendor" }, VENDOR_LABEL[vendor]) : null,
      (VENDOR_LABEL[vendor] ? " " : "") + [str(model) || s.model, bus].filter(Boolean).join(" · ")),
    h("div", { class: "tip-state s-" + state }, STATE_WORD[state] + (old ? " — last seen " + fmtAge(nowHub() - s.last_seen) + " ago, values from then" : "")),
    slurmText(g) ? h("div", { class: "tip-slurm" }, slurmText(g) + (state === "alloc" ? " — allocated, no process yet" : "")) : null,
    healthText(g) ? h("div", { class: "tip-health hl-" + (g[F_HEALTH] || "info") },
      (HEALTH_GLYPH[g[F_HEALTH]] || "ⓘ") + " " + healthText(g)) : null,
    g[F_MIG] && g[F_MIG].length ? h("ul", { class: "tip-mig" }, g[F_MIG].map((m) => h("li", {}, migLabel(m, procs)))) : null,
    state === "lost" ? null : h("div", {}, "utilization " + fmtPct(util) + " · VRAM " + fmtMiB(memUsed) + " / " + fmtMiB(memTotal) +
      " · " + (temp === null ? "–" : temp + " °C") + " · " + (power === null ? "–" : power + " W")),
    procs.length ? h("table", { class: "tip-procs" },
      h("thead", {}, h("tr", {}, ["User", "Container / job", "PID", "Process", "VRAM"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, procs.slice(0, 12).map((p) => h("tr", {},
        h("td", {}, str(p[1]) || "?"), h("td", {}, str(p[2]) || "host"), h("td", { class: "num" }, p[0] === null ? (isAllocation(p) ? "–" : "?") : String(p[0])),
        h("td", { class: "tip-pname" }, isAllocation(p) ? "allocated, no process yet" : str(p[4]) || "?"), h("td", { class: "num" }, fmtMiB(p[3])))))) :
      h("div", { class: "muted" }, doc.processes ? (state === "lost" ? "" : "no compute process") : "processes are hidden for your account"),
    procs.length > 12 ? h("div", { class: "muted" }, "+" + (procs.length - 12) + " more processes") : null,
    h("div", { class: "muted tip-hint" }, "click: open " + s.name)]);
  tip.hidden = false;
  const rect = el.getBoundingClientRect();
  const width = Math.min(560, window.innerWidth - 16);
  tip.style.setProperty("width", width + "px");
  let left = Math.min(Math.max(8, rect.left), window.innerWidth - width - 8);
  let top = rect.bottom + 6;
  const height = tip.offsetHeight;
  if (top + height > window.innerHeight - 8) top = Math.max(8, rect.top - height - 6);
  tip.style.setProperty("left", left + "px");
  tip.style.setProperty("top", top + "px");
}

function hideTip() { document.getElementById("tip").hidden = true; }

// ---- server detail on demand ----------------------------------------------------------
function bar(label, value, text, warn = 80, crit = 95) {
  const v = value === null || value === undefined ? null : Math.max(0, Math.min(100, value));
  return h("div", { class: "bar-row" },
    h("span", { class: "bar-label" }, label),
    h("span", { class: "bar", role: "meter", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100,
                "aria-valuenow": v === null ? 0 : Math.round(v), "aria-valuetext": text },
      h("span", { class: "bar-fill level-" + level(v, warn, crit), style: { width: (v || 0) + "%" } })),
    h("span", { class: "bar-text" }, text));
}

function gpuErrorText(server) {
  if (!server.gpu_state || server.gpu_state === "ok" || server.gpu_state === "not_installed") return null;
  if (server.gpu_state === "gpu_lost") {
    let lost = [];
    try { lost = JSON.parse(server.gpu_lost || "[]"); } catch (e) { lost = []; }
    const ids = lost.map((l) => l["pci.bus_id"]).filter(Boolean);
    return ids.length ? ids.map((id) => "GPU " + id + " lost").join(", ") : "a GPU is lost";
  }
  const base = GPU_STATE_TEXT[server.gpu_state] || server.gpu_state;
  return server.gpu_message ? base + ": " + server.gpu_message : base;
}

// ---- GPU health in the server panel (gpus canned query fields) -------------------------
const num = (v) => (v === null || v === undefined ? "–" : String(v));
const modeName = (v) => (v === null || v === undefined ? "–" : v ? "Enabled" : "Disabled");  // nvidia-smi's words
const yesNo = (v) => (v === null || v === undefined ? "–" : v ? "yes" : "no");

// Throttle hours in words: "4 h", "1.5 h", "15 min" (under an hour), "< 1 min".
function fmtThrottleHours(hours) {
  if (hours >= 1) return (Math.round(hours * 10) / 10) + " h";
  const minutes = Math.round(hours * 60);
  return minutes >= 1 ? minutes + " min" : "< 1 min";
}

// The start of the viewer's local day (epoch s), so "today" follows the viewer's clock.
function localDayStart() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return Math.floor(d.getTime() / 1000);
}

function healthFacts(gpu) {
  // [label, text, level] rows; null values read "–" (the driver does not report them).
  const rows = [];
  const ecc = gpu.ecc_mode === null || gpu.ecc_mode === undefined ? "–" : gpu.ecc_mode ? "enabled" : "disabled";
  rows.push(["ECC", ecc + " · volatile " + num(gpu.ecc_errors_corrected_volatile_total) + " corrected / " +
    num(gpu.ecc_errors_uncorrected_volatile_total) + " uncorrected · aggregate " + num(gpu.ecc_errors_corrected_aggregate_total) +
    " corrected / " + num(gpu.ecc_errors_uncorrected_aggregate_total) + " uncorrected",
    gpu.ecc_errors_uncorrected_volatile_total ? "crit" : ""]);
  if (gpu.retired_pages_sbe !== null || gpu.retired_pages_dbe !== null || gpu.retired_pages_pending)
    rows.push(["Retired pages", num(gpu.retired_pages_sbe) + " single-bit · " + num(gpu.retired_pages_dbe) + " double-bit · pending " +
      yesNo(gpu.retired_pages_pending), gpu.retired_pages_pending ? "crit" : ""]);
  rows.push(["Remapped rows", num(gpu.remapped_rows_correctable) + " correctable · " + num(gpu.remapped_rows_uncorrectable) +
    " uncorrectable · pending " + yesNo(gpu.remapped_rows_pending) + " · failure " + yesNo(gpu.remapped_rows_failure) +
    (gpu.remapped_rows_failure ? " (RMA)" : ""), gpu.remapped_rows_failure || gpu.remapped_rows_pending ? "crit" : ""]);
  const reasons = gpu.clocks_event_reasons ? gpu.clocks_event_reasons.split(",").map((r) => THROTTLE_TEXT[r] || r) : [];
  const counters = [];
  if (gpu.power_capped_h) counters.push("power capped " + gpu.power_capped_h + " h");
  if (gpu.thermal_slowdown_h) counters.push("thermal slowdown " + gpu.thermal_slowdown_h + " h");
  // Today (the viewer's local day, sent as day_start; from the GPU's first sample of that day).
  const today = [];
  if (gpu.power_capped_today_h) today.push("power capped " + fmtThrottleHours(gpu.power_capped_today_h) + " today");
  if (gpu.thermal_slowdown_today_h) today.push("thermal slowdown " + fmtThrottleHours(gpu.thermal_slowdown_today_h) + " today");
  rows.push(["Throttle", (reasons.length ? reasons.join(", ") : "none now") +
    (today.length ? " · " + today.join(", ") + " (since 00:00 your time)" : "") +
    (counters.length ? " · " + counters.join(", ") + " since driver load" : ""),
    /HW |thermal|brake/.test(reasons.join(" ")) ? "warn" : ""]);
  const gen = gpu.pcie_link_gen_current, genMax = gpu.pcie_link_gen_max;
  const width = gpu.pcie_link_width_current, widthMax = gpu.pcie_link_width_max;
  if (gen !== null || width !== null) {
    const below = (gen && genMax && gen < genMax) || (width && widthMax && width < widthMax);
    rows.push(["PCIe", "gen " + num(gen) + " of " + num(genMax) + " · x" + num(width) + " of x" + num(widthMax) +
      (below ? (gpu.busy ? " — degraded while busy" : " (idle GPUs lower the link)") : ""), below && gpu.busy ? "warn" : ""]);
  }
  if (gpu.utilization_encoder !== null || gpu.utilization_decoder !== null)
    rows.push(["Video engines", "encoder " + fmtPct(gpu.utilization_encoder) + " · decoder " + fmtPct(gpu.utilization_decoder) +
      (gpu.encoder_sessions ? " · " + gpu.encoder_sessions + " encoder sessions" : ""), ""]);
  if (gpu.temperature_gpu_tlimit_c !== null && gpu.temperature_gpu_tlimit_c !== undefined)
    rows.push(["Slowdown headroom", gpu.temperature_gpu_tlimit_c + " °C below the slowdown temperature (temperature.gpu.tlimit)",
      gpu.temperature_gpu_tlimit_c < 5 ? "warn" : ""]);
  // MIG mode by nvidia-smi's names, and a change that waits for a GPU reset (mig.mode.pending).
  if (gpu.mig_mode !== null && gpu.mig_mode !== undefined) {
    const pending = gpu.mig_mode_pending !== null && gpu.mig_mode_pending !== undefined && Boolean(gpu.mig_mode_pending) !== Boolean(gpu.mig_mode);
    rows.push(["MIG mode", modeName(gpu.mig_mode) + (pending ? " · MIG mode change pending (" + modeName(gpu.mig_mode) + " → " +
      modeName(gpu.mig_mode_pending) + " after GPU reset)" : ""), pending ? "warn" : ""]);
  }
  if (gpu.ecc_mode_pending !== null && gpu.ecc_mode_pending !== undefined && gpu.ecc_mode !== null && gpu.ecc_mode !== undefined &&
      Boolean(gpu.ecc_mode_pending) !== Boolean(gpu.ecc_mode))
    rows.push(["ECC mode", "ECC mode change pending (" + modeName(gpu.ecc_mode) + " → " + modeName(gpu.ecc_mode_pending) + " after reboot)", "warn"]);
  if (gpu.xid_last !== null && gpu.xid_last !== undefined)
    rows.push(["Last XID", gpu.xid_last + (gpu.xid_last_ts ? " at " + fmtLocalTime(gpu.xid_last_ts) : ""), ""]);
  return rows;
}

function healthSection(gpu) {
  const level = gpu.health && gpu.health !== "ok" ? gpu.health : null;
  return h("details", { class: "gpu-health", open: Boolean(level) },
    h("summary", {}, level ? h("span", { class: "badge badge-health hb-" + level }, HEALTH_GLYPH[level] + " " + level) :
      h("span", { class: "badge badge-ok" }, "✓ healthy"),
      level && gpu.health_reasons ? h("span", { class: "health-reasons" }, " " + throttleWords(gpu.health_reasons)) : " Health"),
    h("dl", { class: "health-facts" }, healthFacts(gpu).flatMap(([label, text, lvl]) => [
      h("dt", {}, label), h("dd", { class: lvl ? "level-" + lvl : null }, text)])));
}

function xidSection(events) {
  if (!events) return h("p", { class: "muted xid-none" }, "XID errors could not be loaded.");
  if (!events.length) return h("p", { class: "muted xid-none" }, "No XID error in the last 7 days.");
  const shown = events.slice(0, 50);
  return h("section", { class: "xids", "aria-label": "Recent XID errors" },
    h("h3", {}, "XID errors, last 7 days (" + events.length + ")"),
    h("table", { class: "procs xid-table" },
      h("thead", {}, h("tr", {}, ["Time", "GPU", "XID", "Name", "Kernel message"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, shown.map((e) => h("tr", { class: e.critical ? "xid-crit" : null },
        h("td", { title: fmtLocalTime(e.ts) }, clock(e.ts)),
        h("td", {}, e.gpu_index !== null ? "GPU " + e.gpu_index : e.pci_bus_id || "?"),
        h("td", { class: "num" }, (e.critical ? "✖ " : "") + e.xid),
        h("td", {}, e.name || "–"),
        h("td", { class: "xid-msg", title: e.message || "" }, e.message || ""))))),
    events.length > shown.length ? h("p", { class: "muted" }, "+" + (events.length - shown.length) + " older, see the xid_events query") : null);
}

function gpuRow(gpu) {
  const mig = gpu.mig_mode === 1;
  const procs = gpu.processes.slice().sort((a, b) => (b.used_gpu_memory_mib || 0) - (a.used_gpu_memory_mib || 0));
  const memPct = pct(gpu.memory_used_mib, gpu.memory_total_mib);
  const powerPct = pct(gpu.power_draw_w, gpu.power_limit_w);
  return h("div", { class: "gpu" + (gpu.present ? "" : " gpu-missing"), dataset: { gpuId: String(gpu.gpu_id) } },
    h("div", { class: "gpu-head" },
      h("span", { class: "gpu-index" }, "GPU " + gpu.gpu_index),
      VENDOR_LABEL[gpu.vendor] ? h("span", { class: "badge badge-vendor", title: "read from the kernel (sysfs, DRM fdinfo)" }, VENDOR_LABEL[gpu.vendor]) : null,
      h("span", { class: "gpu-name" }, gpu.name || "unknown GPU"),
      h("span", { class: "gpu-bus" }, gpu.pci_bus_id || ""),
      gpu.present ? null : h("span", { class: "badge badge-crit" }, "✕ lost: missing from the latest report"),
      gpu.admin_status && gpu.admin_status !== "active" ? h("span", { class: "badge badge-crit", title: gpu.status_note || "" }, gpu.admin_status + (gpu.status_note ? ": " + gpu.status_note : "")) : null,
      gpu.present ? (gpu.busy ? h("span", { class: "badge badge-busy" }, "busy") : h("span", { class: "badge badge-free" }, "free")) : null,
      gpu.health && gpu.health !== "ok" ? h("span", { class: "badge badge-health hb-" + gpu.health, title: throttleWords(gpu.health_reasons || "") },
        HEALTH_GLYPH[gpu.health] + " " + gpu.health) : null),
    h("div", { class: "gpu-metrics" },
      mig ? h("span", { class: "mig", title: "MIG mode: per-GPU utilization is not reported" }, "MIG")
        : bar("Utilization", gpu.utilization_gpu, fmtPct(gpu.utilization_gpu), 101, 101),
      bar("VRAM", memPct, fmtMiB(gpu.memory_used_mib) + " / " + fmtMiB(gpu.memory_total_mib), 90, 98),
      h("span", { class: "metric temp level-" + level(gpu.temperature_gpu_c, 80, 90), title: "temperature.gpu" },
        gpu.temperature_gpu_c === null ? "–" : gpu.temperature_gpu_c + " °C"),
      h("span", { class: "metric power level-" + level(powerPct, 90, 100), title: "power.draw / power.limit" },
        (gpu.power_draw_w === null ? "–" : Math.round(gpu.power_draw_w) + " W") + (gpu.power_limit_w ? " / " + Math.round(gpu.power_limit_w) + " W" : ""))),
    gpu.present ? healthSection(gpu) : null,
    procs.length ? h("table", { class: "procs" },
      h("thead", {}, h("tr", {}, ["User", "Container / job", "PID", "Process", "VRAM"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, procs.map((p) => h("tr", {},
        h("td", { class: "proc-user" }, p.user ? userLink(p.user) : (p.uid !== null ? String(p.uid) : "?")),
        h("td", { class: "proc-container" }, p.container ? (p.container_kind ? p.container_kind + ": " : "") + p.container : "host"),
        h("td", { class: "num" }, p.pid === null ? "?" : String(p.pid)),
        h("td", { class: "proc-name", title: p.process_name || "" }, p.process_name || "?"),
        h("td", { class: "num" }, fmtMiB(p.used_gpu_memory_mib)))))) : null);
}

function deleteButton(server) {
  // Two clicks (no window.confirm): the first arms the button, the second deletes.
  const button = h("button", { type: "button", class: "link-button danger" }, "Delete…");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Confirm delete of " + server.name;
      setTimeout(() => { button.dataset.armed = ""; button.textContent = "Delete…"; }, 5000);
      return;
    }
    const response = await fetch("/api/servers/" + Number(server.server_id), { method: "DELETE", credentials: "same-origin" });
    if (response.ok) { closeDetail(); etag = null; wantFresh = true; refresh(); }
    else button.textContent = "Delete failed (HTTP " + response.status + ")";
  });
  return button;
}

function containersTable(containers) {
  if (!containers.length) return null;
  return h("details", { class: "containers" },
    h("summary", {}, "Containers (" + containers.filter((c) => c.state === "Running").length + " running / " + containers.length + ")"),
    h("table", { class: "procs" },
      h("thead", {}, h("tr", {}, ["Name", "Project", "State", "Memory", "Disk", "CPU time", "IPv4"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, containers.map((c) => h("tr", {},
        h("td", {}, c.name), h("td", {}, c.project || ""), h("td", {}, c.state || ""),
        h("td", { class: "num" }, fmtBytes(c.memory_bytes)), h("td", { class: "num" }, fmtBytes(c.disk_bytes)),
        h("td", { class: "num" }, c.cpu_seconds === null ? "–" : fmtDuration(c.cpu_seconds)),
        h("td", {}, c.ipv4 || ""))))));
}

function probesLine(probes) {
  if (!probes.length) return null;
  return h("div", { class: "probes" }, probes.map((p) => h("span", { class: "probe " + (p.ok ? "probe-ok" : "probe-fail"), title: p.url + (p.error ? " — " + p.error : "") },
    (p.ok ? "✓ " : "✗ ") + p.name + (p.ok && p.latency_ms !== null ? " " + Math.round(p.latency_ms) + " ms" : p.status ? " HTTP " + p.status : " unreachable"))));
}

function serverSection(server, containers, probes, xids) {
  const err = gpuErrorText(server);
  const old = server.status === "offline" || server.status === "stale";
  const memPct = pct(server.memory_used_bytes, server.memory_total_bytes);
  const swapPct = pct(server.swap_used_bytes, server.swap_total_bytes);
  const notes = [];
  if (server.spool_depth) notes.push(server.spool_depth + " report(s) waiting in the agent's spool");
  if (server.spool_dropped) notes.push("agent dropped " + server.spool_dropped + " report(s) (spool full)");
  if (server.rejected_reports) notes.push("hub rejected " + server.rejected_reports + " report(s)");
  return h("article", { class: "server" + (old ? " is-old" : ""), id: "server-" + server.server_id, dataset: { serverId: String(server.server_id) } },
    h("header", { class: "server-head" },
      h("h2", {}, server.name),
      h("span", { class: "status status-" + server.status }, (SERVER_GLYPH[server.status] || "?") + " " + server.status),
      h("a", { class: "server-links", href: "/servers/" + Number(server.server_id) + "/history" }, "History"),
      document.body.dataset.role === "admin" ? deleteButton(server) : null),
    h("p", { class: old ? "last-seen old-banner" : "last-seen muted", title: "Last report received" },
      "last seen " + fmtAge(server.seen_age_s) + " ago · " + fmtLocalTime(server.last_seen) + (old ? " — the values below are from then, not live" : "")),
    err ? h("p", { class: "server-error", role: "alert" }, "▲ " + err) : null,
    server.status_note ? h("p", { class: "server-note" }, server.status_note) : null,
    notes.length ? h("p", { class: "server-note" }, notes.join(" · ")) : null,
    h("div", { class: "server-body" },
      h("div", { class: "host" },
        bar("CPU (" + (server.cpu_count || "?") + " cores)", server.cpu_percent, fmtPct(server.cpu_percent) + " · load " + (server.load_1 === null ? "–" : server.load_1.toFixed(2))),
        bar("Memory", memPct, fmtBytes(server.memory_used_bytes) + " / " + fmtBytes(server.memory_total_bytes)),
        server.swap_total_bytes ? bar("Swap", swapPct, fmtBytes(server.swap_used_bytes) + " / " + fmtBytes(server.swap_total_bytes)) : null,
        server.disks.map((d) => bar(d.mountpoint, d.used_percent, fmtBytes(d.used_bytes) + " / " + fmtBytes(d.total_bytes), 85, 95)),
        h("div", { class: "host-facts" },
          h("span", {}, "↓ " + fmtRate(server.net_rx_bps) + " ↑ " + fmtRate(server.net_tx_bps)),
          h("span", {}, "up " + fmtDuration(server.uptime_s)),
          h("span", {}, [server.os, server.kernel].filter(Boolean).join(" · ")),
          h("span", {}, "agent " + (server.agent_version || "?")),
          server.clock_skew_s && Math.abs(server.clock_skew_s) > 30 ? h("span", { class: "warn-text" }, "clock off by " + server.clock_skew_s + " s") : null),
        probesLine(probes),
        containersTable(containers)),
      h("div", { class: "gpus" },
        server.gpus.length ? server.gpus.map(gpuRow) :
          h("p", { class: "muted" }, server.gpu_state === "not_installed" ? "No NVIDIA GPU on this host." : "No GPU data."),
        server.gpus.some((g) => g.vendor === "nvidia") || (xids && xids.length) ? xidSection(xids) : null)));
}

async function openDetail(serverId, push = true) {
  openServer = Number(serverId);
  const panel = document.getElementById("detail");
  const body = document.getElementById("detail-body");
  panel.hidden = false;
  document.body.classList.add("detail-open");
  if (push && location.hash !== "#server-" + openServer) history.pushState(null, "", "#server-" + openServer);
  body.replaceChildren(h("p", { class: "muted" }, "loading…"));
  try {
    const response = await fetch("/api/servers/" + openServer + "?day_start=" + localDayStart(), { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const server = await response.json();
    const [containers, probes, xids] = await Promise.all([fetchQuery("containers"), fetchQuery("probes"),
      fetchQuery("xid_events", { server_id: String(server.server_id) }).catch(() => null)]);
    if (openServer !== server.server_id) return;
    body.replaceChildren(serverSection(server, containers.filter((c) => c.server_id === server.server_id),
      probes.filter((p) => p.server_id === server.server_id), xids && xids.filter((e) => e.server_id === server.server_id)));
    document.getElementById("detail-close").focus();
  } catch (e) {
    body.replaceChildren(h("p", { class: "load-error" }, "Could not load this server: " + e.message));
  }
}

function closeDetail(push = true) {
  openServer = null;
  document.getElementById("detail").hidden = true;
  document.getElementById("detail-body").replaceChildren();
  document.body.classList.remove("detail-open");
  if (push && location.hash) history.pushState(null, "", location.pathname + location.search);
}

function routeFromHash() {
  const m = /^#server-(\d+)$/.exec(location.hash);
  if (m) openDetail(m[1], false); else if (openServer !== null) closeDetail(false);
}

// ---- summary, fetch, refresh -----------------------------------------------------------
function renderSummary() {
  const view = scoped(), sc = view.counts.servers, gc = view.counts.gpus;
  const n = (o, k) => o[k] || 0;
  const busy = n(gc, "busy") + n(gc, "mig"), idle = n(gc, "idle"), free = n(gc, "free"), alloc = n(gc, "alloc");
  const broken = n(gc, "lost") + n(gc, "error");
  fill(document.getElementById("summary"),
    view.group ? h("span", { class: "sum sum-scope" }, view.group + ":") : null,
    h("span", { class: "sum sum-online" }, n(sc, "online") + " online"),
    n(sc, "offline") ? h("span", { class: "sum sum-offline" }, n(sc, "offline") + " offline") : null,
    n(sc, "error") + n(sc, "stale") ? h("span", { class: "sum sum-problems" }, (n(sc, "error") + n(sc, "stale")) + " with problems") : null,
    // One chip; on a phone it wraps between its parts ("9 broken" was cut off at 390 px).
    gpuChip(...[free + " free", busy + " busy", idle ? idle + " held idle" : null,
      alloc ? alloc + " allocated (Slurm)" : null, broken ? broken + " broken" : null].filter((part) => part !== null)));
}

function gpuChip(...parts) {
  // On a wide screen the chip may end in "…" (the top bar stays one line): its title says it all.
  return h("span", { class: "sum sum-gpus", title: "GPUs: " + parts.join(", ") },
    ...parts.flatMap((part, i) => (i ? [" · ", h("span", { class: "sum-part" }, part)] : [h("span", { class: "sum-part" }, part)])));
}

function renderAnnouncements() {
  document.getElementById("announcements").replaceChildren(...announcements.map((a) =>
    h("p", { class: "announcement announcement-" + a.level, role: a.level === "critical" ? "alert" : "status" },
      h("strong", {}, a.level + ": "), a.message)));
}

function render() {
  if (!doc) return;
  renderGrid();  // first: it fills the "Group" select that scopes the other panels
  renderSummary();
  renderProblems();
  renderWho();
  applyFilterAndHighlight();
}

async function fetchFleet() {
  const headers = { Accept: "application/json" };
  if (etag && doc) headers["If-None-Match"] = etag;
  // ?fresh=1 after this viewer changed something: the answer must show it (no reused document).
  const response = await fetch(wantFresh ? "/api/fleet?fresh=1" : "/api/fleet", { headers, credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(location.pathname)); throw new Error("login required"); }
  if (response.status === 304) return false;
  if (!response.ok) throw new Error("fleet: HTTP " + response.status);
  const body = await response.json();
  etag = response.headers.get("ETag");
  wantFresh = false;
  skew = body.generated_at - Date.now() / 1000;
  doc = body;
  return true;
}

async function refresh() {
  nextRefreshAt = Date.now() + REFRESH_S * 1000;
  const errorBox = document.getElementById("load-error");
  try {
    const idleDue = Date.now() - idleFetchedAt >= IDLE_REFRESH_S * 1000;
    const [changed, notes, idle] = await Promise.all([fetchFleet(), fetchQuery("announcements"),
      idleDue ? fetchQuery("idle_holders").catch(() => null) : null]);
    if (idle !== null) { idleRows = idle; idleFetchedAt = Date.now(); }
    lastUpdate = Date.now();
    errorBox.hidden = true;
    if (JSON.stringify(notes) !== JSON.stringify(announcements)) { announcements = notes; renderAnnouncements(); }
    if (changed) render();
    renderIdle();
    if (!changed) { renderSummary(); const byId = new Map(doc.servers.map((s) => [s.id, s])); for (const r of rowEls.values()) updateRowHead(r, byId.get(r.sid)); renderProblems(); }
  } catch (e) {
    errorBox.textContent = "Could not refresh: " + e.message + " (showing the last data)";
    errorBox.hidden = false;
  }
  tick();
}

function tick() {
  const el = document.getElementById("refresh-status");
  const left = Math.max(0, Math.ceil((nextRefreshAt - Date.now()) / 1000));
  const age = lastUpdate ? Math.round((Date.now() - lastUpdate) / 1000) : null;
  el.textContent = (age === null ? "loading…" : "updated " + age + " s ago") + (document.hidden ? " · paused" : " · next in " + left + " s");
}

document.addEventListener("DOMContentLoaded", () => {
  const grid = document.getElementById("grid");
  document.getElementById("filter").addEventListener("input", scheduleFilter);
  const keepInUrl = () => {  // the choice survives a reload and can be shared
    const params = new URLSearchParams(location.search);
    for (const [name, id] of [["group", "group-filter"], ["by", "group-by"]]) {
      const v = document.getElementById(id).value;
      if (v) params.set(name, v); else params.delete(name);
    }
    history.replaceState(history.state, "", location.pathname + (params.toString() ? "?" + params : "") + location.hash);
  };
  document.getElementById("group-filter").addEventListener("change", () => { keepInUrl(); applyFilter(true); renderScoped(); });
  document.getElementById("group-by").addEventListener("change", () => { keepInUrl(); renderGrid(); });
  document.getElementById("groups-toggle").addEventListener("click", () => {
    const open = !sections.some((sec) => !sec.flat && sec.el.open);
    for (const sec of sections) if (!sec.flat && !sec.el.hidden) sec.el.open = open;
  });
  document.getElementById("sort").addEventListener("change", renderGrid);
  document.getElementById("who-filter").addEventListener("input", () => { renderWho(); applyFilterAndHighlight(); });
  document.getElementById("highlight-clear").addEventListener("click", () => { highlight = null; applyFilterAndHighlight(); });
  document.getElementById("detail-close").addEventListener("click", () => closeDetail());
  grid.addEventListener("mouseover", (e) => { const c = e.target.closest(".cell"); if (c) showTip(c); });
  grid.addEventListener("mouseleave", hideTip);
  grid.addEventListener("focusin", (e) => { const c = e.target.closest(".cell"); if (c) showTip(c); else hideTip(); });
  grid.addEventListener("focusout", hideTip);
  grid.addEventListener("click", (e) => {
    const c = e.target.closest(".cell[data-s], .shead");
    if (c) { hideTip(); openDetail(c.dataset.s || c.dataset.open); }
  });
  document.getElementById("who").addEventListener("click", (e) => {
    if (e.target.dataset.open) { openDetail(e.target.dataset.open); return; }
    const u = e.target.closest("[data-user]"), c = e.target.closest("[data-container]");
    if (c) setHighlight("container", c.dataset.container);
    else if (u && u.tagName === "BUTTON") setHighlight("user", u.dataset.user);
  });
  document.getElementById("problems").addEventListener("click", (e) => {
    const t = e.target;
    if (t.id === "problems-more") { showAllProblems = !showAllProblems; renderProblems(); return; }
    const li = t.closest("li.problem");
    const p = li && doc.problems.find((x) => String(x.id) === li.dataset.alert);
    if (t.dataset.open && t.dataset.open !== "null") openDetail(t.dataset.open);
    else if (p && t.dataset.ack) problemForm(li, p, "ack");
    else if (p && t.dataset.silence) problemForm(li, p, "silence");
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") { hideTip(); if (openServer !== null) closeDetail(); } });
  window.addEventListener("popstate", routeFromHash);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); else tick(); });
  setInterval(() => {
    if (document.hidden) return;
    if (Date.now() >= nextRefreshAt) refresh(); else tick();
  }, 1000);
  refresh();
  routeFromHash();
});
