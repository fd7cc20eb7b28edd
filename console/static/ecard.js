// The e-card page: fetch a fresh code (a new signed QR image) every period (data-period
// seconds). No inline script (CSP); the image comes from this origin only.
(function () {
  "use strict";
  var img = document.getElementById("ecard-code");
  if (!img) {
    return;
  }
  var refused = document.getElementById("ecard-refused");
  var period = Math.max(5, parseInt(img.getAttribute("data-period"), 10) || 60);
  var base = img.getAttribute("data-src");
  img.addEventListener("error", function () {
    img.hidden = true;
    if (refused) {
      refused.hidden = false;
    }
  });
  img.addEventListener("load", function () {
    img.hidden = false;
    if (refused) {
      refused.hidden = true;
    }
  });
  window.setInterval(function () {
    img.src = base + "?t=" + Date.now();
  }, period * 1000);
})();
