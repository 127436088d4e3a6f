// Free-GPU finder: the free_gpus canned query, one page of hosts at a time (best first), and the
// command line that does the same. The search is in the page's URL (?count=4&model=H100&group=cluster-a&page=2),
// so a link to it shows the same question (issue 24 item 4).
"use strict";

const PAGE_SIZE = 20;
const FIELDS = ["count", "min_free_gib", "max_util", "model", "group"];

// Copy to the clipboard where the browser allows it (https or localhost); else select the text.
function copyButton(text) {
  const button = h("button", { type: "button", class: "small copy" }, "Copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(button.previousSibling.previousSibling);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      button.textContent = "Selected: Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  });
  return button;
}

// What free_gpus may offer (canned_queries/free_gpus.sql): nvidia-smi indexes, AMD/Intel indexes,
// or one MIG device UUID (MIG-<uuid>, or the pre-R470 MIG-GPU-<uuid>/<gi>/<ci>). Anything else
// came from a hostile or broken agent (a MIG "uuid" with a newline and a command, N7): shown as
// text, never offered for the clipboard.
const HEX_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
const ENV_GRAMMAR = new RegExp("^(?:CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=\\d{1,3}(?:,\\d{1,3})*" +
  "|(?:ROCR_VISIBLE_DEVICES|ZE_AFFINITY_MASK)=\\d{1,3}(?:\\.\\d{1,3})?(?:,\\d{1,3}(?:\\.\\d{1,3})?)*" +
  "|CUDA_VISIBLE_DEVICES=MIG-(?:" + HEX_UUID + "|GPU-" + HEX_UUID + "/\\d{1,4}/\\d{1,4}))$");

function envCell(env) {
  const text = String(env == null ? "" : env);
  if (ENV_GRAMMAR.test(text)) return [h("code", { class: "env" }, text), " ", copyButton(text)];
  return [h("code", { class: "env invalid" }, JSON.stringify(text).slice(0, 120)),
    h("span", { class: "muted" }, " (not a device list: not offered for copying)")];
}

// The form's question and the page number, from the URL (what a shared link carries).
function fromUrl() {
  const url = new URLSearchParams(location.search);
  const form = document.getElementById("free-form");
  for (const name of FIELDS) {
    if (url.has(name)) form.elements[name].value = url.get(name);
    else form.elements[name].value = form.elements[name].defaultValue;
  }
  const page = parseInt(url.get("page") || "1", 10);
  return Number.isFinite(page) && page > 0 ? page : 1;
}

function toUrl(page) {
  const form = new FormData(document.getElementById("free-form"));
  const url = new URLSearchParams();
  for (const name of FIELDS) {
    const value = String(form.get(name) || "").trim();
    const field = document.getElementById("free-form").elements[name];
    if (value !== "" && value !== field.defaultValue) url.set(name, value);
  }
  if (page > 1) url.set("page", String(page));
  const query = url.toString();
  return location.pathname + (query ? "?" + query : "");
}

function topology(r) {
  if (r.mig_profile) return "MIG " + r.mig_profile;
  const parts = [];
  if (r.link) parts.push(r.link);
  if (r.numa_node !== null && r.numa_node !== undefined) parts.push("NUMA " + r.numa_node);
  return parts.join(" · ") || "–";
}

function pagerButton(label, page, rel) {
  const button = h("button", { type: "button", class: "small " + rel, dataset: { page: String(page) } }, label);
  button.addEventListener("click", () => { history.pushState(null, "", toUrl(page)); find(page); });
  return button;
}

