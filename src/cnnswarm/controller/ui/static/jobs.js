// Jobs page: the live table (GET /api/v1/jobs, filtered by state) and the submit form
// (POST /api/v1/jobs), with the API's validation errors shown next to the field they name.
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var REFRESH_MS = 1500;

  var filter = cnn.byId("job-filter");
  var body = cnn.byId("jobs-body");
  var form = cnn.byId("submit-form");

  function epochText(job) {
    var done = Math.max(Number(job.epoch) || 0, (job.metrics || []).length);
    var total = job.train_opts && job.train_opts.num_epochs;
    return total ? done + " / " + total : String(done);
  }

  function queueCell(job) {
    if (job.state !== "queued") return "";
    var position = cnn.queuePlace(job.queue_position);
    return el("span", { className: "queue" },
      el("strong", {}, position),
      job.waiting_reason ? el("span", { className: "muted" }, " " + job.waiting_reason) : null);
  }

  function row(job) {
    return el("tr", { dataset: { jobId: job.id, state: job.state } },
      el("td", { className: "nowrap" }, cnn.link(cnn.links.job(job.id), job.id, "mono"),
        el("div", { className: "muted mono small", title: "model id" }, job.model_id)),
      el("td", {}, job.dataset),
      el("td", {}, cnn.badge(job.state)),
      el("td", {}, cnn.progressBar(job.progress, "Progress of " + job.id)),
      el("td", { className: "num" }, epochText(job)),
      el("td", { className: "num" }, job.attempt),
      el("td", { className: "mono" }, job.trainer || "–"),
      el("td", {}, queueCell(job)),
      el("td", { title: cnn.when(job.created_at) }, cnn.since(job.created_at)));
  }

  async function refresh() {
    try {
      var data = await cnn.api("GET", "/api/v1/jobs", { query: { state: filter.value, limit: 200 } });
      var jobs = (data && data.jobs) || [];
      jobs.reverse(); // newest first
      body.replaceChildren.apply(body, jobs.map(row));
      if (!jobs.length) {
        body.appendChild(el("tr", {}, el("td", { colspan: "9", className: "muted" },
          filter.value ? "No " + filter.value + " jobs." : "No jobs yet: submit one.")));
      }
      cnn.setText("jobs-status", jobs.length + " job(s), updated " + new Date().toLocaleTimeString());
    } catch (error) {
      cnn.setText("jobs-status", "Cannot list jobs: " + error.message);
    }
  }

  var poller = cnn.every(REFRESH_MS, refresh);
  filter.addEventListener("change", function () { poller.now(); });

  // -- the submit form -------------------------------------------------------------------------

  async function loadDatasets() {
    var select = cnn.byId("f-dataset");
    try {
      var data = await cnn.api("GET", "/api/v1/datasets");
      var options = ((data && data.datasets) || []).map(function (dataset) {
        var label = dataset.name && dataset.name !== dataset.id
          ? dataset.name + " (" + dataset.id + ")" : dataset.id;
        return el("option", { value: dataset.id }, label);
      });
      select.replaceChildren.apply(select, options);
    } catch (error) {
      cnn.setText("e-dataset", "Cannot list datasets: " + error.message);
    }
  }

  // A field's value as the API expects it; text that is not a number goes as typed, so the
  // API (the one validator) names the field in its answer.
  function optionValue(input) {
    var raw = input.value.trim();
    if (raw === "") return undefined;
    switch (input.dataset.kind) {
      case "integer":
        return /^-?\d+$/.test(raw) ? Number(raw) : raw;
      case "number":
        return raw !== "" && isFinite(Number(raw)) ? Number(raw) : raw;
      case "boolean":
        return raw === "true";
      default:
        return raw;
    }
  }

  function requestBody() {
    var body = { dataset: form.elements.dataset.value };
    ["model_type", "model_id"].forEach(function (name) {
      var value = form.elements[name].value.trim();
      if (value) body[name] = value;
    });
    var workers = optionValue(form.elements.workers);  // a data-parallel job when > 1
    if (workers !== undefined) body.workers = workers;
    var opts = {};
    form.querySelectorAll("[data-option]").forEach(function (input) {
      var value = optionValue(input);
      if (value !== undefined) opts[input.dataset.option] = value;
    });
    if (Object.keys(opts).length) body.train_opts = opts;
    return body;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    cnn.clearErrors(form);
    cnn.setText("submit-result", "");
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      var job = await cnn.api("POST", "/api/v1/jobs", { json: requestBody() });
      var result = cnn.byId("submit-result");
      result.replaceChildren("Queued ", cnn.link(cnn.links.job(job.id), job.id, "mono"));
      poller.now();
    } catch (error) {
      cnn.showFieldError(form, error, cnn.byId("submit-error"));
    } finally {
      button.disabled = false;
    }
  });

  loadDatasets();
})();
