// Server Monitor dashboard: fetches the canned-query JSON and renders it.
// Every value from an agent is untrusted text: the DOM is built with createElement and
// textContent only (h() in common.js), never innerHTML.
"use strict";

const REFRESH_S = 30;
const QUERIES = ["servers", "gpus", "processes", "disks", "containers", "probes", "announcements", "alerts_active", "idle_holders"];
const GPU_STATE_TEXT = {
  driver_mismatch: "driver/library version mismatch (reboot pending?)",
  no_devices: "driver found no GPUs",
  driver_not_loaded: "NVIDIA driver not loaded",
  insufficient_permissions: "insufficient permissions for NVML",
  timeout: "nvidia-smi timed out",
  busy: "nvidia-smi hung (earlier call still running)",
  error: "nvidia-smi failed",
};
const STATUS_RANK = { error: 0, offline: 1, stale: 2, maintenance: 3, online: 4 };

// ---- pieces -----------------------------------------------------------------------
function bar(label, value, text, warn = 80, crit = 95, hideLabel = false) {
  const v = value === null || value === undefined ? null : Math.max(0, Math.min(100, value));
  return h("div", { class: "bar-row" },
    h("span", { class: hideLabel ? "visually-hidden" : "bar-label" }, label),
    h("span", { class: "bar", role: "meter", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100,
                "aria-valuenow": v === null ? 0 : Math.round(v), "aria-valuetext": text },
      h("span", { class: "bar-fill level-" + level(v, warn, crit), style: { width: (v || 0) + "%" } })),
    h("span", { class: "bar-text" }, text));
}

