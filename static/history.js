// History of one server (uPlot): who held each GPU (holder timeline), a GPU × time utilization
// heatmap, and host/GPU line charts; every chart carries the server's alert and outage markers.
// Data: the server_history, gpu_history, gpu_holders_history, server_alerts and server_xids canned queries,
// each bounded in rows whatever the range. Agent strings (users, containers, alert texts) reach
// the page only as text nodes or as canvas text, never as markup.
"use strict";

const SERIES_COLORS = ["#5aa9ff", "#f2994a", "#3fb950", "#a371f7", "#f85149", "#d29922", "#39c5cf", "#ff7eb6"];
// Owner colours of the holder timeline, most GPU time first; owners beyond these share grey.
const OWNER_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                      "#9c755f", "#86bcb6", "#d37295", "#8cd17d"];
const OTHER_OWNER = "#8d97a5";
// A holder's name is written only where its band is at least this share of the row high.
const FULL_BAND_SHARE = 0.8;

function textOn(hex) {
  // Label colour on a band of colour ``hex`` (#rrggbb): white where it reaches WCAG AA contrast
  // (4.5:1) on that colour, else black (every OWNER_COLORS entry then reads at >= 4.5:1).
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const luminance = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  return 1.05 / (luminance + 0.05) >= 4.5 ? "#ffffff" : "#000000";
}
// Viridis stops for the utilization heatmap (0 % .. 100 %), readable on both themes.
const HEAT_STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
let charts = [];
let markers = { alerts: [], outages: [], xids: [] };
const XID_COLOUR = "#d16ee8";  // XID markers: a violet tick with the code, distinct from alert red/amber

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

