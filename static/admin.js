// Admin page helpers: copy buttons for one-time secrets, local times for epoch cells.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("button.copy").forEach((button) => button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.copy);
    input.select();
    try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }
    catch (e) { button.textContent = "Press Ctrl+C"; }
  }));
  // GPUs: filter the table, select what is shown, count the selection (one Save for all).
  const table = document.getElementById("gpu-table");
  if (table) {
    const rows = [...table.querySelectorAll("tbody tr[data-search]")];
    const count = () => {
      const n = table.querySelectorAll("input[name=gpu_id]:checked").length;
      document.getElementById("gpu-selected").textContent = n + " selected";
    };
    document.getElementById("gpu-filter").addEventListener("input", (e) => {
      const text = e.target.value.trim().toLowerCase();
      rows.forEach((row) => { row.hidden = text !== "" && !row.dataset.search.includes(text); });
    });
    document.getElementById("gpu-select-shown").addEventListener("click", () => {
      rows.forEach((row) => { if (!row.hidden) row.querySelector("input[name=gpu_id]").checked = true; });
      count();
    });
    document.getElementById("gpu-select-none").addEventListener("click", () => {
      rows.forEach((row) => { row.querySelector("input[name=gpu_id]").checked = false; });
      count();
    });
    table.addEventListener("change", count);
  }
  document.querySelectorAll("td.epoch").forEach((cell) => { cell.textContent = fmtLocalTime(Number(cell.dataset.epoch)); });
});