function statusBadge(status) {
  // Colour plus a text label and a shape, so colour is never the only signal.
  const symbol = { online: "●", stale: "◐", offline: "○", error: "▲", maintenance: "■" }[status] || "?";
  return h("span", { class: "status status-" + status, title: status },
    h("span", { class: "status-dot", "aria-hidden": "true" }, symbol), " ", status);
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

function gpuRow(gpu, procs) {
  const mig = gpu.mig_mode === 1;
  const util = mig ? h("span", { class: "mig", title: "MIG mode: per-GPU utilization is not reported" }, "MIG")
                   : bar("GPU " + gpu.gpu_index + " utilization", gpu.utilization_gpu, fmtPct(gpu.utilization_gpu), 101, 101, true);
  const memPct = pct(gpu.memory_used_mib, gpu.memory_total_mib);
  const temp = gpu.temperature_gpu_c;
  const power = gpu.power_draw_w;
  const powerPct = pct(power, gpu.power_limit_w);
  const sortedProcs = procs.slice().sort((a, b) => (b.used_gpu_memory_mib || 0) - (a.used_gpu_memory_mib || 0));
  const row = h("div", { class: "gpu" + (gpu.present ? "" : " gpu-missing"), dataset: { gpuId: String(gpu.gpu_id) } },
    h("div", { class: "gpu-head" },
      h("span", { class: "gpu-index" }, "GPU " + gpu.gpu_index),
      h("span", { class: "gpu-name" }, gpu.name || "unknown GPU"),
      h("span", { class: "gpu-bus" }, gpu.pci_bus_id || ""),
      gpu.present ? null : h("span", { class: "badge badge-crit" }, "missing from latest report"),
      gpu.admin_status && gpu.admin_status !== "active" ? h("span", { class: "badge badge-crit", title: gpu.status_note || "" }, gpu.admin_status + (gpu.status_note ? ": " + gpu.status_note : "")) : null,
      gpu.busy ? h("span", { class: "badge badge-busy" }, "busy") : h("span", { class: "badge badge-free" }, "free")),
    h("div", { class: "gpu-metrics" },
      util,
      bar("GPU " + gpu.gpu_index + " memory", memPct, fmtMiB(gpu.memory_used_mib) + " / " + fmtMiB(gpu.memory_total_mib), 90, 98, true),
      h("span", { class: "metric temp level-" + level(temp, 80, 90), title: "temperature.gpu" },
        temp === null ? "–" : temp + " °C"),
      h("span", { class: "metric power level-" + level(powerPct, 90, 100), title: "power.draw / power.limit" },
        (power === null ? "–" : Math.round(power) + " W") + (gpu.power_limit_w ? " / " + Math.round(gpu.power_limit_w) + " W" : ""))),
    sortedProcs.length ? h("table", { class: "procs" },
      h("thead", {}, h("tr", {}, ["User", "Container / job", "PID", "Process", "VRAM"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, sortedProcs.map((p) => h("tr", {},
        h("td", { class: "proc-user" }, p.user || (p.uid !== null ? String(p.uid) : "?")),
        h("td", { class: "proc-container" }, p.container ? (p.container_kind ? p.container_kind + ": " : "") + p.container : "host"),
        h("td", { class: "num" }, p.pid === null ? "?" : String(p.pid)),
        h("td", { class: "proc-name", title: p.process_name || "" }, p.process_name || "?"),
        h("td", { class: "num" }, fmtMiB(p.used_gpu_memory_mib)))))) : null);
  return row;
}

function serverCard(server, gpus, procs, disks) {
  const diskMax = disks.reduce((m, d) => Math.max(m, d.used_percent || 0), 0);
  return h("a", { class: "card status-border-" + server.status, href: "#server-" + server.server_id },
    h("div", { class: "card-head" },
      h("span", { class: "card-name" }, server.name),
      statusBadge(server.status)),
    h("div", { class: "card-gpus" },
      server.gpu_count ? (server.gpu_models || "") : "no GPU"),
    server.gpu_count ? h("div", { class: "card-busy" }, server.gpus_busy + "/" + server.gpu_count + " GPUs busy") : null,
    h("div", { class: "card-host" },
      "CPU " + fmtPct(server.cpu_percent) + " · MEM " + fmtPct(pct(server.memory_used_bytes, server.memory_total_bytes)) +
      " · DISK " + fmtPct(disks.length ? diskMax : null)),
    h("div", { class: "card-foot" }, "agent " + (server.agent_version || "?")));
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

function agentNotes(server) {
  const notes = [];
  if (server.spool_depth) notes.push(server.spool_depth + " report(s) waiting in the agent's spool");
  if (server.spool_dropped) notes.push("agent dropped " + server.spool_dropped + " report(s) (spool full)");
  if (server.rejected_reports) notes.push("hub rejected " + server.rejected_reports + " report(s)");
  return notes.length ? h("p", { class: "server-note" }, notes.join(" · ")) : null;
}

function deleteButton(server) {
  // Two clicks (no window.confirm): the first arms the button, the second deletes.
  const button = h("button", { type: "button", class: "link-button danger" }, "Delete");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Confirm delete of " + server.name;
      setTimeout(() => { button.dataset.armed = ""; button.textContent = "Delete"; }, 5000);
      return;
    }
    const response = await fetch("/api/servers/" + Number(server.server_id), { method: "DELETE", credentials: "same-origin" });
    if (response.ok) refresh();
    else button.textContent = "Delete failed (HTTP " + response.status + ")";
  });
  return button;
}

function serverSection(server, gpus, procsByGpu, disks, containers, probes) {
  const err = gpuErrorText(server);
  const memPct = pct(server.memory_used_bytes, server.memory_total_bytes);
  const swapPct = pct(server.swap_used_bytes, server.swap_total_bytes);
  return h("article", { class: "server", id: "server-" + server.server_id, dataset: { serverId: String(server.server_id) } },
    h("header", { class: "server-head" },
      h("h2", {}, server.name),
      statusBadge(server.status),
      h("span", { class: "muted", title: "Last report received" }, "last seen " + fmtLocalTime(server.last_seen) + " · " + fmtAgo(server.seen_age_s)),
      h("a", { class: "server-links", href: "/servers/" + Number(server.server_id) + "/history" }, "History"),
      document.body.dataset.role === "admin" ? deleteButton(server) : null),
    err ? h("p", { class: "server-error", role: "alert" }, err) : null,
    server.status_note ? h("p", { class: "server-note" }, server.status_note) : null,
    agentNotes(server),
    h("div", { class: "server-body" },
      h("div", { class: "host" },
        bar("CPU (" + (server.cpu_count || "?") + " cores)", server.cpu_percent, fmtPct(server.cpu_percent) + " · load " + (server.load_1 === null ? "–" : server.load_1.toFixed(2))),
        bar("Memory", memPct, fmtBytes(server.memory_used_bytes) + " / " + fmtBytes(server.memory_total_bytes)),
        server.swap_total_bytes ? bar("Swap", swapPct, fmtBytes(server.swap_used_bytes) + " / " + fmtBytes(server.swap_total_bytes)) : null,
        disks.map((d) => bar(d.mountpoint, d.used_percent, fmtBytes(d.used_bytes) + " / " + fmtBytes(d.total_bytes), 85, 95)),
        h("div", { class: "host-facts" },
          h("span", {}, "↓ " + fmtRate(server.net_rx_bps) + " ↑ " + fmtRate(server.net_tx_bps)),
          h("span", {}, "up " + fmtDuration(server.uptime_s)),
          h("span", {}, [server.os, server.kernel].filter(Boolean).join(" · ")),
          server.clock_skew_s && Math.abs(server.clock_skew_s) > 30 ? h("span", { class: "warn-text" }, "clock off by " + server.clock_skew_s + " s") : null),
        probesLine(probes),
        containersTable(containers)),
      h("div", { class: "gpus" },
        gpus.length ? gpus.map((g) => gpuRow(g, procsByGpu.get(g.gpu_id) || [])) :
          h("p", { class: "muted" }, server.gpu_state === "not_installed" ? "No NVIDIA GPU on this host." : "No GPU data."))));
}

// ---- state, fetch, render ---------------------------------------------------------
let data = null;
let nextRefreshAt = 0;
let lastUpdate = null;

function groupBy(rows, key) {
  const map = new Map();
  for (const row of rows) {
    const k = row[key];
    if (!map.has(k)) map.set(k, []);
    map.get(k).push(row);
  }
  return map;
}


function matches(server, gpus, procs, text) {
  if (!text) return true;
  const hay = [server.name, server.hostname, server.gpu_models, server.status]
    .concat(gpus.map((g) => g.name), procs.map((p) => p.user), procs.map((p) => p.container))
    .filter(Boolean).join(" ").toLowerCase();
  return hay.includes(text.toLowerCase());
}

function render() {
  if (!data) return;
  const [servers, gpus, procs, disks, containers, probes, announcements, alerts, idle] = data;
  document.getElementById("alerts").replaceChildren(...alerts.map((a) =>
    h("p", { class: "alert-row alert-" + a.severity, role: a.severity === "critical" ? "alert" : "status" },
      h("strong", {}, a.severity + " · " + a.rule.replace("_", " ") + ": "), a.message,
      h("span", { class: "muted" }, " · since " + fmtLocalTime(a.started_at)))));
  const idlePanel = document.getElementById("idle");
  idlePanel.hidden = idle.length === 0;
  document.getElementById("idle-summary").textContent = idle.length + " idle GPU holder" + (idle.length === 1 ? "" : "s") +
    " (memory held, utilization near 0)";
  document.getElementById("idle-list").replaceChildren(h("table", { class: "procs" },
    h("thead", {}, h("tr", {}, ["Server", "GPU", "Held", "Users", "Containers", "Idle for"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, idle.map((r) => h("tr", {}, h("td", {}, r.server), h("td", {}, "GPU " + r.gpu_index),
      h("td", { class: "num" }, fmtMiB(r.held_mib)), h("td", {}, r.users || "?"), h("td", {}, r.containers || ""),
      h("td", { class: "num" }, r.idle_hours + " h"))))));
  document.getElementById("announcements").replaceChildren(...announcements.map((a) =>
    h("p", { class: "announcement announcement-" + a.level, role: a.level === "critical" ? "alert" : "status" },
      h("strong", {}, a.level + ": "), a.message)));
  const containersByServer = groupBy(containers, "server_id");
  const probesByServer = groupBy(probes, "server_id");
  const gpusByServer = groupBy(gpus, "server_id");
  const procsByServer = groupBy(procs, "server_id");
  const procsByGpu = groupBy(procs, "gpu_id");
  const disksByServer = groupBy(disks, "server_id");
  const filterText = document.getElementById("filter").value.trim();
  const sort = document.getElementById("sort").value;

  const counts = { online: 0, stale: 0, offline: 0, error: 0, maintenance: 0 };
  servers.forEach((s) => { counts[s.status] = (counts[s.status] || 0) + 1; });
  // Busy/free counts only GPUs whose host reports now (not stale, offline or in maintenance).
  const present = gpus.filter((g) => g.present && (g.server_status === "online" || g.server_status === "error"));
  const busy = present.filter((g) => g.busy).length;
  const summary = document.getElementById("summary");
  summary.replaceChildren(
    h("span", { class: "sum sum-online" }, counts.online + " online"),
    h("span", { class: "sum sum-offline" }, counts.offline + " offline"),
    h("span", { class: "sum sum-problems" }, (counts.error + counts.stale) + " with problems"),
    h("span", { class: "sum sum-gpus" }, busy + " GPUs busy · " + (present.length - busy) + " free"));

  let shown = servers.filter((s) => matches(s, gpusByServer.get(s.server_id) || [], procsByServer.get(s.server_id) || [], filterText));
  if (sort === "problems") shown.sort((a, b) => (STATUS_RANK[a.status] - STATUS_RANK[b.status]) || a.name.localeCompare(b.name));
  else if (sort === "free") shown.sort((a, b) => ((b.gpu_count - b.gpus_busy) - (a.gpu_count - a.gpus_busy)) || a.name.localeCompare(b.name));
  else shown.sort((a, b) => a.name.localeCompare(b.name));

  document.getElementById("overview").replaceChildren(...shown.map((s) =>
    serverCard(s, gpusByServer.get(s.server_id) || [], procsByServer.get(s.server_id) || [], disksByServer.get(s.server_id) || [])));
  document.getElementById("servers").replaceChildren(...(shown.length ? shown.map((s) =>
    serverSection(s, gpusByServer.get(s.server_id) || [], procsByGpu, disksByServer.get(s.server_id) || [],
      containersByServer.get(s.server_id) || [], probesByServer.get(s.server_id) || [])) :
    [h("p", { class: "muted empty" }, servers.length ? "No server matches the filter." : "No server has reported yet. Start an agent (see README).")]));
}

async function refresh() {
  nextRefreshAt = Date.now() + REFRESH_S * 1000;
  const errorBox = document.getElementById("load-error");
  try {
    data = await Promise.all(QUERIES.map((name) => fetchQuery(name)));
    lastUpdate = Date.now();
    errorBox.hidden = true;
    render();
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
  document.getElementById("filter").addEventListener("input", render);
  document.getElementById("sort").addEventListener("change", render);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); else tick(); });
  setInterval(() => {
    if (document.hidden) return;
    if (Date.now() >= nextRefreshAt) refresh(); else tick();
  }, 1000);
  refresh();
});
