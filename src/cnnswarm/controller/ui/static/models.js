// Models page: every model (GET /api/v1/models) with its aliases and final test accuracy.
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var REFRESH_MS = 5000;
  var body = cnn.byId("models-body");

  function row(model) {
    var last = cnn.lastMetrics(model.metrics);
    return el("tr", { dataset: { modelId: model.id } },
      el("td", {}, cnn.link(cnn.links.model(model.id), model.id, "mono")),
      el("td", {}, (model.aliases || []).map(function (alias) {
        return el("span", { className: "chip" }, alias);
      })),
      el("td", {}, model.model_type),
      el("td", {}, model.dataset || "–"),
      el("td", { className: "num" }, (model.classes || []).length),
      el("td", { className: "num" }, cnn.pct(last.test_accuracy)),
      el("td", { className: "num" }, (model.metrics || []).length),
      el("td", { title: cnn.when(model.created) }, cnn.since(model.created)));
  }

  cnn.every(REFRESH_MS, async function () {
    try {
      var data = await cnn.api("GET", "/api/v1/models");
      var models = ((data && data.models) || []).slice().reverse();
      body.replaceChildren.apply(body, models.map(row));
      if (!models.length) {
        body.appendChild(el("tr", {}, el("td", { colspan: "8", className: "muted" },
          "No models yet: a job publishes one when it succeeds.")));
      }
      cnn.setText("models-status", models.length + " model(s)");
    } catch (error) {
      cnn.setText("models-status", "Cannot list models: " + error.message);
    }
  });
})();
