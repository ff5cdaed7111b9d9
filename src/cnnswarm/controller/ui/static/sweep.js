// Sweep page: one sweep (GET /api/v1/sweeps/<id>), refreshed until it ends: its facts, each
// trial's metric per epoch (one uPlot series per trial), the leaderboard (best first) with
// each trial's parameters and job; cancel (POST /api/v1/sweeps/<id>/cancel).
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var REFRESH_MS = 2000;
  var FINAL = ["succeeded", "failed", "cancelled"];
  var COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#4b5563"];

  var sweepId = cnn.byId("sweep").dataset.sweepId;
  var base = "/api/v1/sweeps/" + cnn.seg(sweepId);
  var plot = null;
  var plotted = -1; // how many series the chart was built with
  var ended = false; // a sweep that ended changes no more: stop reading it

  function rank(sweep) {
    var sign = sweep.direction === "maximize" ? -1 : 1;
    function latest(trial) {
      if (typeof trial.value === "number") return trial.value;
      return trial.curve.length ? trial.curve[trial.curve.length - 1] : null;
    }
    return sweep.trials.slice().sort(function (a, b) {
      var va = latest(a), vb = latest(b);
      if (va === null || vb === null) return (va === null) - (vb === null) || a.number - b.number;
      return sign * (va - vb) || a.number - b.number;
    });
  }

  function renderFacts(sweep) {
    var counts = Object.keys(sweep.counts).filter(function (k) { return sweep.counts[k]; })
      .map(function (k) { return sweep.counts[k] + " " + k; }).join(", ");
    var best = sweep.best_trial;
    cnn.facts(cnn.byId("sweep-facts"), [
      ["State", cnn.badge(sweep.state)],
      ["Dataset", cnn.link(cnn.links.dataset(sweep.dataset), sweep.dataset)],
      ["Model type", sweep.model_type],
      ["Search", sweep.sampler + ", pruner " + sweep.pruner + ", seed " + sweep.seed],
      ["Trials", (counts || "none yet") + " of " + sweep.max_trials + ", " + sweep.max_parallel + " at a time"],
      ["Metric", sweep.metric + " (" + sweep.direction + ")"],
      ["Best", best ? el("span", {}, cnn.num(best.value, 4) + " (trial " + best.number + ") ",
        cnn.link(cnn.links.model(sweep.best_model), sweep.best_model, "mono")) : null],
      ["Space", el("span", { className: "mono" }, JSON.stringify(sweep.space))],
    ]);
    cnn.setText("curves-metric", sweep.metric);
  }

  function renderBoard(sweep) {
    var names = Object.keys(sweep.space).sort();
    var head = cnn.byId("board-head");
    head.replaceChildren.apply(head, ["Trial", "State", sweep.metric, "Epochs"].concat(names, ["Job"])
      .map(function (label) { return el("th", { scope: "col" }, label); }));
    var body = cnn.byId("board-body");
    body.replaceChildren.apply(body, rank(sweep).map(function (trial) {
      return el("tr", { dataset: { trial: trial.number, state: trial.state } },
        el("td", { className: "num" }, trial.number),
        el("td", {}, cnn.badge(trial.state)),
        el("td", { className: "num" }, cnn.num(trial.value, 4)),
        el("td", { className: "num" }, trial.curve.length),
        names.map(function (name) { return el("td", { className: "num" }, cnn.num(trial.params[name], 4)); }),
        el("td", {}, cnn.link(cnn.links.job(trial.job_id), trial.job_id, "mono")));
    }));
  }

  function renderChart(sweep) {
    var node = cnn.byId("chart-trials");
    var longest = sweep.trials.reduce(function (n, t) { return Math.max(n, t.curve.length); }, 0);
    var epochs = [];
    for (var i = 1; i <= longest; i++) epochs.push(i);
    var data = [epochs].concat(sweep.trials.map(function (trial) {
      return epochs.map(function (epoch) {
        var v = trial.curve[epoch - 1];
        return typeof v === "number" && isFinite(v) ? v : null;
      });
    }));
    if (plot && plotted !== sweep.trials.length) {
      plot.destroy();
      plot = null;
    }
    if (!plot) {
      var series = [{ label: "epoch" }].concat(sweep.trials.map(function (trial) {
        return { label: "trial " + trial.number, stroke: COLORS[trial.number % COLORS.length], width: 2,
          points: { show: true, size: 5 } };
      }));
      plot = new uPlot({
        width: Math.max(240, node.clientWidth || 640),
        height: 260,
        scales: { x: { time: false } },
        axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100] }, {}],
        legend: { live: false },
        series: series,
      }, data, node);
      plotted = sweep.trials.length;
    } else {
      plot.setData(data);
    }
    node.dataset.series = String(sweep.trials.length);
  }

  var cancel = cnn.byId("cancel-sweep");
  cancel.addEventListener("click", async function () {
    cancel.disabled = true;
    try {
      render(await cnn.api("POST", base + "/cancel"));
    } catch (error) {
      cnn.setText("sweep-error", "Cannot cancel: " + error.message);
    }
  });

  function render(sweep) {
    renderFacts(sweep);
    renderBoard(sweep);
    renderChart(sweep);
    ended = FINAL.indexOf(sweep.state) >= 0;
    cancel.disabled = ended;
  }

  cnn.every(REFRESH_MS, async function () {
    if (ended) return;
    try {
      render(await cnn.api("GET", base));
      cnn.setText("sweep-error", "");
    } catch (error) {
      cnn.setText("sweep-error", "Cannot read the sweep: " + error.message);
    }
  });
})();