function heatColor(value) {
  const x = Math.max(0, Math.min(100, value)) / 100 * (HEAT_STOPS.length - 1);
  const i = Math.min(HEAT_STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const c = HEAT_STOPS[i].map((v, k) => Math.round(v + (HEAT_STOPS[i + 1][k] - v) * f));
  return "rgb(" + c.join(",") + ")";
}

function fmtTime(epoch) {
  // ISO-like local time, 24 h clock: 2026-12-01 14:05
  const d = new Date(epoch * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" + p(d.getMinutes());
}

function timeTicks(u, splits) {
  // 24-hour, ISO-ordered tick labels: "14:00", with the date under the first tick of each day.
  const p = (n) => String(n).padStart(2, "0");
  let lastDay = null;
  const long = u.scales.x.max - u.scales.x.min > 3 * 86400;
  return splits.map((t) => {
    const d = new Date(t * 1000);
    const day = d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate());
    const clock = p(d.getHours()) + ":" + p(d.getMinutes());
    const newDay = day !== lastDay;
    lastDay = day;
    if (long) return clock === "00:00" || newDay ? day.slice(5) + (clock === "00:00" ? "" : "\n" + clock) : clock;
    return newDay ? clock + "\n" + day : clock;
  });
}

function fitAxisSize(u, values, axisIdx, cycleNum) {
  // uPlot's axis size (CSS px) as a function of the tick labels, as in uPlot's axis-autosize
  // demo: tick length + gap + the widest label measured in the axis font, never less than 70 so
  // the plots of the page stay aligned; a fixed size cut the first digits ("95.4 MiB/s" read
  // "5.4 MiB/s"). Values are null on the first pass; later passes reuse the last size.
  const axis = u.axes[axisIdx];
  if (cycleNum > 1) return axis._size;
  let widest = 0;
  if (values) {
    u.ctx.save();
    u.ctx.font = axis.font[0];
    for (const label of values) {
      for (const line of String(label).split("\n")) widest = Math.max(widest, u.ctx.measureText(line).width);
    }
    u.ctx.restore();
  }
  return Math.max(70, Math.ceil(axis.ticks.size + axis.gap + widest / devicePixelRatio + 4));
}

function timeAxis() {
  return Object.assign({ values: timeTicks, space: 60 }, axisStyle());
}

function fmtSpan(seconds) {
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return +(seconds / 3600).toFixed(1) + " h";
  return +(seconds / 86400).toFixed(1) + " days";
}

function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

// ---- markers: alerts (red) and outages (grey), drawn on every chart ---------------------
function drawMarkers(u) {
  const ctx = u.ctx;
  const top = u.bbox.top, height = u.bbox.height;
  const x = (v) => Math.round(u.valToPos(v, "x", true));
  ctx.save();
  ctx.fillStyle = "rgba(141, 151, 165, 0.18)";
  for (const o of markers.outages) {
    const x0 = x(o.from), x1 = x(o.to);
    if (x1 > x0) ctx.fillRect(x0, top, x1 - x0, height);
  }
  const red = cssVar("--crit") || "#f85149";
  const warn = cssVar("--warn") || "#d29922";
  const strip = Math.max(3, Math.round(4 * devicePixelRatio));
  for (const a of markers.alerts) {
    const colour = a.severity === "critical" ? red : warn;
    const x0 = Math.max(u.bbox.left, x(a.started_at));
    const x1 = Math.min(u.bbox.left + u.bbox.width, x(a.resolved_at || Date.now() / 1000));
    ctx.fillStyle = colour;
    ctx.globalAlpha = 0.85;
    ctx.fillRect(x0, top, Math.max(2, x1 - x0), strip);
    ctx.globalAlpha = 1;
    if (x(a.started_at) >= u.bbox.left) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = Math.max(1, devicePixelRatio);
      ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
      ctx.beginPath();
      ctx.moveTo(x0 + 0.5, top);
      ctx.lineTo(x0 + 0.5, top + height);
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }
  // XID errors: a solid violet line with the code at the top ("79"); canvas text, never markup.
  const px = devicePixelRatio;
  ctx.font = "bold " + Math.round(10 * px) + "px system-ui, sans-serif";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";  // to the right of its line, whatever uPlot's axes left set
  let lastLabel = -Infinity;
  for (const e of markers.xids) {
    const xe = x(e.ts);
    if (xe < u.bbox.left || xe > u.bbox.left + u.bbox.width) continue;
    ctx.strokeStyle = XID_COLOUR;
    ctx.fillStyle = XID_COLOUR;
    ctx.lineWidth = Math.max(1.5, 1.5 * px);
    ctx.beginPath();
    ctx.moveTo(xe + 0.5, top);
    ctx.lineTo(xe + 0.5, top + height);
    ctx.stroke();
    if (xe - lastLabel > 28 * px) {  // labels of XIDs close together would overlap: first one only
      ctx.fillText(String(e.xid), xe + 3 * px, top + strip + 2 * px);
      lastLabel = xe;
    }
  }
  ctx.restore();
}

function xidsNear(t, span, gpuIndex) {
  // XIDs of one GPU (or of any GPU when gpuIndex is undefined) within span seconds of t.
  return markers.xids.filter((e) => Math.abs(e.ts - t) <= span && (gpuIndex === undefined || e.gpu_index === gpuIndex));
}

function xidLabel(e) {
  return "XID " + e.xid + (e.name ? " (" + e.name + ")" : "");
}

// A host is offline after 4 of its own reporting intervals without a report (the servers view
// and the host-offline alert count the same, server_monitor/jobs/alerts.py OFFLINE_INTERVALS).
const OFFLINE_INTERVALS = 4;

function findOutages(host, range, intervalS) {
  // A gap between two host reports longer than three buckets (and two minutes, and 4 of the
  // agent's reporting intervals: an agent reporting every 300 s has no outage between reports)
  // is an outage.
  const out = [];
  if (!host.length) return out;
  const bucket = host[0].bucket_s;
  const limit = Math.max(3 * bucket, 120, OFFLINE_INTERVALS * (intervalS || 0));
  let prev = null;
  for (const row of host) {
    if (prev !== null && row.ts - prev > limit) out.push({ from: prev + bucket, to: row.ts });
    prev = row.ts;
  }
  const now = range[1];
  if (now - (prev + bucket) > limit) out.push({ from: prev + bucket, to: now, open: true });
  return out;
}

// ---- line charts ------------------------------------------------------------------------
function makeChart(container, title, unitFormat, xs, seriesList, range, yRange) {
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title));
  container.append(box);
  const sparse = xs.length < 60;  // a few buckets: draw the points, a line alone may be invisible
  const opts = {
    width: chartWidth(container),
    height: 200,
    cursor: { sync: { key: "history" } },
    // The x axis always spans the requested range, however few buckets have data.
    scales: { x: { time: true, range: () => range }, y: yRange ? { range: () => yRange } : {} },
    axes: [timeAxis(),
           Object.assign({ values: (u, ticks) => ticks.map(unitFormat), size: fitAxisSize }, axisStyle())],
    series: [{ value: (u, v) => (v === null || v === undefined ? "–" : fmtTime(v)) }].concat(seriesList.map((s, i) => ({
      label: s.label,
      stroke: SERIES_COLORS[i % SERIES_COLORS.length],
      width: 1.5,
      value: (u, v) => (v === null || v === undefined ? "–" : unitFormat(v)),
      points: { show: sparse, size: 5 },
    }))),
    hooks: { draw: [drawMarkers] },
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

// ---- GPU rows charts (holder timeline, heatmap): one row per GPU, cells painted in a hook --
function gpuRowChart(container, opts) {
  // opts: title, cls, gpus (sorted gpu_index list), cells [{row, ts, span, parts:[{colour, frac, label}]}],
  //       describe(cell, part) -> tooltip lines, legend (element), range
  const n = opts.gpus.length;
  const rowHeight = n > 8 ? 18 : 26;
  const box = h("figure", { class: "chart gpu-rows " + opts.cls }, h("figcaption", {}, opts.title));
  if (opts.note) box.append(h("p", { class: "muted chart-note" }, opts.note));
  container.append(box);
  const tip = h("div", { class: "chart-tip", role: "status", hidden: true });
  const rowOf = (v) => n - 1 - Math.floor(v);  // y value -> row (GPU 0 on top)
  const paint = (u) => {
    const ctx = u.ctx;
    const px = devicePixelRatio;
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    ctx.font = Math.round(11 * px) + "px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    // uPlot leaves the context as its last axis drew it (textAlign "right" for a left y axis):
    // without this, each name ended at its band's start, on the previous holder's band.
    ctx.textAlign = "left";
    for (const cell of opts.cells) {
      const x0 = u.valToPos(cell.ts, "x", true), x1 = u.valToPos(cell.ts + cell.span, "x", true);
      const yTop = u.valToPos(n - cell.row, "y", true), yBottom = u.valToPos(n - cell.row - 1, "y", true);
      const inner = (yBottom - yTop) - 2 * px;
      let y = yTop + px;
      for (const part of cell.parts) {
        const hgt = inner * Math.min(1, part.frac);
        ctx.fillStyle = part.colour;
        ctx.fillRect(x0, y, Math.max(1, x1 - x0 + 0.5), hgt);
        y += hgt;
      }
    }
    // Owner names written into long enough runs of the same owner, over the run's full-height
    // part only (a run's first and last cells are often partly held: a name starting there lost
    // its first letter to the white below), in black or white, whichever the band reads in.
    if (opts.labels) {
      for (const run of opts.labels) {
        const x0 = Math.max(u.bbox.left, u.valToPos(run.labelFrom, "x", true));
        const x1 = Math.min(u.bbox.left + u.bbox.width, u.valToPos(run.labelTo, "x", true));
        ctx.fillStyle = textOn(run.colour);
        if (x1 - x0 < 48 * px) continue;
        const yMid = (u.valToPos(n - run.row, "y", true) + u.valToPos(n - run.row - 1, "y", true)) / 2;
        let text = run.text;
        while (text.length > 3 && ctx.measureText(text).width > x1 - x0 - 8 * px) text = text.slice(0, -2) + "…";
        if (ctx.measureText(text).width <= x1 - x0 - 8 * px) ctx.fillText(text, x0 + 4 * px, yMid);
      }
    }
    ctx.restore();
    drawMarkers(u);
  };
  const showTip = (u) => {
    const { left, top } = u.cursor;
    if (left === undefined || left < 0 || top < 0) { tip.hidden = true; return; }
    const t = u.posToVal(left, "x");
    const row = rowOf(u.posToVal(top, "y"));
    if (row < 0 || row >= n) { tip.hidden = true; return; }
    const cell = opts.cellAt(row, t);
    const lines = ["GPU " + opts.gpus[row] + " · " + fmtTime(cell ? cell.ts : t)].concat(opts.describe(cell, t));
    const alert = markers.alerts.filter((a) => a.started_at <= t && (a.resolved_at || Infinity) >= t);
    for (const a of alert) lines.push("⚠ " + a.message);
    const near = (u.scales.x.max - u.scales.x.min) / 100;
    for (const e of xidsNear(t, cell ? Math.max(near, cell.span) : near, opts.gpus[row])) lines.push("✖ " + xidLabel(e) + " at " + fmtTime(e.ts));
    if (markers.outages.some((o) => o.from <= t && o.to >= t)) lines.push("no reports (host offline or unreachable)");
    tip.replaceChildren(...lines.map((line) => h("div", {}, line)));
    tip.hidden = false;
    const x = Math.min(left + 14, u.over.clientWidth - 260);
    tip.style.setProperty("left", Math.max(0, x) + u.over.offsetLeft + "px");
    tip.style.setProperty("top", top + u.over.offsetTop + 14 + "px");
  };
  const chart = new uPlot({
    width: chartWidth(container),
    height: n * rowHeight + 40,
    legend: { show: false },
    cursor: { sync: { key: "history" }, y: false, points: { show: false } },
    scales: { x: { time: true, range: () => opts.range }, y: { range: () => [0, n] } },
    axes: [timeAxis(),
           Object.assign({ size: fitAxisSize, splits: () => opts.gpus.map((_, k) => k + 0.5),
                           values: (u, splits) => splits.map((v) => "GPU " + opts.gpus[rowOf(v)]) }, axisStyle(),
                         { grid: { show: false } })],
    series: [{}, { label: opts.title, stroke: "transparent", paths: () => null, points: { show: false } }],
    // The time axis and padding take a fixed height (about 67 px) of the chart, known once it is
    // laid out: measured then and added, so each GPU row gets rowHeight px whatever the GPU count
    // (with "n * rowHeight + 40" a one-GPU host's rows had no height at all, two GPUs 12 px).
    // uPlot fires "ready" inside its commit and drops a setSize made there: done just after.
    hooks: { draw: [paint], setCursor: [showTip], ready: [(u) => queueMicrotask(() => {
      const frame = u.height - u.bbox.height / devicePixelRatio;
      const want = Math.round(n * rowHeight + frame);
      if (Math.abs(u.height - want) > 0.5) u.setSize({ width: u.width, height: want });
    })] },
  }, [[opts.range[0], opts.range[1]], [null, null]], box);
  box.append(tip);
  box.addEventListener("mouseleave", () => { tip.hidden = true; });
  if (opts.legend) box.append(opts.legend);
  charts.push(chart);
  return chart;
}

function ownerName(row) {
  if (!row.user && !row.container) return "unknown owner";
  return (row.user || "?") + (row.container ? " · " + row.container : "");
}

function holderTimeline(container, holders, gpus, range, cadence) {
  // Colour by user (the question is "who"), users ranked by GPU time so the biggest get the
  // distinct colours; the tooltip names the container or job too.
  const who = (r) => r.user || r.container || "unknown owner";
  const totals = new Map();
  for (const r of holders) totals.set(who(r), (totals.get(who(r)) || 0) + r.share * r.bucket_s);
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([name]) => name);
  const colour = (name) => (ranked.indexOf(name) < OWNER_COLORS.length ? OWNER_COLORS[ranked.indexOf(name)] : OTHER_OWNER);
  const rowIndex = new Map(gpus.map((g, i) => [g, i]));
  const byKey = new Map();
  for (const r of holders) {
    const key = r.gpu_index + ":" + r.ts;
    if (!byKey.has(key)) byKey.set(key, { row: rowIndex.get(r.gpu_index), ts: r.ts, span: r.bucket_s, parts: [], rows: [] });
    const cell = byKey.get(key);
    cell.parts.push({ colour: colour(who(r)), frac: r.share });
    cell.rows.push(r);
  }
  const cells = [...byKey.values()].filter((c) => c.row !== undefined);
  // Owners of one cell are stacked in its row. Owners holding the GPU at the same time each have
  // a share up to 1 (two users' processes in every report: 1 + 1): scaled to the row, else the
  // second owner's band was drawn on the next GPU's row, which looked held by them.
  for (const c of cells) {
    const total = c.parts.reduce((sum, part) => sum + part.frac, 0);
    if (total > 1) for (const part of c.parts) part.frac /= total;
  }
  // Stretched by the host's report step, not the GPU's own: a GPU held in every other report
  // has a typical step of two reports, which would paint the free report between as held.
  stretchSpans(cells, cadence);
  // Runs of the same main owner, for the names written into the bands; a name is written over
  // the run's cells that the owner holds (nearly) all the time (labelFrom..labelTo), where its
  // band has the full row height under the whole name.
  const labels = [];
  for (const g of gpus) {
    const mine = cells.filter((c) => c.row === rowIndex.get(g)).sort((a, b) => a.ts - b.ts);
    let run = null;
    for (const c of mine) {
      const main = who(c.rows[0]);
      const full = c.parts[0].frac >= FULL_BAND_SHARE;
      if (!(run && run.text === main && c.ts <= run.to + 1)) {
        run = { row: rowIndex.get(g), from: c.ts, to: c.ts + c.span, text: main, colour: colour(main),
                labelFrom: null, labelTo: null };
        labels.push(run);
      }
      run.to = c.ts + c.span;
      if (full) {
        if (run.labelFrom === null) run.labelFrom = c.ts;
        run.labelTo = c.ts + c.span;
      }
    }
  }
  labels.splice(0, labels.length, ...labels.filter((run) => run.labelFrom !== null));
  // Names that are users (not a container standing in for an unknown user) link to their page.
  const users = new Set(holders.filter((r) => r.user).map((r) => r.user));
  const legend = h("ul", { class: "owner-legend", "aria-label": "Users, most GPU time first" },
    ranked.slice(0, OWNER_COLORS.length).map((name) => h("li", {},
      h("span", { class: "swatch", style: { background: colour(name) } }), users.has(name) ? userLink(name) : name)),
    ranked.length > OWNER_COLORS.length ? h("li", {}, h("span", { class: "swatch", style: { background: OTHER_OWNER } }),
                                             plural(ranked.length - OWNER_COLORS.length, "other user")) : null);
  const tier = holders.length && holders[0].tier === "1h" ? "from the hourly GPU-hours" : "from the process samples";
  return gpuRowChart(container, {
    title: "Who held each GPU", cls: "holders", gpus, cells, labels, legend, range,
    note: holders.length ? "Coloured by user, " + tier + "; a band's height is the share of the time held; " +
      "hover for the container or job." : "No GPU process in this range.",
    cellAt: (row, t) => cells.find((c) => c.row === row && c.ts <= t && t < c.ts + c.span),
    describe: (cell) => (cell ? cell.rows.map((r) => ownerName(r) + (r.container_kind ? " (" + r.container_kind + ")" : "") +
      " · " + Math.round(r.share * 100) + "% of the time" + (r.vram_mib ? " · " + fmtMiB(r.vram_mib) : "")) : ["free (no process)"]),
  });
}

