// Per-user page (/users/<name>): the user_gpus, user_gpu_hours_daily and user_jobs canned queries.
// The name comes from the page's data attribute (escaped by the template) and only ever
// reaches the DOM as text and the queries as a URL parameter.
"use strict";

const DAYS = 30;
// The weekly digest's window (server_monitor/jobs/nudge.py DIGEST_DAYS): the last 7 UTC days, today included.
const WEEK_DAYS = 7;

function dayList(days) {
  // The last `days` UTC days (today included), oldest first, as YYYY-MM-DD: the query's days.
  const out = [];
  const today = Math.floor(Date.now() / 86400000);
  for (let i = days - 1; i >= 0; i--) out.push(new Date((today - i) * 86400000).toISOString().slice(0, 10));
  return out;
}

function fmtHours(v) { return v === null || v === undefined ? "–" : (v >= 10 ? v.toFixed(0) : v.toFixed(1)); }

// A user may hold hundreds of GPUs (492 on a 1,000-server fleet: a 161,000 px page): the list shows
// the first GPUS_SHOWN rows under a summary line, and "Show all" the rest.
const GPUS_SHOWN = 20;
let showAllGpus = false;

function drawGpus(rows) {
  document.getElementById("now-count").textContent = "(" + rows.length + ")";
  const body = document.querySelector("#user-gpus tbody");
  const summary = document.getElementById("now-summary");
  if (!rows.length) {
    body.replaceChildren(h("tr", {}, h("td", { colSpan: 8, class: "muted" }, "No GPU held now on the servers you may see.")));
    summary.replaceChildren();
    return;
  }
  const servers = new Set(rows.map((r) => r.server_id)).size, idle = rows.filter((r) => r.idle === 1).length;
  const held = rows.reduce((n, r) => n + (r.held_mib || 0), 0);
  const shown = showAllGpus ? rows : rows.slice(0, GPUS_SHOWN);
  const more = rows.length > GPUS_SHOWN ? h("button", { type: "button", class: "link-button", id: "gpus-more" },
    showAllGpus ? "Show the first " + GPUS_SHOWN : "Show all " + rows.length + " GPUs") : null;
  if (more) more.addEventListener("click", () => { showAllGpus = !showAllGpus; drawGpus(rows); });
  summary.replaceChildren(rows.length + " GPU" + (rows.length === 1 ? "" : "s") + " on " + servers + " server" +
    (servers === 1 ? "" : "s") + ", " + idle + " idle, " + fmtMiB(held) + " held" +
    (shown.length < rows.length ? " · the first " + shown.length + " below" : "") + " ", ...(more ? [more] : []));
  body.replaceChildren(...shown.map((r) => h("tr", { dataset: { serverId: String(r.server_id), gpu: String(r.gpu_index) } },
    h("td", {}, h("a", { href: "/servers/" + encodeURIComponent(r.server_id) + "/history" }, r.server)),
    h("td", {}, "GPU " + r.gpu_index),
    h("td", {}, r.name || "–"),
    h("td", {}, fmtMiB(r.held_mib) + " / " + fmtMiB(r.memory_used_mib) + " / " + fmtMiB(r.memory_total_mib)),
    h("td", {}, fmtPct(r.utilization_gpu)),
    h("td", { class: r.idle === 1 ? "idle-yes" : "" }, r.idle === 1 ? "idle" : r.idle === 0 ? "busy" : "unknown"),
    // A Slurm job's processes already carry the container "job <id>": name the allocation only when it adds something.
    h("td", {}, [r.containers, r.slurm_job && String(r.containers || "").split(",").indexOf("job " + r.slurm_job) < 0
      ? "Slurm job " + r.slurm_job : null].filter(Boolean).join(" · ") || "–",
      r.shared_with ? " (shared with " + r.shared_with + " other" + (r.shared_with === 1 ? "" : "s") + ")" : ""),
    h("td", {}, String(r.processes)))));
  labelFromHead(document.getElementById("user-gpus"));
}

let chart = null;

