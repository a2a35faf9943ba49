// The status page's script (GET /): follows the agent without a reload, and the "Sync now" button.
//
// Served as a file by the agent (the page's Content-Security-Policy allows no inline script). The
// page is complete without it. Every second it asks GET /ui/live (with the ETag of what it shows;
// 304 when nothing changed) and swaps the server-rendered, escaped part in, while the tab is
// visible; when the agent stops answering it says so and dims what it shows. The API token, when the agent wants one for
// POST /sync, is asked once and kept in this tab's sessionStorage: never in a URL or a cookie.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var TIMEOUT_MS = 4000;
  var TOKEN_KEY = "reconciler.api-token";

  var etag = document.body.getAttribute("data-etag") || "";
  var lostSince = null;
  var timer = null;

  function connection(text) {
    var el = document.getElementById("connection");
    if (!el) return;
    if (text) {
      el.textContent = text;
      el.hidden = false;
      document.body.classList.add("stale");
    } else {
      el.textContent = "";
      el.hidden = true;
      document.body.classList.remove("stale");
    }
  }

  function hhmmss(d) {
    return d.toISOString().slice(11, 19) + " UTC";
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
    var live = document.getElementById("live");
    if (!fresh || !live) return;
    // Keep what the reader opened or closed.
    var open = {};
    live.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
    fresh.querySelectorAll("details[id]").forEach(function (d) {
      if (Object.prototype.hasOwnProperty.call(open, d.id)) d.open = open[d.id];
    });
    live.replaceWith(document.adoptNode(fresh));
    var state = fresh.getAttribute("data-state");
    if (state) document.title = document.title.replace(/^[^ ]+/, state);
  }

  function lost(why) {
    if (lostSince === null) lostSince = new Date();
    connection("The agent is not answering (" + why + ") since " + hhmmss(lostSince) +
      "; what is shown may be out of date. Still trying.");
  }

  function poll() {
    clearTimeout(timer);
    if (document.hidden) return; // a background tab costs the agent nothing; see visibilitychange
    var ctrl = new AbortController();
    var abort = setTimeout(function () { ctrl.abort(); }, TIMEOUT_MS);
    var headers = {};
    if (etag) headers["If-None-Match"] = etag;
    fetch("/ui/live", { headers: headers, cache: "no-store", signal: ctrl.signal })
      .then(function (resp) {
        if (resp.status === 304) return null;
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        var tag = resp.headers.get("ETag");
        return resp.text().then(function (html) {
          if (tag) etag = tag;
          swap(html);
        });
      })
      .then(function () {
        lostSince = null;
        connection("");
      })
      .catch(function (err) {
        lost(err && err.name === "AbortError" ? "no answer in " + TIMEOUT_MS / 1000 + " s" : String(err && err.message || err));
      })
      .finally(function () {
        clearTimeout(abort);
        timer = setTimeout(poll, POLL_MS);
      });
  }

  // -- Sync now --------------------------------------------------------------------------------

  function storedToken() {
    try { return window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function storeToken(value) {
    try {
      if (value) window.sessionStorage.setItem(TOKEN_KEY, value);
      else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: ask again next time */ }
  }

  function askToken() {
    var dialog = document.getElementById("token-dialog");
    var input = document.getElementById("token-input");
    if (!dialog || typeof dialog.showModal !== "function") return Promise.resolve(null);
    input.value = "";
    return new Promise(function (resolve) {
      dialog.addEventListener("close", function onClose() {
        dialog.removeEventListener("close", onClose);
        var value = dialog.returnValue === "ok" ? input.value.trim() : "";
        input.value = "";
        resolve(value || null);
      });
      dialog.returnValue = "";
      dialog.showModal();
      input.focus();
    });
  }

  function say(text, kind) {
    var el = document.getElementById("sync-message");
    if (!el) return;
    el.textContent = text;
    el.className = "sync-message" + (kind ? " " + kind : "");
  }

  function sync(form) {
    var button = document.getElementById("sync-button");
    var required = form.getAttribute("data-token-required") === "yes";
    var token = storedToken();
    var ready = required && !token ? askToken() : Promise.resolve(token);
    ready.then(function (value) {
      var headers = {};
      if (value) headers.Authorization = "Bearer " + value;
      if (button) button.disabled = true;
      say("asking the agent…", "");
      return fetch("/sync", { method: "POST", headers: headers, cache: "no-store" }).then(function (resp) {
        if (resp.status === 202) {
          if (value) storeToken(value);
          say("sync queued at " + hhmmss(new Date()), "queued");
        } else if (resp.status === 401) {
          storeToken(null);
          say(value ? "refused: wrong API token (401)" : "refused: the agent wants its API token (401)", "refused");
        } else {
          say("sync failed: HTTP " + resp.status, "refused");
        }
        poll();
      });
    }).catch(function (err) {
      say("sync failed: " + String(err && err.message || err), "refused");
    }).finally(function () {
      if (button) button.disabled = false;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("sync");
    if (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        sync(form);
      });
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
    timer = setTimeout(poll, POLL_MS);
  });
})();
