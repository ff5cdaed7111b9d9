// What every dashboard page shares: building DOM from data (as text only), calling the API
// with the token when it asks for one, and small formatters. Exposed as window.cnn.
//
// Safety rules kept here so the page scripts cannot forget them:
// - data reaches the page only through textContent / createTextNode (never innerHTML);
// - URLs of API routes are built with encodeURIComponent for every path segment;
// - the API token lives in sessionStorage (this tab only) and travels only in the
//   Authorization header; never in a URL, a cookie (fetch sends none: credentials "omit")
//   or the console.
(function () {
  "use strict";

  var TOKEN_KEY = "cnn-swarm.api-token";
  var STATES = ["queued", "running", "succeeded", "failed", "cancelled", "idle", "busy", "lost"];

  // -- DOM --------------------------------------------------------------------------------

  // el("a", {href: url, className: "x", dataset: {id: 1}}, "text", child, ...)
  function el(tag, props) {
    var node = document.createElement(tag);
    var key;
    props = props || {};
    for (key in props) {
      if (!Object.prototype.hasOwnProperty.call(props, key)) continue;
      var value = props[key];
      if (value === undefined || value === null) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (/^on/i.test(key)) throw new Error("el(): no event handler attributes");
      else node.setAttribute(key, String(value));
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function append(node, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(node, c); });
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }

  function byId(id) { return document.getElementById(id); }

  function setText(id, text) { byId(id).textContent = text == null ? "" : String(text); }

  // A <dl> of [label, value] pairs; a value may be a node.
  function facts(dl, pairs) {
    dl.replaceChildren();
    pairs.forEach(function (pair) {
      if (pair[1] === undefined || pair[1] === null || pair[1] === "") return;
      dl.appendChild(el("div", { className: "fact" }, el("dt", { text: pair[0] }), el("dd", {}, pair[1])));
    });
  }

  function badge(state) {
    var known = STATES.indexOf(state) >= 0;
    return el("span", { className: "badge" + (known ? " state-" + state : "") }, state);
  }

  function progressBar(fraction, label) {
    var value = Math.max(0, Math.min(1, Number(fraction) || 0));
    return el("span", { className: "progress-cell" },
      el("progress", { max: "1", value: String(value), "aria-label": label || "Progress" }),
      el("span", { className: "muted" }, pct(value, 0)));
  }

  // -- formatting ---------------------------------------------------------------------------

  function pct(fraction, digits) {
    if (fraction === undefined || fraction === null || isNaN(fraction)) return "–";
    return (100 * fraction).toFixed(digits === undefined ? 1 : digits) + " %";
  }

  function num(value, digits) {
    if (value === undefined || value === null || isNaN(value)) return "–";
    var n = Number(value);
    if (Math.abs(n) > 0 && Math.abs(n) < 1e-3) return n.toExponential(2);
    return n.toFixed(digits === undefined ? 3 : digits).replace(/\.?0+$/, "") || "0";
  }

  function ago(seconds) {
    if (seconds === undefined || seconds === null) return "–";
    var s = Math.max(0, Number(seconds));
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function since(timestamp) {
    if (!timestamp) return "–";
    return ago(Date.now() / 1000 - Number(timestamp));
  }

  function when(timestamp) {
    if (!timestamp) return "–";
    return new Date(Number(timestamp) * 1000).toLocaleString();
  }

  // The API's queue_position counts the queued jobs dispatched before this one: 0 is next.
  function queuePlace(jobsAhead) {
    if (jobsAhead === undefined || jobsAhead === null) return "";
    var n = Number(jobsAhead);
    return n === 0 ? "next" : "#" + (n + 1) + " (" + n + " ahead)";
  }

  function lastMetrics(metrics) {
    return Array.isArray(metrics) && metrics.length ? metrics[metrics.length - 1] : {};
  }

  // -- links (every path segment quoted) ------------------------------------------------------

  function seg(value) { return encodeURIComponent(String(value)); }
  var links = {
    job: function (id) { return "/ui/jobs/" + seg(id); },
    model: function (id) { return "/ui/models/" + seg(id); },
    dataset: function (id) { return "/ui/datasets/" + seg(id); },
    sweep: function (id) { return "/ui/sweeps/" + seg(id); },
  };
  function link(href, text, className) { return el("a", { href: href, className: className }, text); }

  // -- the API token ------------------------------------------------------------------------

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function showForget() {
    var forget = byId("token-forget");
    if (forget) forget.hidden = !token();
  }

  // Opens the token dialog; resolves true once a token is stored, false if cancelled.
  var pendingAsk = null;
  function askToken(reason) {
    if (pendingAsk) return pendingAsk;
    var dialog = byId("token-dialog");
    var form = byId("token-form");
    var input = byId("token-input");
    setText("token-dialog-reason", reason || "");
    input.value = "";
    pendingAsk = new Promise(function (resolve) {
      function done(saved) {
        form.removeEventListener("submit", onSubmit);
        byId("token-cancel").removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) dialog.close();
        input.value = "";
        pendingAsk = null;
        showForget();
        resolve(saved);
      }
      function onSubmit(event) {
        event.preventDefault();
        var value = input.value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        done(true);
      }
      function onCancel(event) { if (event) event.preventDefault(); done(false); }
      form.addEventListener("submit", onSubmit);
      byId("token-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
      input.focus();
    });
    return pendingAsk;
  }

  function authHeaders() {
    var t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  // -- the API --------------------------------------------------------------------------------

  function ApiError(status, body, fallback) {
    body = body && typeof body === "object" ? body : {};
    this.name = "ApiError";
    this.status = status;
    this.body = body;
    this.field = typeof body.field === "string" ? body.field : null;
    this.message = typeof body.error === "string" ? body.error : fallback || "HTTP " + status;
  }
  ApiError.prototype = Object.create(Error.prototype);

  function unauthorizedReason(first) {
    return first ? "" : "The controller refused that token; check it and try again.";
  }

  // api("GET", path, {query: {...}, json: {...}, form: FormData}) -> the decoded JSON body.
  // A 401 opens the token dialog (once per refusal) and retries with the token given.
  async function api(method, path, options) {
    options = options || {};
    var url = path;
    if (options.query) {
      var params = new URLSearchParams();
      Object.keys(options.query).forEach(function (key) {
        var v = options.query[key];
        if (v !== undefined && v !== null && v !== "") params.set(key, String(v));
      });
      var qs = params.toString();
      if (qs) url += "?" + qs;
    }
    for (var round = 0; ; round++) {
      var headers = Object.assign({ Accept: "application/json" }, authHeaders());
      var body;
      if (options.json !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(options.json);
      } else if (options.form) {
        body = options.form;
      }
      var response;
      try {
        response = await fetch(url, {
          method: method, headers: headers, body: body, credentials: "omit", cache: "no-store",
        });
      } catch (e) {
        throw new ApiError(0, null, "cannot reach the controller");
      }
      var data = await decode(response);
      if (response.status === 401 && round < 3) {
        if (await askToken(unauthorizedReason(round === 0 && !token()))) continue;
      }
      if (!response.ok) throw new ApiError(response.status, data, response.statusText);
      return data;
    }
  }

  async function decode(response) {
    var type = response.headers.get("Content-Type") || "";
    if (type.indexOf("application/json") < 0) return null;
    try { return await response.json(); } catch (e) { return null; }
  }

  // upload(path, FormData, onProgress(fraction)) -> JSON body; XMLHttpRequest for the
  // upload progress events fetch does not give. Same token rule as api().
  function upload(path, form, onProgress) {
    function send() {
      return new Promise(function (resolve) {
        var xhr = new XMLHttpRequest();
        xhr.open("POST", path);
        xhr.setRequestHeader("Accept", "application/json");
        var h = authHeaders();
        Object.keys(h).forEach(function (k) { xhr.setRequestHeader(k, h[k]); });
        xhr.upload.addEventListener("progress", function (event) {
          if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
        });
        xhr.addEventListener("load", function () {
          var data = null;
          try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
          resolve({ status: xhr.status, data: data, statusText: xhr.statusText });
        });
        xhr.addEventListener("error", function () { resolve({ status: 0, data: null }); });
        xhr.send(form);
      });
    }
    return (async function () {
      for (var round = 0; ; round++) {
        var result = await send();
        if (result.status === 401 && round < 3) {
          if (await askToken(unauthorizedReason(round === 0 && !token()))) continue;
        }
        if (result.status === 0) throw new ApiError(0, null, "cannot reach the controller");
        if (result.status >= 400) throw new ApiError(result.status, result.data, result.statusText);
        return result.data;
      }
    })();
  }

  // Shows an API error next to the form control whose data-error-for names its field (the
  // API's error body names it), else in `fallback`. Returns the control, if any.
  function showFieldError(form, error, fallback) {
    var target = null;
    if (error.field) {
      form.querySelectorAll("[data-error-for]").forEach(function (node) {
        if (node.dataset.errorFor === error.field) target = node;
      });
    }
    if (!target) {
      fallback.textContent = error.message;
      return null;
    }
    target.textContent = error.message;
    var control = byId(target.id.replace(/^e-/, "f-")) || form.querySelector("[name]");
    form.querySelectorAll("[name]").forEach(function (input) {
      if (input.name === error.field) control = input;
    });
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
    return control;
  }

  function clearErrors(form) {
    form.querySelectorAll(".error").forEach(function (node) { node.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (node) {
      node.removeAttribute("aria-invalid");
    });
  }

  // Runs `task` now and again `intervalMs` after each run ends, while the tab is visible.
  function every(intervalMs, task) {
    var timer = null;
    var busy = false;
    async function run() {
      if (timer) clearTimeout(timer);
      timer = null;
      if (busy) return;
      busy = true;
      try { await task(); } catch (e) { /* the task shows its own errors */ }
      busy = false;
      if (!document.hidden) timer = setTimeout(run, intervalMs);
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && timer === null && !busy) run();
    });
    run();
    return { now: run };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var forget = byId("token-forget");
    if (forget) {
      forget.addEventListener("click", function () {
        sessionStorage.removeItem(TOKEN_KEY);
        showForget();
      });
    }
    showForget();
  });

  window.cnn = {
    el: el, append: append, byId: byId, setText: setText, facts: facts, badge: badge,
    progressBar: progressBar, pct: pct, num: num, ago: ago, since: since, when: when,
    lastMetrics: lastMetrics, queuePlace: queuePlace, links: links, link: link, seg: seg, api: api, upload: upload,
    ApiError: ApiError, showFieldError: showFieldError, clearErrors: clearErrors, every: every,
    askToken: askToken,
  };
})();
