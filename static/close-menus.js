// Datasette's "close open <details> menus on outside click", moved out of an inline script.
document.body.addEventListener("click", (ev) => {
  let target = ev.target;
  while (target && target.tagName !== "DETAILS") target = target.parentNode;
  const within = target && target.tagName === "DETAILS" ? target : null;
  Array.from(document.getElementsByTagName("details"))
    .filter((d) => d.open && d !== within)
    .forEach((d) => { d.open = false; });
});
