// The e-card page: fetch a fresh code (a new signed QR image) every period (data-period
// seconds). No inline script (CSP); the image comes from this origin only.
(function () {
  "use strict";
  var img = document.getElementById("ecard-code");
  if (!img) {
    return;
  }
  var refused = document.getElementById("ecard-refused");
  var figure = img.closest("figure") || img;
  var period = Math.max(5, parseInt(img.getAttribute("data-period"), 10) || 60);
  var base = img.getAttribute("data-src");
  function fail() {
    figure.hidden = true;
    if (refused) {
      refused.hidden = false;
    }
  }
  img.addEventListener("error", fail);
  if (img.complete && img.naturalWidth === 0) {
    fail(); // the first image failed before this script ran
  }
  img.addEventListener("load", function () {
    figure.hidden = false;
    if (refused) {
      refused.hidden = true;
    }
  });
  window.setInterval(function () {
    img.src = base + "?t=" + Date.now();
  }, period * 1000);
  // a page that lives as long as a session (the resident's own e-card page): reloaded when
  // the session ends, so that it asks for a new one-time code instead of showing a failure
  var reloadAfter = parseInt(img.getAttribute("data-reload-after"), 10);
  if (reloadAfter > 0) {
    window.setTimeout(function () {
      window.location.reload();
    }, reloadAfter * 1000);
  }
})();
