// Shows a banner when /-/health says the hub is not healthy (a background thread such as
// alerts or maintenance stopped, or the database cannot be read). Text only, no markup.
"use strict";
(function () {
  async function check() {
    let body;
    try {
      const response = await fetch("/-/health", { credentials: "same-origin", cache: "no-store" });
      body = await response.json();
    } catch (e) {
      return; // the dashboard's own refresh reports an unreachable hub
    }
    let banner = document.getElementById("hub-health");
    if (body.ok) {
      if (banner) banner.hidden = true;
      return;
    }
    if (!banner) {
      banner = document.createElement("p");
      banner.id = "hub-health";
      banner.className = "load-error";
      banner.setAttribute("role", "alert");
      const main = document.getElementById("main") || document.body;
      main.prepend(banner);
    }
    const what = (body.dead_threads || []).join(", ");
    banner.textContent = "Hub problem: " + (what ? "background job stopped (" + what + "): no alerts or roll-ups until the hub is restarted"
      : String(body.error || "health check failed")) + ". See the hub log.";
    banner.hidden = false;
  }
  document.addEventListener("DOMContentLoaded", () => { check(); setInterval(check, 60000); });
})();
