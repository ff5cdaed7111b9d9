// Datasets page: built-ins and uploads (GET /api/v1/datasets) and the upload form
// (POST /api/v1/datasets, multipart "file" and "name") with a progress bar.
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;
  var body = cnn.byId("datasets-body");
  var form = cnn.byId("upload-form");

  function row(dataset) {
    var classes = dataset.num_classes || (dataset.classes ? dataset.classes.length : null);
    return el("tr", { dataset: { datasetId: dataset.id } },
      el("td", {}, cnn.link(cnn.links.dataset(dataset.id), dataset.name || dataset.id)),
      el("td", { className: "mono" }, dataset.id),
      el("td", {}, dataset.builtin ? "built-in" : "upload"),
      el("td", { className: "num" }, classes == null ? "–" : classes),
      el("td", { className: "num" }, dataset.num_train == null ? "–" : dataset.num_train),
      el("td", { className: "num" }, dataset.num_test == null ? "–" : dataset.num_test),
      el("td", {}, dataset.shape ? dataset.shape.join(" × ") : "–"));
  }

  async function refresh() {
    try {
      var data = await cnn.api("GET", "/api/v1/datasets");
      var datasets = (data && data.datasets) || [];
      body.replaceChildren.apply(body, datasets.map(row));
      cnn.setText("datasets-status", datasets.length + " dataset(s); built-ins are described once first used");
    } catch (error) {
      cnn.setText("datasets-status", "Cannot list datasets: " + error.message);
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    cnn.clearErrors(form);
    cnn.setText("upload-result", "");
    var file = cnn.byId("upload-file").files[0];
    if (!file) { cnn.setText("e-file", "Choose an archive to upload."); return; }
    var data = new FormData();
    data.append("file", file, file.name);
    var name = cnn.byId("upload-name").value.trim();
    if (name) data.append("name", name);
    var bar = cnn.byId("upload-progress");
    bar.hidden = false;
    bar.value = 0;
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      var dataset = await cnn.upload("/api/v1/datasets", data, function (fraction) { bar.value = fraction; });
      bar.value = 1;
      cnn.byId("upload-result").replaceChildren("Added ",
        cnn.link(cnn.links.dataset(dataset.id), dataset.name || dataset.id));
      form.reset();
      await refresh();
    } catch (error) {
      cnn.showFieldError(form, error, cnn.byId("upload-error"));
    } finally {
      button.disabled = false;
    }
  });

  refresh();
})();
