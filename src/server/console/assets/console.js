// greenlight console: live updates of the page's #live section (polling with ETags, only while
// the page is visible) and actions sent as JSON with the page's revision and CSRF token.
"use strict";
(function () {
  const POLL_MS = 2000;
  let etag = null;
  let timer = null;

  function live() { return document.getElementById("live"); }

  function fragmentUrl() {
    const u = new URL(window.location.href);
    u.searchParams.set("fragment", "1");
    return u.toString();
  }

  async function refresh() {
    const el = live();
    if (!el || document.hidden) return;
    const headers = etag ? { "If-None-Match": etag } : {};
    try {
      const r = await fetch(fragmentUrl(), { headers, credentials: "same-origin", cache: "no-cache" });
      if (r.status === 200) {
        etag = r.headers.get("ETag");
        const html = await r.text();
        el.outerHTML = html;
        document.body.dataset.updated = String(Date.now());
      }
    } catch (e) {
      // The daemon may be restarting: keep the last view and try again.
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = setInterval(refresh, POLL_MS);
  }

  function filters() {
    const form = document.querySelector("form.filters");
    if (!form) return;
    form.addEventListener("change", () => {
      const u = new URL(window.location.href);
      for (const sel of form.querySelectorAll("select")) {
        if (sel.value) u.searchParams.set(sel.name, sel.value); else u.searchParams.delete(sel.name);
      }
      u.searchParams.delete("fragment");
      history.replaceState(null, "", u.toString());
      etag = null;
      refresh();
    });
  }

  function actions() {
    const form = document.getElementById("action-form");
    if (!form) return;
    const result = document.getElementById("action-result");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const button = ev.submitter;
      if (!button) return;
      const action = button.value;
      const reason = form.querySelector("#reason").value.trim();
      if (!reason) { result.textContent = "Give a reason first."; result.className = "error"; return; }
      const api = form.dataset.api;
      if (button.dataset.confirm && !window.confirm(action + " " + api + "? " + reason)) return;
      const el = live();
      const revision = el && el.dataset.revision ? Number(el.dataset.revision) : null;
      const token = document.querySelector('meta[name="csrf-token"]');
      const headers = { "Content-Type": "application/json" };
      if (token) headers["X-CSRF-Token"] = token.content;
      result.textContent = "Sending " + action + "…";
      result.className = "";
      let r, body;
      try {
        r = await fetch("/api/v1/rollouts/" + encodeURIComponent(api) + "/actions", {
          method: "POST", headers, credentials: "same-origin",
          body: JSON.stringify({ action, reason, expected_revision: revision }),
        });
        body = await r.json();
      } catch (e) {
        result.textContent = "The console did not answer: " + e;
        result.className = "error";
        return;
      }
      if (r.ok) {
        result.textContent = action + " recorded (request " + body.request_id + "); greenlight applies it at its next evaluation.";
        result.className = "ok";
        form.querySelector("#reason").value = "";
      } else if (r.status === 409) {
        result.textContent = "Not done: " + body.error + " The page now shows the current state.";
        result.className = "error";
      } else {
        result.textContent = "Refused (" + r.status + "): " + body.error;
        result.className = "error";
      }
      etag = null;
      refresh();
    });
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  document.addEventListener("DOMContentLoaded", () => {
    filters();
    actions();
    if (live()) schedule();
  });
})();
