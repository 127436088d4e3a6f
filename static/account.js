// /account: the contact's time zone field (templates/sm_account.html #contact-tz). With none
// stored, fill in the browser's own IANA zone (Intl) and say so; it is kept only once the user
// saves the form, like every other field. Quiet hours and the digest follow it (jobs/nudge.py).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const field = document.getElementById("contact-tz");
  if (!field || field.value || field.dataset.stored === "1") return;
  let zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
  // Only a zone the hub knows (the field's list, contacts.time_zones): a browser that reports
  // none or an unknown one ("Etc/Unknown") leaves the field empty, so saving never fails on it.
  const known = [...document.querySelectorAll("#tz-list option")].some((o) => o.value === zone);
  if (!zone || !known) return;
  field.value = zone;
  const note = document.getElementById("contact-tz-note");
  if (note) { note.textContent = "Filled in from your browser (" + zone + "): save the contact to keep it."; note.hidden = false; }
});
