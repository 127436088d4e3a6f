// /admin/rules: the epoch cells and spans (UTC epoch seconds in data-epoch) as "2026-12-07 05:56 UTC" (fmtUtcTime).
"use strict";
document.querySelectorAll(".epoch").forEach((el) => { el.textContent = fmtUtcTime(Number(el.dataset.epoch)); });
