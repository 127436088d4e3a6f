// Free-GPU finder: the free_gpus canned query, and the command line that does the same.
"use strict";

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

async function find(event) {
  if (event) event.preventDefault();
  const form = new FormData(document.getElementById("free-form"));
  const params = { count: form.get("count") || "1", min_free_mib: String(Math.round(Number(form.get("min_free_gib") || 0) * 1024)) };
  if (form.get("max_util")) params.max_util = form.get("max_util");
  if (form.get("model")) params.model = form.get("model");
  const errorBox = document.getElementById("load-error");
  try {
    const rows = await fetchQuery("free_gpus", params);
    errorBox.hidden = true;
    document.querySelector("#free-table tbody").replaceChildren(...(rows.length ? rows.map((r) => h("tr", {},
      h("td", {}, h("a", { href: "/#server-" + Number(r.server_id) }, r.server)),
      h("td", {}, r.mig_profile ? "1 MIG instance" : r.free_gpus + " free" + (r.free_indexes ? ": " + r.free_indexes : "")),
      h("td", {}, ...envCell(r.env),
        r.vendor === "amd" ? h("span", { class: "muted" }, " (or HIP_VISIBLE_DEVICES)") : ""),
      h("td", { class: "num" }, fmtMiB(r.min_free_mib)), h("td", {}, r.gpu_models || ""))) :
      [h("tr", {}, h("td", { colSpan: 5 }, "No host has that many free GPUs right now."))]));
    const query = new URLSearchParams(Object.assign({ _shape: "array" }, params)).toString();
    document.getElementById("one-liner").textContent =
      "curl -s -b cookies.txt '" + location.origin + "/monitor/free_gpus.json?" + query + "' \\\n" +
      "  | python3 -c 'import json,sys; [print(r[\"server\"], r[\"env\"]) for r in json.load(sys.stdin)]'";
  } catch (e) {
    errorBox.textContent = "Could not load: " + e.message;
    errorBox.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const howto = document.getElementById("cookie-howto");
  howto.textContent = howto.textContent.replaceAll("HUB", location.origin);
  document.getElementById("free-form").addEventListener("submit", find);
  find();
});
