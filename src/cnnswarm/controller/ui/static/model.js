// Model page: the record (GET /api/v1/models/<id>), aliases (PUT /api/v1/aliases/<alias>),
// delete (DELETE /api/v1/models/<id>) and the predict playground
// (POST /api/v1/models/<id>/predict, multipart "files", top_k).
(function () {
  "use strict";
  var cnn = window.cnn;
  var el = cnn.el;

  var modelId = cnn.byId("model").dataset.modelId;
  var base = "/api/v1/models/" + cnn.seg(modelId);
  var chosen = []; // File objects for the playground

  function render(model) {
    var last = cnn.lastMetrics(model.metrics);
    cnn.facts(cnn.byId("model-facts"), [
      ["Type", model.model_type],
      ["Dataset", model.dataset ? cnn.link(cnn.links.dataset(model.dataset), model.dataset) : null],
      ["Job", model.job_id ? cnn.link(cnn.links.job(model.job_id), model.job_id, "mono") : null],
      ["Test accuracy", cnn.pct(last.test_accuracy)],
      ["Test loss", cnn.num(last.test_loss, 4)],
      ["Train accuracy", cnn.pct(last.train_accuracy)],
      ["Epochs", String((model.metrics || []).length)],
      ["Input", model.preprocessing
        ? [model.preprocessing.channels, model.preprocessing.height, model.preprocessing.width].join(" × ")
        : null],
      ["Created", cnn.when(model.created)],
    ]);
    var aliases = cnn.byId("aliases");
    var chips = (model.aliases || []).map(function (alias) {
      return el("li", { className: "chip" }, alias);
    });
    aliases.replaceChildren.apply(aliases, chips.length ? chips : [el("li", { className: "muted" }, "none")]);
    var classes = cnn.byId("classes");
    classes.replaceChildren.apply(classes, (model.classes || []).map(function (name) {
      return el("li", { className: "chip" }, name);
    }));
  }

  async function load() {
    try {
      render(await cnn.api("GET", base));
    } catch (error) {
      cnn.setText("model-error", "Cannot load model " + modelId + ": " + error.message);
    }
  }

  // -- aliases ----------------------------------------------------------------------------------

  var aliasForm = cnn.byId("alias-form");
  aliasForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    cnn.clearErrors(aliasForm);
    var alias = cnn.byId("alias-name").value.trim();
    if (!alias) { cnn.setText("alias-error", "Name the alias."); return; }
    try {
      await cnn.api("PUT", "/api/v1/aliases/" + cnn.seg(alias), { json: { model_id: modelId } });
      cnn.byId("alias-name").value = "";
      await load();
    } catch (error) {
      cnn.setText("alias-error", error.message);
    }
  });

  // -- delete -----------------------------------------------------------------------------------

  var confirmBox = cnn.byId("delete-confirm");
  cnn.byId("delete-model").addEventListener("click", function () {
    confirmBox.hidden = false;
    cnn.byId("delete-no").focus();
  });
  cnn.byId("delete-no").addEventListener("click", function () { confirmBox.hidden = true; });
  cnn.byId("delete-yes").addEventListener("click", async function () {
    try {
      await cnn.api("DELETE", base);
      window.location.assign("/ui/models");
    } catch (error) {
      confirmBox.hidden = true;
      cnn.setText("model-error", "Cannot delete: " + error.message);
    }
  });

  // -- the predict playground -------------------------------------------------------------------

  var zone = cnn.byId("drop-zone");
  var input = cnn.byId("predict-files");
  input.addEventListener("change", function () { chosen = Array.from(input.files); });
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) { event.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    chosen = Array.from(event.dataTransfer.files).filter(function (file) {
      return /^image\//.test(file.type);
    });
    cnn.byId("predict-form").requestSubmit();
  });

  function bars(prediction) {
    var top = prediction.top_k && prediction.top_k.length ? prediction.top_k : [prediction];
    return el("ol", { className: "bars" }, top.map(function (score) {
      var fill = el("span", { className: "bar-fill" });
      fill.style.width = (100 * Math.max(0, Math.min(1, score.probability))).toFixed(1) + "%";
      return el("li", { className: "bar" },
        el("span", { className: "bar-label" }, score.class_tag),
        el("span", { className: "bar-track", role: "img",
          "aria-label": score.class_tag + " " + cnn.pct(score.probability) }, fill),
        el("span", { className: "bar-value num" }, cnn.pct(score.probability)));
    }));
  }

  cnn.byId("predict-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    cnn.setText("predict-error", "");
    if (!chosen.length) { cnn.setText("predict-error", "Choose or drop at least one image."); return; }
    var form = new FormData();
    chosen.forEach(function (file) { form.append("files", file, file.name); });
    var topK = cnn.byId("predict-top-k").value;
    var out = cnn.byId("predictions");
    try {
      var data = await cnn.api("POST", base + "/predict", { form: form, query: { top_k: topK } });
      var cards = (data.predictions || []).map(function (prediction, i) {
        var file = chosen[i];
        var image = el("img", { alt: file ? file.name : "image " + (i + 1), className: "preview" });
        if (file) image.src = URL.createObjectURL(file);
        return el("figure", { className: "prediction" }, image,
          el("figcaption", {}, el("span", { className: "mono" }, file ? file.name : ""), bars(prediction)));
      });
      out.replaceChildren.apply(out, cards);
    } catch (error) {
      cnn.setText("predict-error", error.message);
    }
  });

  load();
})();
