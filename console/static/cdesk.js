// Yikatong console, the counter's new application: the photo taken with the counter's camera
// (getUserMedia), its frame put into the form's file field so that it is posted as a file,
// exactly like a photo chosen from disk. No inline script (Content-Security-Policy).
(function () {
  "use strict";
  var box = document.getElementById("camera");
  if (!box || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia ||
      typeof DataTransfer === "undefined") {
    return; // no camera API in this browser: the file field alone
  }
  var start = document.getElementById("camera-start");
  var take = document.getElementById("camera-take");
  var video = document.getElementById("camera-video");
  var frame = document.getElementById("camera-frame");
  var input = document.getElementById("photo");
  var state = document.getElementById("camera-state");
  var stream = null;
  box.hidden = false;

  function stop() {
    if (stream) {
      stream.getTracks().forEach(function (t) { t.stop(); });
      stream = null;
    }
    video.hidden = true;
    take.disabled = true;
  }

  start.addEventListener("click", function () {
    stop();
    navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 960 } }, audio: false
    }).then(function (s) {
      stream = s;
      video.srcObject = s;
      video.hidden = false;
      take.disabled = false;
      state.textContent = box.dataset.live;
      take.focus();
    }).catch(function (err) {
      state.textContent = box.dataset.refused + " (" + err.name + ")";
    });
  });

  take.addEventListener("click", function () {
    var w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) {
      return; // no frame yet
    }
    frame.width = w;
    frame.height = h;
    frame.getContext("2d").drawImage(video, 0, 0, w, h);
    frame.toBlob(function (blob) {
      var files = new DataTransfer();
      files.items.add(new File([blob], "camera.jpg", { type: "image/jpeg" }));
      input.files = files.files;
      frame.hidden = false;
      state.textContent = box.dataset.taken;
      stop();
    }, "image/jpeg", 0.95);
  });

  input.addEventListener("change", function () {
    if (input.files.length && input.files[0].name !== "camera.jpg") {
      frame.hidden = true; // a file chosen from disk replaces the photo taken
    }
  });
})();
