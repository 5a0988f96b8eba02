/* Graft's small bits of behaviour: history charts, upload progress, drop zones. */
(function () {
  "use strict";

  // --- History charts (Chart.js): canvases read a json_script series by id ------------
  var charts = new Map();
  var COLOURS = { train: "#1f6feb", validation: "#d9480f" };

  function readSeries(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function drawCharts() {
    if (!window.Chart) return;
    document.querySelectorAll("canvas[data-history]").forEach(function (canvas) {
      var data = readSeries(canvas.dataset.history);
      if (!data) return;
      var metric = canvas.dataset.metric;
      var chart = charts.get(canvas);
      if (!chart) {
        chart = new window.Chart(canvas, {
          type: "line",
          data: {
            labels: data.epoch,
            datasets: [
              { label: "training", data: data[metric], borderColor: COLOURS.train,
                backgroundColor: COLOURS.train, tension: 0.2, spanGaps: true },
              { label: "validation", data: data["val_" + metric], borderColor: COLOURS.validation,
                backgroundColor: COLOURS.validation, borderDash: [6, 3], tension: 0.2, spanGaps: true },
            ],
          },
          options: {
            animation: false, responsive: true, maintainAspectRatio: false,
            interaction: { mode: "index", intersect: false },
            scales: {
              x: { title: { display: true, text: "epoch" } },
              y: metric === "accuracy" ? { min: 0, max: 1 } : { beginAtZero: true },
            },
            plugins: { legend: { position: "bottom" } },
          },
        });
        charts.set(canvas, chart);
      } else {
        chart.data.labels = data.epoch;
        chart.data.datasets[0].data = data[metric];
        chart.data.datasets[1].data = data["val_" + metric];
        chart.update();
      }
      canvas.dataset.points = String(data.epoch.length);
    });
  }

  // --- Zip upload with a progress bar (XHR reports upload progress; fetch does not) ---
  function megabytes(n) { return (n / 1048576).toFixed(1) + " MB"; }

  function uploadWithProgress(form) {
    var box = form.querySelector(".upload-progress");
    var bar = box.querySelector("progress");
    var status = box.querySelector("[data-upload-status]");
    var errors = form.querySelector("[data-upload-errors]");
    var button = form.querySelector("button[type=submit]");
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      bar.value = (100 * e.loaded) / e.total;
      status.textContent = megabytes(e.loaded) + " of " + megabytes(e.total) + " uploaded";
    });
    xhr.addEventListener("load", function () {
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
      if (xhr.status === 200 && body && body.redirect) {
        status.textContent = form.dataset.uploadDone || "Uploaded; opening the import report…";
        window.location.assign(body.redirect);
        return;
      }
      var lines = [];
      if (body && body.errors) {
        Object.keys(body.errors).forEach(function (k) {
          body.errors[k].forEach(function (e) { lines.push(e.message); });
        });
      } else {
        lines.push("The upload failed (HTTP " + xhr.status + ").");
      }
      errors.textContent = lines.join("\n");
      errors.hidden = false;
      box.hidden = true;
      button.disabled = false;
    });
    xhr.addEventListener("error", function () {
      errors.textContent = "The upload was interrupted; check the connection and try again.";
      errors.hidden = false;
      button.disabled = false;
    });
    errors.hidden = true;
    box.hidden = false;
    bar.value = 0;
    button.disabled = true;
    xhr.send(new FormData(form));
  }

  document.addEventListener("submit", function (e) {
    var form = e.target.closest("form[data-upload-progress]");
    if (!form || !window.FormData || !form.checkValidity()) return;
    e.preventDefault();
    uploadWithProgress(form);
  });

  // --- Drop zones: drop files onto a zone to fill its file input ------------------------
  function setUpDropzone(zone) {
    var input = zone.querySelector("input[type=file]");
    var list = zone.querySelector("[data-file-list]");
    function show(files) {
      if (!list) return;
      var names = Array.prototype.map.call(files, function (f) { return f.name; });
      list.textContent = names.length
        ? names.length + " photo" + (names.length > 1 ? "s" : "") + ": " + names.slice(0, 8).join(", ") + (names.length > 8 ? "…" : "")
        : "";
    }
    zone.addEventListener("dragover", function (e) { e.preventDefault(); zone.classList.add("dragging"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("dragging"); });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      zone.classList.remove("dragging");
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      input.files = e.dataTransfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
    zone.addEventListener("change", function (e) {
      if (e.target.type !== "file") return;
      show(e.target.files);
      if (zone.hasAttribute("data-autosubmit") && e.target.files.length) {
        zone.closest("form").requestSubmit();
      }
    });
  }

  // After an htmx upload, empty the pickers so the next choice sends only new photos.
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.target.closest && e.target.closest("form");
    if (!form || !form.querySelector("[data-autosubmit]")) return;
    form.querySelectorAll("input[type=file]").forEach(function (i) { i.value = ""; });
  });

  function init() {
    document.querySelectorAll("[data-dropzone]").forEach(setUpDropzone);
    drawCharts();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
  window.addEventListener("load", drawCharts);
  document.addEventListener("htmx:afterSettle", drawCharts);
})();
