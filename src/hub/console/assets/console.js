// tether console: live refresh of marked tables, confirmation of
// destructive forms. No inline script anywhere (the CSP forbids it).
"use strict";

const EVERY_MS = 5000;

function stamp(ok) {
  for (const s of document.querySelectorAll(".stamp")) {
    s.textContent = ok ? "(last " + new Date().toLocaleTimeString() + ")" : "(cannot reach the hub; retrying)";
    s.classList.toggle("stale", !ok);
  }
}

function refresh(el) {
  const url = el.getAttribute("data-refresh");
  async function tick() {
    try {
      // This header tells the hub the request is the page's own: it does not
      // count as use, so an open page still signs out when left alone.
      const r = await fetch(url, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } });
      if (r.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (r.ok) {
        const html = await r.text();
        if (el.innerHTML !== html) {
          // A job's output someone unfolded stays unfolded across the refresh.
          const open = Array.from(el.querySelectorAll("[data-job] details[open]"), (d) =>
            d.closest("[data-job]").getAttribute("data-job"));
          el.innerHTML = html;
          for (const id of open) {
            const d = el.querySelector('[data-job="' + CSS.escape(id) + '"] details');
            if (d) d.open = true;
          }
        }
        stamp(true);
      } else {
        stamp(false);
      }
    } catch (e) {
      stamp(false);
    }
    window.setTimeout(tick, EVERY_MS);
  }
  window.setTimeout(tick, EVERY_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  stamp(true);
});

// Forms marked data-confirm ask first (delegated: refreshed rows have them too).
document.addEventListener("submit", (ev) => {
  const q = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
  if (q && !window.confirm(q)) ev.preventDefault();
});