function typicalStep(times) {
  // The median step between successive times (s), 0 for fewer than two.
  const sorted = times.slice().sort((a, b) => a - b);
  const steps = sorted.slice(1).map((t, i) => t - sorted[i]).filter((d) => d > 0).sort((a, b) => a - b);
  return steps.length ? steps[Math.floor(steps.length / 2)] : 0;
}

function stretchSpans(cells, cadence) {
  // Buckets finer than the reports (the agent's configured interval is 30 s, its reports came
  // every 60 s) would leave stripes between two reports: each cell lasts until its row's next
  // cell, at most `cadence` s (the typical step between reports; without it, the row's own
  // typical step between cells). Changes cells' span in place.
  const byRow = new Map();
  for (const c of cells) (byRow.get(c.row) || byRow.set(c.row, []).get(c.row)).push(c);
  for (const list of byRow.values()) {
    list.sort((a, b) => a.ts - b.ts);
    const step = cadence === undefined ? typicalStep(list.map((c) => c.ts)) : cadence;
    list.forEach((c, i) => {
      const next = i + 1 < list.length ? list[i + 1].ts - c.ts : step;
      c.span = Math.max(c.span, Math.min(step, next));
    });
  }
}

function utilizationHeatmap(container, gpu, gpus, range) {
  const rowIndex = new Map(gpus.map((g, i) => [g, i]));
  const cells = gpu.filter((r) => rowIndex.has(r.gpu_index)).map((r) => ({
    row: rowIndex.get(r.gpu_index), ts: r.ts, span: r.bucket_s, r,
    parts: [{ colour: r.utilization_gpu === null ? (cssVar("--bar-bg") || "#555") : heatColor(r.utilization_gpu), frac: 1 }],
  }));
  stretchSpans(cells);
  const scale = h("div", { class: "heat-scale", "aria-hidden": "true" },
    h("span", {}, "0%"), h("span", { class: "heat-bar" }), h("span", {}, "100%"),
    h("span", { class: "muted" }, " · grey: not reported (MIG)"));
  return gpuRowChart(container, {
    title: "GPU utilization", cls: "heatmap", gpus, cells, range, legend: scale,
    note: "Average utilization.gpu per GPU and time bucket; hover for values.",
    cellAt: (row, t) => cells.find((c) => c.row === row && c.ts <= t && t < c.ts + c.span),
    describe: (cell) => (cell ? [cell.r.utilization_gpu === null ? "utilization not reported (MIG or driver)"
      : "utilization " + fmtPct(cell.r.utilization_gpu) + " avg, " + fmtPct(cell.r.utilization_gpu_max) + " max",
      "memory " + fmtMiB(cell.r.memory_used_mib) + " · " + (cell.r.temperature_gpu_c === null ? "–" : Math.round(cell.r.temperature_gpu_c) + " °C") +
      " · " + (cell.r.power_draw_w === null ? "–" : Math.round(cell.r.power_draw_w) + " W")] : ["no data"]),
  });
}

