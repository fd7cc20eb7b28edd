// Yikatong console: the few behaviours a page needs beyond htmx (no inline script: CSP).
document.addEventListener("click", function (event) {
  var target = event.target instanceof Element ? event.target.closest("[data-print]") : null;
  if (target) {
    window.print();
  }
});
