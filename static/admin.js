// Admin page helpers: copy buttons for one-time secrets, local times for epoch cells.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("button.copy").forEach((button) => button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.copy);
    input.select();
    try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }
    catch (e) { button.textContent = "Press Ctrl+C"; }
  }));
  document.querySelectorAll("td.epoch").forEach((cell) => { cell.textContent = fmtLocalTime(Number(cell.dataset.epoch)); });
});