// ---- page -----------------------------------------------------------------------------
function describeRange(hours, host, gpu) {
  if (!host.length) return "No reports in this range.";
  const samples = host.reduce((n, r) => n + (r.samples || 0), 0);
  const each = (rows) => (rows[0].tier === "raw" && rows[0].bucket_s <= 60 ? "every report" : "one point per " + fmtSpan(rows[0].bucket_s));
  return "Last " + fmtSpan(hours * 3600) + " · " + plural(host.length, "point") + " from " + plural(samples, "report") +
    " · host charts: " + each(host) + (gpu.length ? ", GPU charts: " + each(gpu) : "") +
    (host[0].tier === "raw" ? " (raw samples)" : " (from " + (host[0].tier === "5m" ? "5-minute" : "hourly") + " averages)");
}

function alertList(alerts) {
  const box = document.getElementById("alert-list");
  if (!alerts.length && !markers.outages.length) { box.hidden = true; box.replaceChildren(); return; }
  const items = alerts.map((a) => h("li", { class: "alert-" + (a.severity === "critical" ? "crit" : "warn") },
    fmtTime(a.started_at) + " → " + (a.resolved_at ? fmtTime(a.resolved_at) : "still firing") + " · ", a.message))
    .concat(markers.outages.map((o) => h("li", { class: "outage" }, fmtTime(o.from) + " → " +
      (o.open ? "now" : fmtTime(o.to)) + " · no reports for " + fmtSpan(o.to - o.from))));
  box.replaceChildren(h("h2", {}, "In this range: ", plural(alerts.length, "alert"), ", ", plural(markers.outages.length, "outage")),
    h("p", { class: "muted" }, "Marked on every chart: a red (critical) or amber (warning) strip with a dashed start line; grey = no reports."),
    h("ul", {}, items));
  box.hidden = false;
}

