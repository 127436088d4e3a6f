// Admin page helpers: copy buttons for one-time secrets, local times for epoch cells, the GPU
// page's selection, and the scope picker (issue 24 item 3): a scope is picked by typing, never
// from a list of every server. Text from agents (server names) is only ever set as textContent.
"use strict";

// Hidden input name per option kind: a chosen option is posted as <input name=FIELD value=id>
// (a server by its id, a host group by its name; sources in plugins/sm_admin.py SCOPE_SOURCES).
const SCOPE_FIELDS = { server: "servers", group: "groups" };
const SEARCH_DELAY_MS = 150;

// The value a chosen option posts: a server's numeric id, a host group's name.
const optionValue = (option) => option.kind === "server" ? String(Number(option.id)) : String(option.id);

async function scopeOptions(q, all, kind) {
  const url = "/admin/scope-options?q=" + encodeURIComponent(q) + (all ? "&all=1" : "") +
    (kind ? "&kind=" + encodeURIComponent(kind) : "");
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error("HTTP " + response.status);
  return response.json();
}

// One search box with its list of matches; onPick(option) when one is chosen.
function attachSearch(root, onPick, extraButtons, kind) {
  const input = root.querySelector(".picker-search");
  const list = root.querySelector(".picker-options");
  const status = root.querySelector(".picker-status");
  let timer = null;
  let asked = 0;
  let shown = [];

  const close = () => { list.hidden = true; list.replaceChildren(); shown = []; };
  const show = async () => {
    const q = input.value.trim();
    const ticket = ++asked;
    if (!q) { close(); status.textContent = ""; return; }
    let answer;
    try { answer = await scopeOptions(q, false, kind); }
    catch (e) { if (ticket === asked) status.textContent = "Could not search: " + e.message; return; }
    if (ticket !== asked) return;  // a newer keystroke's answer wins
    shown = answer.options;
    const items = shown.map((option) => {
      const button = h("button", { type: "button", class: "picker-option" },
        h("span", { class: "picker-option-name" }, option.name), " ",
        h("span", { class: "muted" }, option.detail || ""));
      button.addEventListener("click", () => { onPick(option); input.focus(); });
      return h("li", {}, button);
    });
    items.push(...(extraButtons ? extraButtons(q, answer) : []));
    list.replaceChildren(...items);
    list.hidden = items.length === 0;
    status.textContent = answer.total === 0 ? "Nothing matches “" + q + "”." :
      answer.total > shown.length ? shown.length + " of " + answer.total.toLocaleString() + " matches shown; type more to narrow." :
      answer.total + (answer.total === 1 ? " match." : " matches.");
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(show, SEARCH_DELAY_MS); });
  // Text already in the box (typed while the page was still loading, or put back by the
  // browser on Back) is searched at once: no input event will come for it.
  if (input.value.trim()) show();
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {  // never submit the form from the search box: take the first match
      e.preventDefault();
      if (shown.length) onPick(shown[0]);
    } else if (e.key === "Escape") {
      close();
    }
  });
  return { input, close, status };
}

function scopePicker(fieldset) {
  const chips = fieldset.querySelector(".chips");
  const count = fieldset.querySelector(".chip-count");
  const some = fieldset.querySelector("input[name=scope][value=some]");
  const has = (option) => chips.querySelector(
    `li[data-kind="${CSS.escape(option.kind)}"][data-id="${CSS.escape(optionValue(option))}"]`);
  const update = () => { count.textContent = chips.children.length.toLocaleString() + " chosen"; };
  const chip = (option) => {
    const remove = h("button", { type: "button", class: "chip-remove", "aria-label": "Remove " + option.name }, "×");
    const li = h("li", { class: "chip", dataset: { kind: option.kind, id: optionValue(option) } },
      h("input", { type: "hidden", name: SCOPE_FIELDS[option.kind], value: optionValue(option) }),
      option.kind === "group" ? h("span", { class: "chip-kind muted" }, "group ") : null,
      h("span", { class: "chip-name" }, option.name), remove);
    return li;
  };
  const add = (options) => {
    const fresh = options.filter((o) => SCOPE_FIELDS[o.kind] && !has(o)).map(chip);
    chips.append(...fresh);
    some.checked = true;
    update();
    return fresh.length;
  };
  chips.addEventListener("click", (e) => {
    if (e.target.classList.contains("chip-remove")) { e.target.closest("li").remove(); update(); }
  });
  fieldset.querySelector(".chips-clear").addEventListener("click", () => { chips.replaceChildren(); update(); });
  const search = attachSearch(fieldset, (option) => {
    add([option]);
    search.status.textContent = "Added " + option.name + ".";
  }, (q, answer) => {
    if (answer.total < 2) return [];
    const all = h("button", { type: "button", class: "picker-option picker-all" },
      "Add all " + answer.total.toLocaleString() + " matching “" + q + "”");
    all.addEventListener("click", async () => {
      try {
        const every = await scopeOptions(q, true);
        const added = add(every.options);
        search.status.textContent = "Added " + added.toLocaleString() + ".";
        search.close();
      } catch (e) { search.status.textContent = "Could not add: " + e.message; }
    });
    return [h("li", {}, all)];
  });
  update();
}

function singlePicker(root) {  // data-single-picker="server": one option of that kind
  const hidden = root.querySelector("input[type=hidden]");
  const search = attachSearch(root, (option) => {
    hidden.value = String(Number(option.id));
    search.input.value = option.name;
    search.close();
    search.status.textContent = "Chosen: " + option.name + ".";
  }, null, root.dataset.singlePicker || "server");
  search.input.addEventListener("input", () => { hidden.value = ""; });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("button.copy").forEach((button) => button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.copy);
    input.select();
    try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }
    catch (e) { button.textContent = "Press Ctrl+C"; }
  }));
  document.querySelectorAll("[data-scope-picker]").forEach(scopePicker);
  document.querySelectorAll("[data-single-picker]").forEach(singlePicker);
  // GPUs: select the rows of this page, count the selection (one Save for all).
  const table = document.getElementById("gpu-table");
  if (table) {
    const boxes = [...table.querySelectorAll("input[name=gpu_id]")];
    const count = () => {
      const n = boxes.filter((box) => box.checked).length;
      document.getElementById("gpu-selected").textContent = n + " selected";
    };
    document.getElementById("gpu-select-shown").addEventListener("click", () => {
      boxes.forEach((box) => { box.checked = true; });
      count();
    });
    document.getElementById("gpu-select-none").addEventListener("click", () => {
      boxes.forEach((box) => { box.checked = false; });
      count();
    });
    table.addEventListener("change", count);
  }
  document.querySelectorAll("td.epoch").forEach((cell) => { cell.textContent = fmtUtcTime(Number(cell.dataset.epoch)); });
});
