// ffaudit console behaviour. Loaded from 'self' only: the CSP allows no inline script, so
// every page's data reaches this file through data-* attributes or JSON data blocks
// (<script type="application/json">, which the browser never executes).
"use strict";

(function () {
  function csrfToken() {
    var holder = document.querySelector("[data-csrf]");
    if (holder) return holder.getAttribute("data-csrf");
    var field = document.querySelector("input[name=csrf]");
    return field ? field.value : "";
  }

  // "Verify now" and range verification: POST, then read the NDJSON progress lines as they
  // arrive (fetch streams the body; htmx would wait for the end).
  function runVerification(form) {
    var target = document.getElementById(form.getAttribute("data-progress"));
    var body = new URLSearchParams(new FormData(form));
    target.textContent = "starting…";
    fetch(form.action, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken(), "Accept": "application/x-ndjson" },
    }).then(function (response) {
      if (!response.ok || !response.body) {
        target.textContent = "verification refused (" + response.status + ")";
        return;
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) return;
          buffer += decoder.decode(chunk.value, { stream: true });
          var lines = buffer.split("\n");
          buffer = lines.pop();
          lines.forEach(function (line) { if (line.trim()) show(target, JSON.parse(line)); });
          return pump();
        });
      }
      return pump();
    }).catch(function (err) { target.textContent = "verification failed: " + err; });
  }

  function show(target, message) {
    if (message.progress) {
      var p = message.progress;
      target.replaceChildren();
      var label = document.createElement("div");
      label.textContent = p.stream + ": " + p.records + " / " + p.expected + " records";
      var bar = document.createElement("progress");
      bar.max = Math.max(p.expected, 1);
      bar.value = p.records;
      target.append(label, bar);
    } else if (message.html) {
      // The server renders the summary (escaped by Jinja2) and sends it as one line.
      var doc = new DOMParser().parseFromString(message.html, "text/html");
      target.replaceChildren.apply(target, Array.from(doc.body.childNodes));
    } else if (message.error) {
      target.textContent = "verification stopped: " + message.error.message;
    }
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.classList && form.classList.contains("verify-run")) {
      event.preventDefault();
      runVerification(form);
    }
  });

  // Time histograms (uPlot): data from a JSON block next to the chart; a brush (drag)
  // zooms by changing the page's since/until, so the zoomed view has its own URL.
  function drawHistograms(root) {
    if (typeof uPlot === "undefined") return;
    root.querySelectorAll("[data-histogram]").forEach(function (el) {
      if (el.getAttribute("data-drawn")) return;
      el.setAttribute("data-drawn", "1");
      var data = JSON.parse(document.getElementById(el.getAttribute("data-histogram")).textContent);
      var xs = data.buckets.map(function (b) { return b[0]; });
      var ys = data.buckets.map(function (b) { return b[1]; });
      var width = Math.max(320, el.clientWidth || 900);
      new uPlot({
        width: width,
        height: 160,
        // Counts start at 0: a bucket of one event is a bar, not an empty slot.
        scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(1, max)]; } } },
        series: [{}, { label: "events", stroke: "#0969da", fill: "rgba(9,105,218,0.15)",
                       paths: uPlot.paths.bars({ size: [0.9, 100] }) }],
        axes: [{}, { size: 60 }],
        cursor: { drag: { x: true, y: false } },
        hooks: { setSelect: [function (u) {
          if (u.select.width < 4) return;
          var min = u.posToVal(u.select.left, "x");
          var max = u.posToVal(u.select.left + u.select.width, "x");
          var url = new URL(window.location.href);
          url.searchParams.set("since", new Date(min * 1000).toISOString());
          url.searchParams.set("until", new Date(max * 1000).toISOString());
          url.searchParams.delete("cursor");
          window.location.assign(url.toString());
        }] },
      }, [xs, ys], el);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawHistograms(document); });
  document.addEventListener("htmx:afterSettle", function (e) { drawHistograms(e.target); });
})();