// The viewer's host groups (host_groups canned query) fill the group field's list; a group that is
// not among them is said to be unknown or outside the viewer's scope, never "no free GPUs".
async function groupProblem(group) {
  let rows;
  try { rows = await fetchQuery("host_groups", group ? { group } : {}); } catch (e) { return null; }
  const mine = rows.filter((r) => r.in_scope).map((r) => String(r.grp));
  document.getElementById("group-list").replaceChildren(...mine.map((g) => h("option", { value: g })));
  if (!group || mine.includes(group)) return null;
  const pick = mine.length ? " Pick one of yours: " + mine.slice(0, 12).join(", ") + (mine.length > 12 ? ", … (see the field's list)." : ".")
    : " None of the servers you may see is in a host group.";
  return (rows.some((r) => r.grp === group && !r.in_scope) ? "Host group \u201c" + group + "\u201d is not in your scope." :
    "No host group named \u201c" + group + "\u201d.") + pick;
}

async function find(page) {
  const form = new FormData(document.getElementById("free-form"));
  const params = { count: form.get("count") || "1", min_free_mib: String(Math.round(Number(form.get("min_free_gib") || 0) * 1024)) };
  if (form.get("max_util")) params.max_util = form.get("max_util");
  if (form.get("model")) params.model = form.get("model");
  // Host group (issue 24 item 1): only servers in it, from any source (agent, Slurm partition, admin).
  if (String(form.get("group") || "").trim()) params.group = String(form.get("group")).trim();
  const errorBox = document.getElementById("load-error");
  try {
    const [rows, wrongGroup] = await Promise.all([
      fetchQuery("free_gpus", Object.assign({ limit: String(PAGE_SIZE), offset: String((page - 1) * PAGE_SIZE) }, params)),
      groupProblem(params.group || "")]);
    errorBox.hidden = true;
    document.querySelector("#free-table tbody").replaceChildren(...(rows.length ? rows.map((r) => h("tr", {},
      h("td", {}, h("a", { href: "/#server-" + Number(r.server_id) }, r.server)),
      h("td", { dataset: { label: "Free now" } }, r.mig_profile ? "1 MIG instance" : r.free_gpus + " free" + (r.free_indexes ? ": " + r.free_indexes : "")),
      h("td", {}, ...envCell(r.env),
        r.vendor === "amd" ? h("span", { class: "muted" }, " (or HIP_VISIBLE_DEVICES)") : ""),
      h("td", { class: "num", dataset: { label: "Least free memory" } }, fmtMiB(r.min_free_mib)),
      h("td", { dataset: { label: "Topology" } }, topology(r)),
      h("td", { dataset: { label: "Models" } }, r.gpu_models || ""))) :
      [h("tr", {}, h("td", { colSpan: 6, class: wrongGroup ? "group-problem" : "" }, wrongGroup ||
        (page > 1 ? "No more hosts: this page is past the last one." : "No host has that many free GPUs right now.")))]));
    const total = rows.length ? rows[0].total : 0;
    const first = (page - 1) * PAGE_SIZE + 1;
    document.getElementById("free-count").textContent = total ?
      first + "–" + (first + rows.length - 1) + " of " + total.toLocaleString() + (total === 1 ? " offer" : " offers") : "";
    document.getElementById("free-pager").replaceChildren(
      ...(page > 1 ? [pagerButton("‹ Previous", page - 1, "prev")] : []),
      ...(first + rows.length - 1 < total ? [pagerButton("Next ›", page + 1, "next")] : []));
    const query = new URLSearchParams(Object.assign({ _shape: "array" }, params)).toString();
    document.getElementById("one-liner").textContent =
      "printf 'Authorization: Bearer %s\\n' \"$SM_TOKEN\" | curl -sf -H @- '" + location.origin +
      "/monitor/free_gpus.json?" + query + "' \\\n" +
      "  | python3 -c 'import json,sys; [print(r[\"server\"], r[\"env\"]) for r in json.load(sys.stdin)]'";
  } catch (e) {
    errorBox.textContent = "Could not load: " + e.message;
    errorBox.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("free-form").addEventListener("submit", (event) => {
    event.preventDefault();
    history.pushState(null, "", toUrl(1));
    find(1);
  });
  window.addEventListener("popstate", () => find(fromUrl()));
  find(fromUrl());
});
