// Trainers page: registered trainers (GET /api/v1/trainers), refreshed live. A trainer that
// stops heartbeating turns "lost" (the controller's lease timeout) and is shown stale.
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var REFRESH_MS = 1500;
  var body = cnn.byId("trainers-body");

  function row(trainer) {
    var stale = trainer.state === "lost";
    var running = trainer.running_jobs || [];
    return el("tr", { className: stale ? "stale" : "", dataset: { trainerId: trainer.id, state: trainer.state } },
      el("td", { className: "mono" }, trainer.id),
      el("td", {}, cnn.badge(trainer.state), stale ? el("span", { className: "muted" }, " no heartbeat") : null),
      el("td", { className: "num" }, (trainer.free_slots == null ? "?" : trainer.free_slots) + " free / " + trainer.slots),
      el("td", {}, running.length ? running.map(function (id) {
        return el("div", {}, cnn.link(cnn.links.job(id), id, "mono"));
      }) : el("span", { className: "muted" }, "none")),
      el("td", { title: cnn.when(trainer.last_heartbeat) }, cnn.ago(trainer.seconds_since_heartbeat)),
      el("td", { className: "mono" }, trainer.url));
  }

  cnn.every(REFRESH_MS, async function () {
    try {
      var data = await cnn.api("GET", "/api/v1/trainers");
      var trainers = (data && data.trainers) || [];
      body.replaceChildren.apply(body, trainers.map(row));
      if (!trainers.length) {
        body.appendChild(el("tr", {}, el("td", { colspan: "6", className: "muted" },
          "No trainer has registered: start one with `cnn-swarm trainer`.")));
      }
      var lost = trainers.filter(function (t) { return t.state === "lost"; }).length;
      cnn.setText("trainers-status", trainers.length + " trainer(s)" + (lost ? ", " + lost + " stale" : "") +
        ", updated " + new Date().toLocaleTimeString());
    } catch (error) {
      cnn.setText("trainers-status", "Cannot list trainers: " + error.message);
    }
  });
})();