function xidList(xids) {
  // Time, GPU, code, NVIDIA's name and the kernel's text (hostile agent text: text nodes only).
  const box = document.getElementById("xid-list");
  if (!xids.length) { box.hidden = true; box.replaceChildren(); return; }
  const rows = xids.slice().reverse().map((e) => h("tr", { class: e.critical ? "xid-critical" : null },
    h("td", {}, fmtTime(e.ts)), h("td", {}, e.gpu_index === null ? (e.pci_bus_id || "–") : "GPU " + e.gpu_index),
    h("td", { class: "num" }, String(e.xid)), h("td", {}, e.name || "–"), h("td", { class: "xid-message" }, e.message || "")));
  box.replaceChildren(
    h("h2", {}, "XID errors in this range: " + xids.length + (xids.length >= 500 ? " (the first 500)" : "")),
    h("p", { class: "muted" }, "Marked on every chart by a violet line with the code; newest first."),
    h("table", { class: "xid-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "GPU"), h("th", {}, "XID"), h("th", {}, "Name"), h("th", {}, "Kernel message"))),
      h("tbody", {}, rows)));
  box.hidden = false;
}

async function load(hours) {
  const section = document.getElementById("ranges");
  const serverId = section.dataset.serverId;
  const errorBox = document.getElementById("load-error");
  document.querySelectorAll(".range").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.hours) === hours)));
  try {
    const q = { server_id: serverId, hours: String(hours) };
    const [servers, host, gpu, holders, alerts, xids, disks, temps] = await Promise.all([
      fetchQuery("servers"), fetchQuery("server_history", q), fetchQuery("gpu_history", q),
      fetchQuery("gpu_holders_history", q), fetchQuery("server_alerts", q), fetchQuery("server_xids", q),
      fetchQuery("disk_history", q), fetchQuery("temperature_history", q),
    ]);
    const server = servers.find((s) => String(s.server_id) === serverId);
    document.getElementById("server-name").textContent = server ? server.name : "unknown server " + serverId;
    document.getElementById("tier").textContent = describeRange(hours, host, gpu);
    errorBox.hidden = true;
    const now = Date.now() / 1000;
    const range = [now - hours * 3600, now];
    markers = { alerts, outages: findOutages(host, range, server && server.interval_s), xids };
    alertList(alerts);
    xidList(xids);
    draw(host, gpu, holders, range, disks, temps);
  } catch (e) {
    errorBox.textContent = "Could not load history: " + e.message;
    errorBox.hidden = false;
  }
}

