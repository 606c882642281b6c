// werkfluss dashboard: live updates and actions, in plain JavaScript (no build step).
//
// - [data-poll]: fetch that URL (JSON) every data-poll-ms and replace each
//   [data-fragment=NAME] inside with html[NAME] from the answer (server-rendered).
// - #run[data-version-url]: reload the run's page when its version changes.
// - form[data-action]: POST as JSON with the access token in X-Werkfluss-Token.
(function () {
  "use strict";

  var TOKEN_KEY = "werkfluss.dashboard.token";
  var FLASH_KEY = "werkfluss.dashboard.flash";

  function $(selector, root) { return (root || document).querySelector(selector); }

  function storedToken() {
    try { return window.sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function flash(message, ok) {
    var box = $("#flash");
    if (!box) { return; }
    box.textContent = message;
    box.className = "flash " + (ok ? "ok" : "bad");
    box.hidden = false;
  }

  function setLive(ok) {
    var state = $("#live-state");
    if (!state) { return; }
    state.classList.toggle("stale", !ok);
    state.textContent = ok ? "live · updated " + new Date().toLocaleTimeString()
                           : "connection lost; retrying";
  }

  // Something typed that a reload would throw away.
  function editing() {
    var active = document.activeElement;
    if (active && (active.tagName === "INPUT" || active.tagName === "TEXTAREA" || active.tagName === "SELECT")) {
      return true;
    }
    var fields = document.querySelectorAll("form[data-action] input.payload");
    for (var i = 0; i < fields.length; i++) { if (fields[i].value) { return true; } }
    return false;
  }

  // --- the access token ---------------------------------------------------------------
  function setUpToken() {
    var form = $("#token-form");
    if (!form) { return; }
    var input = $("#access-token");
    var state = $("#token-state");
    input.value = storedToken();
    function show() { state.textContent = storedToken() ? "set for this tab" : "not set"; }
    show();
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      try { window.sessionStorage.setItem(TOKEN_KEY, input.value.trim()); } catch (e) { /* private mode */ }
      show();
    });
  }

  // --- actions ----------------------------------------------------------------------
  function setUpActions() {
    document.addEventListener("submit", function (event) {
      var form = event.target.closest ? event.target.closest("form[data-action]") : null;
      if (!form) { return; }
      event.preventDefault();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { return; }
      var fields = {};
      new FormData(form).forEach(function (value, key) { if (key !== "access_token") { fields[key] = value; } });
      var button = form.querySelector("button");
      if (button) { button.disabled = true; }
      fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          "Accept": "application/json",
          "X-Werkfluss-Token": storedToken()
        },
        body: JSON.stringify(fields)
      }).then(function (response) {
        return response.json().catch(function () { return { message: response.statusText }; })
          .then(function (data) {
            var message = data.message || response.statusText;
            if (response.ok) {
              try { window.sessionStorage.setItem(FLASH_KEY, message); } catch (e) { /* ignore */ }
              window.location.reload();
            } else {
              flash(message + " (HTTP " + response.status + ")", false);
            }
          });
      }).catch(function (error) {
        flash("the request failed: " + error, false);
      }).then(function () {
        if (button) { button.disabled = false; }
      });
    });
  }

  function showStoredFlash() {
    var message = null;
    try {
      message = window.sessionStorage.getItem(FLASH_KEY);
      window.sessionStorage.removeItem(FLASH_KEY);
    } catch (e) { /* ignore */ }
    if (message) { flash(message, true); }
  }

  // --- live lists ---------------------------------------------------------------------
  function setUpPolling() {
    var section = $("[data-poll]");
    if (!section) { return; }
    var every = parseInt(section.dataset.pollMs, 10) || 2000;
    var busy = false;
    function poll() {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(section.dataset.poll, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (data) {
          var html = data.html || {};
          Object.keys(html).forEach(function (name) {
            var target = section.querySelector('[data-fragment="' + name + '"]');
            if (target) { target.innerHTML = html[name]; }
          });
          setLive(true);
        })
        .catch(function () { setLive(false); })
        .then(function () { busy = false; });
    }
    setLive(true);
    window.setInterval(poll, every);
  }

  // Selects in the filter bar apply at once.
  function setUpFilters() {
    var form = $("#filters");
    if (!form) { return; }
    form.addEventListener("change", function (event) {
      if (event.target.tagName === "SELECT") { form.submit(); }
    });
  }

  // --- one run --------------------------------------------------------------------------
  function setUpRunPage() {
    var run = $("#run[data-version-url]");
    if (!run) { return; }
    var every = parseInt(run.dataset.pollMs, 10) || 2000;
    window.setInterval(function () {
      if (document.hidden || editing()) { return; }
      fetch(run.dataset.versionUrl, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (data && data.version && data.version !== run.dataset.version) { window.location.reload(); }
        })
        .catch(function () { /* the next poll tries again */ });
    }, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpToken();
    setUpActions();
    showStoredFlash();
    setUpPolling();
    setUpFilters();
    setUpRunPage();
  });
}());
