// Helpers shared by the hub's pages (dashboard.js, history.js). Classic script: globals.
// Agent-supplied values only ever reach the page through h()'s text nodes.
"use strict";

// ---- tiny DOM helper: attributes are set as properties, children as text -------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") for (const [p, v] of Object.entries(value)) el.style.setProperty(p, v);
    else if (key.startsWith("aria-") || key === "role" || key === "for") el.setAttribute(key, String(value));
    else el[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// ---- formatting -------------------------------------------------------------------
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 100 ? 1 : 0)) + " " + units[i];
}
function fmtMiB(n) { return n === null || n === undefined ? "–" : fmtBytes(n * 1048576); }
function fmtRate(n) { return n === null || n === undefined ? "–" : fmtBytes(n) + "/s"; }
function fmtPct(n) { return n === null || n === undefined ? "–" : Math.round(n) + "%"; }
function pct(used, total) { return used === null || used === undefined || !total ? null : (100 * used) / total; }
function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return d + "d " + hr + "h";
  if (hr) return hr + "h " + m + "m";
  return m + "m";
}
// Phone layout (dashboard.css, ≤ 800 px): a table's rows become cards and its header row is hidden,
// so each cell says its column (data-label, shown as "Column: value"), as /free's table does.
function labelFromHead(table) {
  const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const tr of table.tBodies[0].rows) {
    [...tr.cells].forEach((td, i) => { if (heads[i] && td.colSpan === 1 && !td.dataset.label) td.dataset.label = heads[i]; });
  }
}

// Natural order of names: dgx-a9 < dgx-a10 < dgx-a100 (digit runs as numbers, case ignored), the
// same key as servers.name_key and natural_key() (server_monitor/core/natural.py sort_key: lower
// case; each ASCII digit run without leading zeros as <digits of its length><length><digits>),
// compared by code point as SQLite compares the stored key, so every page and /admin agree.
// Only the first 1,024 code points count (natural.py MAX_KEY_CHARS).
const naturalKeys = new Map();  // name -> key (a 10,000-server sort compares ~140,000 times)
const NATURAL_KEY_CHARS = 1024;
function naturalKey(s) {
  s = s == null ? "" : String(s);
  let key = naturalKeys.get(s);
  if (key === undefined) {
    const cut = s.length > NATURAL_KEY_CHARS ? Array.from(s).slice(0, NATURAL_KEY_CHARS).join("") : s;
    key = cut.toLowerCase().replace(/[0-9]+/g, (run) => {
      const digits = run.replace(/^0+/, "") || "0", length = String(digits.length);
      return length.length + length + digits;
    });
    if (naturalKeys.size >= 100000) naturalKeys.clear();
    naturalKeys.set(s, key);
  }
  return key;
}
function naturalCompare(a, b) {
  const x = naturalKey(a), y = naturalKey(b);
  if (x === y) return 0;
  let i = 0;
  while (i < x.length && i < y.length && x.charCodeAt(i) === y.charCodeAt(i)) i++;
  if (i === x.length) return -1;
  if (i === y.length) return 1;
  return x.codePointAt(i) - y.codePointAt(i);  // code points, not UTF-16 units: UTF-8 byte order
}

// A duration in words, the one helper every page shares: "45 s", "12 min", "5 h 59 min", "6 h"
// (rounded to whole minutes first, so 5 h 59.7 min is "6 h", never "5 h 60 min"), "3 d" from 48 h.
function fmtAge(s) {
  s = Math.max(0, Math.round(s));
  if (s < 90) return s + " s";
  const minutes = Math.round(s / 60);
  if (minutes < 90) return minutes + " min";
  if (s < 172800) { const hr = Math.floor(minutes / 60), m = minutes % 60; return hr + " h" + (m ? " " + m + " min" : ""); }
  return Math.round(s / 86400) + " d";
}
function fmtAgo(s) {
  if (s === null || s === undefined) return "never";
  if (s < 90) return Math.max(0, Math.round(s)) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function fmtLocalTime(epoch) {
  if (!epoch) return "–";
  const d = new Date(epoch * 1000);
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }) + " (" + tz + ")";
}
// /admin, /admin/rules and /account show times one way: "2026-12-07 05:56 UTC" (the hub's
// server-side format, fmt_utc / notify_when in plugins/; also the notices' and nudges' times).
function fmtUtcTime(epoch) {
  if (!epoch) return "–";
  return new Date(epoch * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}
function level(value, warn, crit) {
  if (value === null || value === undefined) return "unknown";
  return value >= crit ? "crit" : value >= warn ? "warn" : "ok";
}

// ---- holder names: every holder name links to its per-user page ---------------------
function userHref(name) {
  // /users/<name> percent-encoded; "." and ".." would be resolved as path segments by the
  // browser (encoded or not), so they go in the query string instead.
  return name === "." || name === ".." ? "/users?name=" + encodeURIComponent(name) : "/users/" + encodeURIComponent(name);
}
function userLink(name, text, attrs) {
  // A link to the user's page with the name as text (a text node, never HTML); the unknown
  // owner (null, "" or "(unknown)") is plain text.
  if (name === null || name === undefined || name === "" || name === "(unknown)") return text === undefined ? "(unknown)" : text;
  return h("a", Object.assign({ href: userHref(name), class: "user-link" }, attrs || {}), text === undefined ? name : text);
}

function userLinks(names) {
  // Several holder names (an array), each userLink()ed, separated by ", ".
  return names.flatMap((u, i) => (i ? [", ", userLink(u)] : [userLink(u)]));
}
function linkHolders(root) {
  // Server-rendered pages (/admin) mark a holder name as <span data-holder="name">name</span>;
  // each becomes userLink(name), so a holder name links the same way on every page.
  for (const el of (root || document).querySelectorAll("[data-holder]")) el.replaceWith(userLink(el.dataset.holder));
}
document.addEventListener("DOMContentLoaded", () => linkHolders(document));
// Server-rendered tables marked data-phone-labels (/admin, /account): on a phone each cell says
// its column, like the tables built in JavaScript (labelFromHead).
document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table[data-phone-labels]")) if (table.tBodies.length) labelFromHead(table);
});

// ---- data ------------------------------------------------------------------------
async function fetchQuery(name, params) {
  const query = new URLSearchParams(Object.assign({ _shape: "objects" }, params || {}));
  const response = await fetch("/monitor/" + name + ".json?" + query.toString(), {
    headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
  });
  if (response.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(location.pathname)); throw new Error("login required"); }
  if (!response.ok) throw new Error(name + ": HTTP " + response.status);
  const body = await response.json();
  // Datasette caps rows (max_returned_rows); never show a silently shortened fleet.
  if (body.truncated) throw new Error(name + ": more rows than the hub's max_returned_rows setting");
  return body.rows;
}

// ---- theme (the saved choice was applied before paint by theme-init.js) -----------
function setupTheme() {
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const next = document.documentElement.getAttribute("data-theme") === "light" ? "dark" : "light";
    document.documentElement.setAttribute("data-theme", next);
    try { localStorage.setItem("sm-theme", next); } catch (e) { /* storage blocked */ }
  });
}

document.addEventListener("DOMContentLoaded", setupTheme);

// In-page jumps (the dashboard's "Idle holders", "Legend" links) land below the sticky top bar,
// however many lines it wraps to on a phone: the page's scroll padding follows the bar's height.
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.querySelector(".topbar");
  if (!bar) return;
  const fit = () => { document.documentElement.style.scrollPaddingTop = (bar.offsetHeight + 8) + "px"; };
  fit();
  window.addEventListener("resize", fit);
});