function draw(host, gpu, holders, range, disks, temps) {
  charts.forEach((c) => c.destroy());
  charts = [];
  const container = document.getElementById("charts");
  container.replaceChildren();
  const gpus = Array.from(new Set(gpu.map((r) => r.gpu_index).concat(holders.map((r) => r.gpu_index))))
    .filter((g) => g !== null).sort((a, b) => a - b);
  const pct = (v) => (v === null || v === undefined ? "–" : v.toFixed(0) + "%");
  if (gpus.length) {
    holderTimeline(container, holders, gpus, range, typicalStep(host.map((r) => r.ts)));
    utilizationHeatmap(container, gpu, gpus, range);
  }
  const xs = host.map((r) => r.ts);
  makeChart(container, "CPU", pct, xs, [
    { label: "avg", values: host.map((r) => r.cpu_percent) },
    { label: "max", values: host.map((r) => r.cpu_percent_max) }], range, [0, 100]);
  makeChart(container, "Memory", fmtBytes, xs, [
    { label: "used", values: host.map((r) => r.memory_used_bytes) },
    { label: "total", values: host.map((r) => r.memory_total_bytes) }], range);
  makeChart(container, "Network", fmtRate, xs, [
    { label: "rx", values: host.map((r) => r.net_rx_bps) },
    { label: "tx", values: host.map((r) => r.net_tx_bps) }], range);
  hostExtraCharts(container, disks || [], temps || [], range);
  const byGpu = {};
  for (const row of gpu) (byGpu["GPU " + row.gpu_index] = byGpu["GPU " + row.gpu_index] || []).push(row);
  if (!Object.keys(byGpu).length) return;
  for (const [title, key, format] of [["GPU memory used", "memory_used_mib", fmtMiB],
                                       ["GPU temperature", "temperature_gpu_c", (v) => (v === null ? "–" : v.toFixed(0) + " °C")],
                                       ["GPU power", "power_draw_w", (v) => (v === null ? "–" : v.toFixed(0) + " W")]]) {
    const { xs: gx, out } = alignSeries(byGpu, key);
    makeChart(container, title, format, gx, Object.entries(out).map(([label, values]) => ({ label, values })), range);
  }
  gpuDepthCharts(container, byGpu, range);
}

