// /admin/rules: local times for the epoch cells and spans (UTC epoch seconds in data-epoch).
"use strict";
document.querySelectorAll(".epoch").forEach((el) => { el.textContent = fmtLocalTime(Number(el.dataset.epoch)); });
