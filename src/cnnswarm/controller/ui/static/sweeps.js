// Sweeps page: every sweep (GET /api/v1/sweeps) with its trial counts and best value, live.
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var REFRESH_MS = 2000;
  var body = cnn.byId("sweeps-body");

  function row(sweep) {
    var counts = sweep.counts || {};
    var done = ["succeeded", "pruned", "failed", "cancelled"].reduce(function (sum, state) {
      return sum + (counts[state] || 0);
    }, 0);
    var best = sweep.best_trial;
    return el("tr", { dataset: { sweepId: sweep.id, state: sweep.state } },
      el("td", {}, cnn.link(cnn.links.sweep(sweep.id), sweep.id, "mono")),
      el("td", {}, cnn.badge(sweep.state)),
      el("td", {}, sweep.dataset),
      el("td", {}, sweep.sampler),
      el("td", {}, sweep.pruner),
      el("td", { className: "num" }, done + " / " + sweep.max_trials),
      el("td", {}, sweep.metric + " (" + sweep.direction + ")"),
      el("td", { className: "num" }, best ? cnn.num(best.value, 4) : "–"));
  }

  cnn.every(REFRESH_MS, async function () {
    try {
      var data = await cnn.api("GET", "/api/v1/sweeps");
      var sweeps = ((data && data.sweeps) || []).slice().reverse(); // newest first
      body.replaceChildren.apply(body, sweeps.map(row));
      if (!sweeps.length) {
        body.appendChild(el("tr", {}, el("td", { colspan: "8", className: "muted" }, "No sweep yet.")));
      }
      cnn.setText("sweeps-status", sweeps.length + " sweep(s), updated " + new Date().toLocaleTimeString());
    } catch (error) {
      cnn.setText("sweeps-status", "Cannot list sweeps: " + error.message);
    }
  });
})();
