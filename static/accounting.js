// GPU-hours accounting page: the gpu_hours canned query over a chosen range.
"use strict";

let range = { since: null, until: null };

function localMidnight() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return Math.floor(d.getTime() / 1000);
}

const DAY_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"];

async function loadDaily(params) {
  // Stacked bars, one per local day: the top owners of the range by colour, the rest grey.
  const rows = await fetchQuery("gpu_hours_daily", Object.assign({ tz_offset_min: String(-new Date().getTimezoneOffset()) }, params));
  const totals = new Map();
  for (const r of rows) totals.set(r.owner, (totals.get(r.owner) || 0) + r.gpu_hours);
  // Most GPU-hours first; equal ones (to the 0.001 h the query rounds to) in natural order, as the table.
  const top = [...totals.entries()].sort((a, b) => Math.round(b[1] * 1000) - Math.round(a[1] * 1000) || naturalCompare(a[0], b[0]))
    .slice(0, DAY_COLORS.length).map(([o]) => o);
  const colour = (o) => (top.indexOf(o) >= 0 ? DAY_COLORS[top.indexOf(o)] : "var(--muted)");
  const days = new Map();
  for (let t = range.since; t < range.until; t += 86400) days.set(isoDay(t), []);
  days.set(isoDay(range.until - 1), days.get(isoDay(range.until - 1)) || []);
  for (const r of rows) (days.get(r.day) || days.set(r.day, []).get(r.day)).push(r);
  const max = Math.max(1e-9, ...[...days.values()].map((list) => list.reduce((n, r) => n + r.gpu_hours, 0)));
  const bars = [...days.entries()].map(([day, list]) => {
    const sum = list.reduce((n, r) => n + r.gpu_hours, 0);
    const label = day + ": " + sum.toFixed(1) + " GPU-hours" + (list.length ? " — " + list.slice(0, 5).map((r) =>
      (r.owner === null ? "(unknown)" : r.owner) + " " + r.gpu_hours.toFixed(1)).join(", ") + (list.length > 5 ? ", …" : "") : "");
    const stack = h("div", { class: "daily-stack", style: { height: (100 * sum / max).toFixed(1) + "%" } },
      list.map((r) => h("span", { class: "daily-seg", style: { height: (100 * r.gpu_hours / Math.max(sum, 1e-9)).toFixed(2) + "%",
                                                                  background: colour(r.owner) } })));
    return h("div", { class: "daily-bar", title: label, tabIndex: 0, "aria-label": label },
      h("span", { class: "daily-value" }, sum >= 10 ? sum.toFixed(0) : sum.toFixed(1)), stack, h("span", { class: "daily-day" }, day.slice(5)));
  });
  document.getElementById("daily-bars").replaceChildren(...bars);
  // No "others" entry unless there are others (replaceChildren(null) would add a text "null").
  const legend = top.map((o) => h("li", {},
    h("span", { class: "swatch", style: { background: colour(o) } }), o === null ? "(unknown)" : params.by === "user" ? userLink(o) : o));
  if (totals.size > top.length) legend.push(h("li", {}, h("span", { class: "swatch", style: { background: "var(--muted)" } }), "others"));
  document.getElementById("daily-legend").replaceChildren(...legend);
}

function isoDay(epoch) {
  const d = new Date(epoch * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate());
}

function parseIsoDay(text) {
  // "YYYY-MM-DD" (ISO 8601 calendar date) -> local midnight as a Date, or null.
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text.trim());
  if (!m) return null;
  const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  return d.getMonth() === Number(m[2]) - 1 && d.getDate() === Number(m[3]) ? d : null;
}

async function load() {
  const by = document.getElementById("by").value;
  const group = document.getElementById("group").value.trim();
  const params = { since: String(range.since), until: String(range.until), by };
  if (group) params.group = group;  // only that host group's servers (docs/api.md "Host groups")
  // The page's URL says what it shows (?by=server&group=…), to share or reload.
  const shown = new URLSearchParams(location.search);
  shown.set("by", by);
  if (group) shown.set("group", group); else shown.delete("group");
  history.replaceState(null, "", location.pathname + "?" + shown.toString() + location.hash);
  document.getElementById("owner-head").textContent = { user: "User", container: "Container / job", server: "Server" }[by];
  document.getElementById("csv").href = "/monitor/gpu_hours.csv?" + new URLSearchParams(Object.assign({ _size: "max" }, params)).toString();
  const errorBox = document.getElementById("load-error");
  const lastDay = isoDay(Math.max(range.since, range.until - 1));
  document.getElementById("range-text").textContent = "From " + isoDay(range.since) +
    (lastDay === isoDay(range.since) ? "" : " to " + lastDay + " (inclusive)") + ", grouped by " + by +
    (group ? ", servers of group " + group : "") + ".";
  try {
    const [rows] = await Promise.all([fetchQuery("gpu_hours", params), loadDaily(params)]);
    errorBox.hidden = true;
    document.querySelector("#hours-table tbody").replaceChildren(...(rows.length ? rows.map((r) => h("tr", {},
      h("td", {}, r.owner === null ? "(unknown)" : by === "user" ? userLink(r.owner) : r.owner), h("td", { class: "num" }, r.gpu_hours.toFixed(2)),
      h("td", { class: "num" }, r.vram_gib_hours.toFixed(1)),
      h("td", { class: "num" }, r.avg_utilization_gpu === null ? "–" : r.avg_utilization_gpu.toFixed(0) + "%"),
      h("td", { class: "num" }, String(r.gpus)), h("td", { class: "num" }, String(r.servers)))) :
      [h("tr", {}, h("td", { colSpan: 6 }, "No GPU was held in this range."))]));
    labelFromHead(document.getElementById("hours-table"));
  } catch (e) {
    errorBox.textContent = "Could not load: " + e.message;
    errorBox.hidden = false;
  }
}

function choose(kind) {
  const now = Math.floor(Date.now() / 1000);
  range = kind === "today" ? { since: localMidnight(), until: now } : { since: now - Number(kind) * 86400, until: now };
  document.getElementById("since").value = isoDay(range.since);
  document.getElementById("until").value = isoDay(range.until);
  document.querySelectorAll(".range").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === kind)));
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".range").forEach((b) => b.addEventListener("click", () => choose(b.dataset.range)));
  document.getElementById("by").addEventListener("change", load);
  document.getElementById("group").addEventListener("change", load);
  const asked = new URLSearchParams(location.search);
  const wanted = asked.get("group");
  if (wanted) document.getElementById("group").value = wanted;
  // ?by=server (or container, user) picks the grouping; another value is ignored (user).
  const by = document.getElementById("by");
  if ([...by.options].some((o) => o.value === asked.get("by"))) by.value = asked.get("by");
  document.getElementById("custom").addEventListener("click", () => {
    const errorBox = document.getElementById("load-error");
    const since = parseIsoDay(document.getElementById("since").value);
    const until = parseIsoDay(document.getElementById("until").value);
    if (!since || !until || until < since) {
      errorBox.textContent = "Give both dates as YYYY-MM-DD, the second not before the first.";
      errorBox.hidden = false;
      return;
    }
    // Local midnights; "to" is inclusive.
    const end = new Date(until.getFullYear(), until.getMonth(), until.getDate() + 1);
    range = { since: Math.floor(since.getTime() / 1000), until: Math.floor(end.getTime() / 1000) };
    document.querySelectorAll(".range").forEach((b) => b.setAttribute("aria-pressed", "false"));
    load();
  });
  choose("7");
});