// ---- GPU depth (issue 15): throttling, PCIe link, media engines, ECC, thermal headroom -------
function counterShare(rows, key) {
  // Share of each bucket's time spent in a throttle state, from the growth of its cumulative
  // µs counter since the GPU's previous bucket (a drop is a driver reload: no value).
  let prev = null;
  return rows.map((r) => {
    const v = r[key];
    let share = null;
    if (prev && v !== null && prev[key] !== null && v >= prev[key] && r.ts > prev.ts) {
      share = Math.min(100, (v - prev[key]) / 1e6 / (r.ts - prev.ts) * 100);
    }
    if (v !== null) prev = r;
    return share;
  });
}

function gpuDepthCharts(container, byGpu, range) {
  const pct = (v) => (v === null || v === undefined ? "–" : v.toFixed(v < 10 && v > 0 ? 1 : 0) + "%");
  const int = (unit) => (v) => (v === null || v === undefined ? "–" : (unit === "Gen " ? unit + Math.round(v) : Math.round(v) + unit));
  for (const rows of Object.values(byGpu)) {
    const power = counterShare(rows, "sw_power_cap_us");
    const swThermal = counterShare(rows, "sw_thermal_slowdown_us");
    const hwThermal = counterShare(rows, "hw_thermal_slowdown_us");
    rows.forEach((r, i) => {
      r.power_capped_pct = power[i];
      r.thermal_pct = swThermal[i] === null && hwThermal[i] === null ? null : Math.min(100, (swThermal[i] || 0) + (hwThermal[i] || 0));
    });
  }
  // Drawn only when they have something to show, so a healthy server's page stays short:
  // throttling, media engines and ECC errors when any is above zero, the PCIe charts when a
  // GPU's link ran below the best it reached in the range; the thermal headroom always.
  const rowsOf = () => Object.values(byGpu);
  const anyAbove = (key) => rowsOf().some((rows) => rows.some((r) => r[key] > 0));
  const downgraded = (minKey, maxKey) => rowsOf().some((rows) => {
    const best = Math.max(...rows.map((r) => (r[maxKey] === null || r[maxKey] === undefined ? -Infinity : r[maxKey])));
    return rows.some((r) => r[minKey] !== null && r[minKey] !== undefined && r[minKey] < best);
  });
  const specs = [
    ["Power capped (% of time)", "power_capped_pct", pct, "From clocks_event_reasons_counters.sw_power_cap growth per bucket.", anyAbove],
    ["Thermal slowdown (% of time)", "thermal_pct", pct, "Software + hardware thermal slowdown counters' growth per bucket.", anyAbove],
    ["PCIe link generation (lowest in bucket)", "pcie_link_gen_min", int("Gen "), "A drop at idle is the driver saving power; under load it is a degraded link.",
     () => downgraded("pcie_link_gen_min", "pcie_link_gen_max")],
    ["PCIe link width (lowest in bucket)", "pcie_link_width_min", int("×"), null, () => downgraded("pcie_link_width_min", "pcie_link_width_max")],
    ["Encoder utilization", "utilization_encoder_max", pct, "Highest in each bucket.", anyAbove],
    ["Decoder utilization", "utilization_decoder_max", pct, "Highest in each bucket.", anyAbove],
    ["ECC errors, corrected (volatile count)", "ecc_errors_corrected_volatile_total", int(""), "Since the driver loaded; a steady climb is a GPU to watch.", anyAbove],
    ["ECC errors, uncorrected (volatile count)", "ecc_errors_uncorrected_volatile_total", int(""), null, anyAbove],
    ["Thermal headroom (tlimit, lowest in bucket)", "temperature_gpu_tlimit_c_min", (v) => (v === null || v === undefined ? "–" : v.toFixed(0) + " °C"),
     "Degrees below the GPU's slowdown temperature.", (key) => rowsOf().some((rows) => rows.some((r) => r[key] !== null && r[key] !== undefined))],
  ];
  for (const [title, key, format, note, shown] of specs) {
    if (!shown(key)) continue;
    const { xs: gx, out } = alignSeries(byGpu, key);
    const chart = makeChart(container, title, format, gx, Object.entries(out).map(([label, values]) => ({ label, values })), range);
    chart.root.parentElement.dataset.series = key;
    if (note) chart.root.parentElement.querySelector("figcaption").after(h("p", { class: "muted chart-note" }, note));
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
  window.addEventListener("resize", () => charts.forEach((c) => c.setSize({ width: chartWidth(document.getElementById("charts")),
                                                                            height: c.height })));
  load(currentHours);
});

