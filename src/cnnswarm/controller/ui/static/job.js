// Job page: the job (GET /api/v1/jobs/<id>), followed live through its server-sent events
// (/api/v1/jobs/<id>/events) until it ends; loss, accuracy and learning-rate curves per epoch
// (uPlot); attempts; options; the final model; cancel (POST /api/v1/jobs/<id>/cancel).
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var FINAL = ["succeeded", "failed", "cancelled"];
  var QUEUE_POLL_MS = 2000;

  var jobId = cnn.byId("job").dataset.jobId;
  var base = "/api/v1/jobs/" + cnn.seg(jobId);
  var current = null;
  var queueInfo = {};
  var history = null; // the job's attempts, as its last GET (or cancel) answered them
  var historyKey = ""; // attempt/state of the job when the history was read
  var modelShown = false;

  function isFinal(job) { return FINAL.indexOf(job.state) >= 0; }

  // -- curves -----------------------------------------------------------------------------------

  var CHARTS = {
    loss: { id: "chart-loss", series: [["train_loss", "train", "#2563eb"], ["test_loss", "test", "#ea580c"]] },
    accuracy: {
      id: "chart-accuracy",
      series: [["train_accuracy", "train", "#2563eb"], ["test_accuracy", "test", "#ea580c"]],
    },
    lr: { id: "chart-lr", series: [["lr", "lr", "#16a34a"]] },
  };
  var plots = {};

  function chartData(spec, metrics) {
    var data = [metrics.map(function (m) { return m.epoch; })];
    spec.series.forEach(function (s) {
      data.push(metrics.map(function (m) {
        var v = m[s[0]];
        return typeof v === "number" && isFinite(v) ? v : null;
      }));
    });
    return data;
  }

  function chartWidth(node) { return Math.max(240, node.clientWidth || 320); }

  function drawCharts(metrics) {
    metrics = (metrics || []).filter(function (m) { return typeof m.epoch === "number"; });
    Object.keys(CHARTS).forEach(function (key) {
      var spec = CHARTS[key];
      var node = cnn.byId(spec.id);
      var data = chartData(spec, metrics);
      if (!plots[key]) {
        var series = [{ label: "epoch" }].concat(spec.series.map(function (s) {
          return { label: s[1], stroke: s[2], width: 2, points: { show: true, size: 6 } };
        }));
        plots[key] = new uPlot({
          width: chartWidth(node),
          height: 220,
          scales: { x: { time: false } },
          // Whole epochs on the x axis; the legend names the series (values are in the table).
          axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
          legend: { live: false },
          series: series,
        }, data, node);
      } else {
        plots[key].setData(data);
      }
      node.dataset.points = String(metrics.length);
    });
    var rows = metrics.map(function (m) {
      return el("tr", {},
        el("td", { className: "num" }, m.epoch),
        el("td", { className: "num" }, cnn.num(m.train_loss, 4)),
        el("td", { className: "num" }, cnn.num(m.test_loss, 4)),
        el("td", { className: "num" }, cnn.pct(m.train_accuracy)),
        el("td", { className: "num" }, cnn.pct(m.test_accuracy)),
        el("td", { className: "num" }, cnn.num(m.lr, 6)),
        el("td", { className: "num" }, cnn.num(m.images_per_s, 0)),
        el("td", { className: "num" }, cnn.num(m.duration_s, 1)));
    });
    var body = cnn.byId("epochs-body");
    body.replaceChildren.apply(body, rows);
  }

  window.addEventListener("resize", function () {
    Object.keys(plots).forEach(function (key) {
      var node = cnn.byId(CHARTS[key].id);
      plots[key].setSize({ width: chartWidth(node), height: 220 });
    });
  });

  // -- the rest of the page ---------------------------------------------------------------------

  // Epochs done: the metrics recorded, or the epoch the trainer last reported if further.
  function epochsDone(job) {
    return Math.max(Number(job.epoch) || 0, (job.metrics || []).length);
  }

  function renderFacts(job) {
    var total = job.train_opts && job.train_opts.num_epochs;
    var queued = job.state === "queued";
    cnn.facts(cnn.byId("job-facts"), [
      ["State", cnn.badge(job.state)],
      ["Model", el("span", { className: "mono" }, job.model_id)],
      ["Dataset", job.dataset ? cnn.link(cnn.links.dataset(job.dataset), job.dataset) : null],
      ["Model type", job.model_type],
      ["Sweep", job.sweep ? cnn.link(cnn.links.sweep(job.sweep), job.sweep, "mono") : null],
      ["Epoch", total ? epochsDone(job) + " / " + total : String(epochsDone(job))],
      ["Attempt", String(job.attempt)],
      ["Trainer", job.trainer ? el("span", { className: "mono" }, job.trainer) : null],
      ["Place in queue", queued ? cnn.queuePlace(queueInfo.queue_position) : null],
      ["Waiting because", queued ? queueInfo.waiting_reason : null],
      ["Submitted", cnn.when(job.created_at)],
      ["Started", job.started_at ? cnn.when(job.started_at) : null],
      ["Finished", job.finished_at ? cnn.when(job.finished_at) : null],
      ["Error", job.error && job.state === "failed" ? el("span", { className: "error" }, job.error) : null],
    ]);
    var bar = cnn.byId("job-progress");
    bar.value = Math.max(0, Math.min(1, Number(job.progress) || 0));
    cnn.setText("job-progress-text", cnn.pct(job.progress, 0));
    cnn.byId("cancel-job").disabled = isFinal(job);
  }

  // How an attempt ended, in words (the API's outcome: store/attempts.py AttemptEnd).
  var ENDINGS = {
    succeeded: "succeeded",
    failed: "failed",
    trainer_failure: "its process died; the job was requeued",
    lease_lost: "lease lost: its trainer stopped heartbeating",
    cancelled: "cancelled",
  };

  function renderAttempts(job) {
    // GET and cancel answers carry the history; an event that changes the attempt or the state
    // (events carry the job alone) reads it again.
    var key = job.attempt + "/" + job.state;
    if (Array.isArray(job.attempts)) {
      history = job.attempts;
      historyKey = key;
    } else if (key !== historyKey) {
      historyKey = key;
      cnn.api("GET", base).then(renderAttempts, function () {});
    }
    var items = (history || []).map(function (a) {
      var ended = a.outcome ? (ENDINGS[a.outcome] || a.outcome) + (a.reason ? ": " + a.reason : "")
        : "running";
      return el("li", {},
        el("strong", {}, "Attempt " + a.attempt),
        a.trainer ? [" on ", el("span", { className: "mono" }, a.trainer)] : null,
        el("span", { className: "muted" }, a.resumed_from_attempt
          ? " · resumed from attempt " + a.resumed_from_attempt + "'s checkpoint"
          : " · from scratch"),
        el("div", { className: "muted" },
          cnn.when(a.started_at) + (a.ended_at ? " – " + cnn.when(a.ended_at) : "") + " · " + ended));
    });
    if (!items.length) items.push(el("li", { className: "muted" }, "Not dispatched yet."));
    var list = cnn.byId("attempts");
    list.replaceChildren.apply(list, items);
  }

  function renderOptions(job) {
    var opts = job.train_opts || {};
    var pairs = Object.keys(opts).sort().map(function (key) {
      var value = opts[key];
      return [key, value === null ? "null" : typeof value === "object" ? JSON.stringify(value) : String(value)];
    });
    if (job.example_idxs) pairs.unshift(["example_idxs", JSON.stringify(job.example_idxs)]);
    if (!pairs.length) pairs.push(["options", "the model type's defaults"]);
    cnn.facts(cnn.byId("job-options"), pairs);
  }

  async function renderModel(job) {
    if (job.state !== "succeeded" || modelShown) return;
    modelShown = true;
    var box = cnn.byId("final-model");
    try {
      var model = await cnn.api("GET", "/api/v1/models/" + cnn.seg(job.model_id));
      var last = cnn.lastMetrics(model.metrics);
      var dl = el("dl", { className: "facts" });
      cnn.facts(dl, [
        ["Model", cnn.link(cnn.links.model(model.id), model.id, "mono")],
        ["Test accuracy", cnn.pct(last.test_accuracy)],
        ["Classes", String((model.classes || []).length)],
        ["Aliases", (model.aliases || []).join(", ")],
      ]);
      box.replaceChildren(dl);
    } catch (error) {
      box.replaceChildren(el("p", { className: "muted" }, "Model " + job.model_id + ": " + error.message));
    }
  }

  function render(job) {
    current = job;
    renderFacts(job);
    drawCharts(job.metrics);
    renderAttempts(job);
    renderOptions(job);
    renderModel(job);
  }

  // -- following the job --------------------------------------------------------------------------

  function follow() {
    var source = new EventSource(base + "/events");
    function onEvent(event) {
      var job;
      try { job = JSON.parse(event.data); } catch (e) { return; }
      render(job);
      if (isFinal(job)) source.close();
    }
    source.addEventListener("progress", onEvent);
    source.addEventListener("end", onEvent);
    // The browser reconnects a broken stream by itself; a closed one is polled instead.
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED && current && !isFinal(current)) poll();
    });
  }

  function poll() {
    var poller = cnn.every(QUEUE_POLL_MS, async function () {
      if (current && isFinal(current)) return;
      render(await cnn.api("GET", base));
    });
    return poller;
  }

  // The event stream carries the job itself; where it waits in the queue comes from GET.
  cnn.every(QUEUE_POLL_MS, async function () {
    if (!current || current.state !== "queued") return;
    var job = await cnn.api("GET", base);
    queueInfo = { queue_position: job.queue_position, waiting_reason: job.waiting_reason };
    if (current.state === "queued") renderFacts(current);
  });

  cnn.byId("cancel-job").addEventListener("click", async function () {
    var button = cnn.byId("cancel-job");
    button.disabled = true;
    cnn.setText("job-error", "");
    try {
      render(await cnn.api("POST", base + "/cancel"));
    } catch (error) {
      cnn.setText("job-error", "Cannot cancel: " + error.message);
      button.disabled = current ? isFinal(current) : false;
    }
  });

  (async function start() {
    try {
      var job = await cnn.api("GET", base);
      queueInfo = { queue_position: job.queue_position, waiting_reason: job.waiting_reason };
      render(job);
      if (!isFinal(job)) {
        if (window.EventSource) follow(); else poll();
      }
    } catch (error) {
      cnn.setText("job-error", "Cannot load job " + jobId + ": " + error.message);
    }
  })();
})();
