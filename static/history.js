// History charts of one server (uPlot). Data: the server_history and gpu_history canned
// queries, which pick the roll-up tier and keep every answer at <= 1000 rows.
"use strict";

const SERIES_COLORS = ["#5aa9ff", "#f2994a", "#3fb950", "#a371f7", "#f85149", "#d29922", "#39c5cf", "#ff7eb6"];
let charts = [];

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function axisStyle() {
  const text = cssVar("--muted") || "#888";
  const grid = cssVar("--border") || "#333";
  return { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
}

function chartWidth(container) {
  return Math.max(280, container.clientWidth - 24);
}

function makeChart(container, title, unitFormat, xs, seriesList, range) {
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title));
  container.append(box);
  const sparse = xs.length < 60;  // a few buckets: draw the points, a line alone may be invisible
  const opts = {
    width: chartWidth(container),
    height: 200,
    cursor: { sync: { key: "history" } },
    // The x axis always spans the requested range, however few buckets have data.
    scales: { x: { time: true, range: () => range } },
    axes: [Object.assign({}, axisStyle()),
           Object.assign({ values: (u, ticks) => ticks.map(unitFormat), size: 70 }, axisStyle())],
    series: [{}].concat(seriesList.map((s, i) => ({
      label: s.label,
      stroke: SERIES_COLORS[i % SERIES_COLORS.length],
      width: 1.5,
      value: (u, v) => (v === null || v === undefined ? "–" : unitFormat(v)),
      points: { show: sparse, size: 5 },
    }))),
  };
  const chart = new uPlot(opts, [xs].concat(seriesList.map((s) => s.values)), box);
  charts.push(chart);
  return chart;
}

function alignSeries(rowsBySeries, key) {
  // One x axis for all series: the union of bucket times, missing values as null.
  const xs = Array.from(new Set([].concat(...Object.values(rowsBySeries).map((rows) => rows.map((r) => r.ts))))).sort((a, b) => a - b);
  const out = {};
  for (const [name, rows] of Object.entries(rowsBySeries)) {
    const byTs = new Map(rows.map((r) => [r.ts, r[key]]));
    out[name] = xs.map((x) => (byTs.has(x) ? byTs.get(x) : null));
  }
  return { xs, out };
}

async function load(hours) {
  const section = document.getElementById("ranges");
  const serverId = section.dataset.serverId;
  const errorBox = document.getElementById("load-error");
  document.querySelectorAll(".range").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.hours) === hours)));
  try {
    const [servers, host, gpu] = await Promise.all([
      fetchQuery("servers"),
      fetchQuery("server_history", { server_id: serverId, hours: String(hours) }),
      fetchQuery("gpu_history", { server_id: serverId, hours: String(hours) }),
    ]);
    const server = servers.find((s) => String(s.server_id) === serverId);
    document.getElementById("server-name").textContent = server ? server.name : "unknown server " + serverId;
    const describe = (rows) => (rows[0].tier === "raw" ? "raw samples" : rows[0].tier + " roll-ups") +
      ", " + fmtBucket(rows[0].bucket_s) + " buckets";
    document.getElementById("tier").textContent = host.length
      ? host.length + " points · host: " + describe(host) + (gpu.length ? " · GPUs: " + describe(gpu) : "")
      : "no data in this range";
    errorBox.hidden = true;
    const now = Date.now() / 1000;
    draw(host, gpu, [now - hours * 3600, now]);
  } catch (e) {
    errorBox.textContent = "Could not load history: " + e.message;
    errorBox.hidden = false;
  }
}

function fmtBucket(seconds) {
  return seconds < 120 ? seconds + " s" : fmtDuration(seconds);
}

function draw(host, gpu, range) {
  charts.forEach((c) => c.destroy());
  charts = [];
  const container = document.getElementById("charts");
  container.replaceChildren();
  const xs = host.map((r) => r.ts);
  const pct = (v) => (v === null || v === undefined ? "–" : v.toFixed(0) + "%");
  makeChart(container, "CPU", pct, xs, [
    { label: "avg", values: host.map((r) => r.cpu_percent) },
    { label: "max", values: host.map((r) => r.cpu_percent_max) }], range);
  makeChart(container, "Memory", fmtBytes, xs, [
    { label: "used", values: host.map((r) => r.memory_used_bytes) },
    { label: "total", values: host.map((r) => r.memory_total_bytes) }], range);
  makeChart(container, "Network", fmtRate, xs, [
    { label: "rx", values: host.map((r) => r.net_rx_bps) },
    { label: "tx", values: host.map((r) => r.net_tx_bps) }], range);
  const byGpu = {};
  for (const row of gpu) (byGpu["GPU " + row.gpu_index] = byGpu["GPU " + row.gpu_index] || []).push(row);
  if (!Object.keys(byGpu).length) return;
  for (const [title, key, format] of [["GPU utilization", "utilization_gpu", pct], ["GPU memory used", "memory_used_mib", fmtMiB],
                                       ["GPU temperature", "temperature_gpu_c", (v) => (v === null ? "–" : v.toFixed(0) + " °C")],
                                       ["GPU power", "power_draw_w", (v) => (v === null ? "–" : v.toFixed(0) + " W")]]) {
    const { xs: gx, out } = alignSeries(byGpu, key);
    makeChart(container, title, format, gx, Object.entries(out).map(([label, values]) => ({ label, values })), range);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("theme-toggle").addEventListener("click", () => load(currentHours));
  let currentHours = Number(new URLSearchParams(location.search).get("hours")) || 24;
  document.querySelectorAll(".range").forEach((button) => button.addEventListener("click", () => {
    currentHours = Number(button.dataset.hours);
    history.replaceState(null, "", "?hours=" + currentHours);
    load(currentHours);
  }));
  document.getElementById("custom-apply").addEventListener("click", () => {
    const value = Number(document.getElementById("custom-hours").value);
    if (value > 0) {
      currentHours = Math.min(17520, value);
      history.replaceState(null, "", "?hours=" + currentHours);
      load(currentHours);
    }
  });
  window.addEventListener("resize", () => charts.forEach((c) => c.setSize({ width: chartWidth(document.getElementById("charts")), height: 200 })));
  load(currentHours);
});
