// Dataset page: the record (GET /api/v1/datasets/<id>), class counts and a grid of sample
// images per class (GET /api/v1/datasets/<id>/samples, images/<row>.png).
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var PER_CLASS = 8;

  var datasetId = cnn.byId("dataset").dataset.datasetId;
  var base = "/api/v1/datasets/" + cnn.seg(datasetId);

  async function loadRecord() {
    try {
      var dataset = await cnn.api("GET", base);
      cnn.setText("dataset-name", dataset.name || dataset.id);
      cnn.facts(cnn.byId("dataset-facts"), [
        ["Kind", dataset.builtin ? "built-in" : "upload"],
        ["Description", dataset.description],
        ["Training images", dataset.num_train == null ? null : String(dataset.num_train)],
        ["Test images", dataset.num_test == null ? null : String(dataset.num_test)],
        ["Image shape", dataset.shape ? dataset.shape.join(" × ") : null],
        ["Classes", String(dataset.num_classes || (dataset.classes || []).length)],
      ]);
    } catch (error) {
      cnn.setText("dataset-error", "Cannot load dataset " + datasetId + ": " + error.message);
    }
  }

  async function loadSamples() {
    var grid = cnn.byId("sample-grid");
    try {
      var data = await cnn.api("GET", base + "/samples", { query: { per_class: PER_CLASS } });
      var rows = data.classes.map(function (klass) {
        return el("div", { className: "sample-row", role: "group", "aria-label": "class " + klass.name,
          dataset: { classIndex: klass.index } },
          el("div", { className: "sample-class" },
            el("span", { className: "sample-name" }, klass.name),
            el("span", { className: "muted" }, klass.num_train + " train · " + klass.num_test + " test")),
          el("div", { className: "sample-images" }, klass.samples.map(function (row) {
            return el("img", {
              src: base + "/images/" + row + ".png",
              alt: klass.name + ", training image " + row,
              className: "sample", loading: "lazy", width: "48", height: "48",
            });
          })));
      });
      grid.replaceChildren.apply(grid, rows);
      cnn.setText("samples-status", data.classes.length + " classes; the first " + PER_CLASS +
        " training images of each");
    } catch (error) {
      cnn.setText("samples-status", "Cannot load samples: " + error.message);
    }
  }

  loadRecord().then(loadSamples);
})();