// ---- disks and host temperatures (issue 26 item 7) ------------------------------------------
// disk_history: used % per mount point (as Beszel shows it), from the 5-minute / hourly roll-ups
// beyond 48 h; temperature_history: each sensor chip's hottest reading (hwmon), °C.
function byName(rows, key) {
  const out = {};
  for (const r of rows) (out[r[key]] = out[r[key]] || []).push(r);
  return out;
}

function hostExtraCharts(container, disks, temps, range) {
  if (disks.length) {
    const mounts = byName(disks, "mountpoint");
    const { xs, out } = alignSeries(mounts, "used_percent");
    const chart = makeChart(container, "Disk used (% per mount point)", (v) => (v === null || v === undefined ? "–" : v.toFixed(1) + "%"), xs,
      Object.entries(out).map(([label, values]) => ({ label, values })), range, [0, 100]);
    chart.root.closest("figure").classList.add("disk-history");
    chart.root.closest("figure").dataset.mounts = String(Object.keys(mounts).length);
  }
  if (temps.length) {
    const chips = byName(temps, "sensor");
    const { xs, out } = alignSeries(chips, "temperature_c");
    const chart = makeChart(container, "Host temperatures (hottest reading per sensor chip)",
      (v) => (v === null || v === undefined ? "–" : v.toFixed(0) + " °C"), xs,
      Object.entries(out).map(([label, values]) => ({ label, values })), range);
    chart.root.closest("figure").classList.add("temperature-history");
  }
}
