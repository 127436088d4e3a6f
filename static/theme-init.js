// Loaded synchronously in <head>: apply the saved theme before the first paint.
(function () {
  var theme = null;
  try { theme = localStorage.getItem("sm-theme"); } catch (e) { /* storage blocked */ }
  if (theme !== "light" && theme !== "dark") {
    theme = window.matchMedia && window.matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark";
  }
  document.documentElement.setAttribute("data-theme", theme);
})();