function drawDaily(rows) {
  const days = dayList(DAYS);
  const byDay = new Map(rows.map((r) => [r.day, r]));
  const total = rows.reduce((n, r) => n + r.gpu_hours, 0);
  const idle = rows.reduce((n, r) => n + (r.idle_gpu_hours || 0), 0);
  document.getElementById("daily-total").textContent =
    "(" + fmtHours(total) + " GPU-hours, " + fmtHours(idle) + " of them idle)";
  // The same sums over the digest's week, to one decimal as the digest writes them.
  const week = new Set(dayList(WEEK_DAYS));
  const weekRows = rows.filter((r) => week.has(r.day));
  const weekTotal = weekRows.reduce((n, r) => n + r.gpu_hours, 0);
  const weekIdle = weekRows.reduce((n, r) => n + (r.idle_gpu_hours || 0), 0);
  const weekBox = document.getElementById("week-total");
  weekBox.dataset.gpuHours = weekTotal.toFixed(1);
  weekBox.dataset.idleGpuHours = weekIdle.toFixed(1);
  weekBox.textContent = "Last " + WEEK_DAYS + " days (since " + dayList(WEEK_DAYS)[0] + "): " + weekTotal.toFixed(1) +
    " GPU-hours, " + weekIdle.toFixed(1) + " of them idle — the numbers of the weekly digest.";
  const box = document.getElementById("user-daily");
  if (chart) chart.destroy();
  box.replaceChildren();
  // x: noon UTC of each day (epoch s), so the day label sits under its bar.
  const xs = days.map((d) => Date.parse(d + "T12:00:00Z") / 1000);
  const used = days.map((d) => (byDay.has(d) ? byDay.get(d).gpu_hours : 0));
  const idleH = days.map((d) => (byDay.has(d) ? byDay.get(d).idle_gpu_hours || 0 : 0));
  const bars = uPlot.paths.bars({ size: [0.7, 40] });
  const style = getComputedStyle(document.documentElement);
  const axis = { stroke: style.getPropertyValue("--muted").trim() || "#888", grid: { stroke: "rgba(128,128,128,0.2)" } };
  chart = new uPlot({
    width: Math.max(320, box.clientWidth - 24),
    height: 220,
    scales: { x: { time: true, range: [xs[0] - 43200, xs[xs.length - 1] + 43200] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] } },
    axes: [Object.assign({ values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)) }, axis),
           Object.assign({ label: "GPU-hours", values: (u, ticks) => ticks.map((t) => fmtHours(t)) }, axis)],
    series: [
      { value: (u, v) => (v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10) + " UTC") },
      { label: "GPU-hours", stroke: "#4e79a7", fill: "rgba(78,121,167,0.55)", paths: bars, points: { show: false }, value: (u, v) => fmtHours(v) },
      { label: "idle GPU-hours", stroke: "#e15759", fill: "rgba(225,87,89,0.75)", paths: bars, points: { show: false }, value: (u, v) => fmtHours(v) },
    ],
  }, [xs, used, idleH], box);
  box.dataset.days = String(rows.length);
}

function drawJobs(rows) {
  const body = document.querySelector("#user-jobs tbody");
  if (!rows.length) {
    body.replaceChildren(h("tr", {}, h("td", { colSpan: 8, class: "muted" }, "No GPU use in the last " + DAYS + " days on the servers you may see.")));
    return;
  }
  body.replaceChildren(...rows.map((r) => h("tr", {},
    h("td", {}, r.container === null ? "(on the host)" : r.container),
    h("td", {}, h("a", { href: "/servers/" + encodeURIComponent(r.server_id) + "/history" }, r.server)),
    h("td", {}, fmtHours(r.gpu_hours)),
    h("td", {}, fmtHours(r.idle_gpu_hours)),
    h("td", {}, fmtPct(r.avg_utilization_gpu)),
    h("td", {}, String(r.gpus)),
    h("td", {}, fmtLocalTime(r.first_hour)),
    h("td", {}, fmtLocalTime(r.last_hour)))));
  labelFromHead(document.getElementById("user-jobs"));
}

async function loadUser() {
  const name = document.getElementById("user-heading").dataset.user;
  const errorBox = document.getElementById("load-error");
  try {
    const params = { user: name };
    const [gpus, daily, jobs] = await Promise.all([
      fetchQuery("user_gpus", params),
      fetchQuery("user_gpu_hours_daily", Object.assign({ days: String(DAYS) }, params)),
      fetchQuery("user_jobs", Object.assign({ days: String(DAYS) }, params)),
    ]);
    errorBox.hidden = true;
    drawGpus(gpus);
    drawDaily(daily);
    drawJobs(jobs);
  } catch (e) {
    errorBox.textContent = "Could not load this user's data: " + e.message;
    errorBox.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", loadUser);
