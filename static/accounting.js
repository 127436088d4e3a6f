// GPU-hours accounting page: the gpu_hours canned query over a chosen range.
"use strict";

let range = { since: null, until: null };

function localMidnight() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return Math.floor(d.getTime() / 1000);
}

async function load() {
  const by = document.getElementById("by").value;
  const params = { since: String(range.since), until: String(range.until), by };
  document.getElementById("owner-head").textContent = { user: "User", container: "Container / job", server: "Server" }[by];
  document.getElementById("csv").href = "/monitor/gpu_hours.csv?" + new URLSearchParams(Object.assign({ _size: "max" }, params)).toString();
  const errorBox = document.getElementById("load-error");
  try {
    const rows = await fetchQuery("gpu_hours", params);
    errorBox.hidden = true;
    document.querySelector("#hours-table tbody").replaceChildren(...(rows.length ? rows.map((r) => h("tr", {},
      h("td", {}, r.owner === null ? "(unknown)" : r.owner), h("td", { class: "num" }, r.gpu_hours.toFixed(2)),
      h("td", { class: "num" }, r.vram_gib_hours.toFixed(1)),
      h("td", { class: "num" }, r.avg_utilization_gpu === null ? "–" : r.avg_utilization_gpu.toFixed(0) + "%"),
      h("td", { class: "num" }, String(r.gpus)), h("td", { class: "num" }, String(r.servers)))) :
      [h("tr", {}, h("td", { colSpan: 6 }, "No GPU was held in this range."))]));
  } catch (e) {
    errorBox.textContent = "Could not load: " + e.message;
    errorBox.hidden = false;
  }
}

function choose(kind) {
  const now = Math.floor(Date.now() / 1000);
  range = kind === "today" ? { since: localMidnight(), until: now } : { since: now - Number(kind) * 86400, until: now };
  document.querySelectorAll(".range").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === kind)));
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".range").forEach((b) => b.addEventListener("click", () => choose(b.dataset.range)));
  document.getElementById("by").addEventListener("change", load);
  document.getElementById("custom").addEventListener("click", () => {
    const since = document.getElementById("since").valueAsDate;
    const until = document.getElementById("until").valueAsDate;
    if (!since || !until) return;
    // <input type=date> is UTC midnight; use local midnights, "to" inclusive.
    const s = new Date(since.getUTCFullYear(), since.getUTCMonth(), since.getUTCDate());
    const u = new Date(until.getUTCFullYear(), until.getUTCMonth(), until.getUTCDate() + 1);
    range = { since: Math.floor(s.getTime() / 1000), until: Math.floor(u.getTime() / 1000) };
    document.querySelectorAll(".range").forEach((b) => b.setAttribute("aria-pressed", "false"));
    load();
  });
  choose("7");
});
