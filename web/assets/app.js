// Sluice web UI: live blocks over server-sent events, buttons that call the REST API
// (with the session cookie and the header the API asks of cookie-authenticated
// writes), the trigger dialog, and a live tail of a try's log.
"use strict";

const UI_HEADERS = { "Content-Type": "application/json", "X-Requested-With": "sluice" };

function flash(text, bad) {
  const el = document.getElementById("flash");
  if (!el) return;
  el.textContent = text;
  el.className = "flash" + (bad ? " bad" : "");
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 3000);
}

// The API's errors carry a `detail`: a sentence, or a list of {loc, msg}.
async function apiError(resp) {
  try {
    const body = await resp.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
    return JSON.stringify(body);
  } catch (_) {
    return resp.status + " " + resp.statusText;
  }
}

async function api(method, url, body) {
  const resp = await fetch(url, {
    method,
    headers: UI_HEADERS,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) throw new Error(await apiError(resp));
  return resp.status === 204 ? null : resp.json();
}

// Live blocks: the server pushes the block again whenever it changed.
function startLive() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.live || !window.EventSource) return;
  const source = new EventSource(live.dataset.live);
  source.addEventListener("live", (ev) => {
    live.innerHTML = ev.data;
    live.dataset.updated = String(Date.now());
    document.dispatchEvent(new CustomEvent("sluice:live"));
  });
  source.addEventListener("problem", (ev) => flash(ev.data, true));
}

// Pause toggles (DAG list and DAG pages).
document.addEventListener("change", async (ev) => {
  const box = ev.target;
  if (!box.classList || !box.classList.contains("pause-toggle")) return;
  const dag = box.dataset.dag;
  try {
    await api("PATCH", "/api/v2/dags/" + encodeURIComponent(dag), { is_paused: !box.checked });
    flash(dag + (box.checked ? " is active" : " is paused"));
  } catch (e) {
    box.checked = !box.checked;
    flash("Cannot change " + dag + ": " + e.message, true);
  }
});

document.addEventListener("click", async (ev) => {
  const trigger = ev.target.closest && ev.target.closest("button.trigger");
  if (trigger) {
    ev.preventDefault();
    openTrigger(trigger.dataset.dag, trigger.dataset.params || "{}");
    return;
  }
  const action = ev.target.closest && ev.target.closest("button.api-action");
  if (action) {
    ev.preventDefault();
    if (action.dataset.confirm && !window.confirm(action.dataset.confirm)) return;
    action.disabled = true;
    try {
      await api(action.dataset.method, action.dataset.url, JSON.parse(action.dataset.body || "{}"));
      flash(action.textContent.trim() + ": done");
    } catch (e) {
      flash(action.textContent.trim() + " failed: " + e.message, true);
    } finally {
      action.disabled = false;
    }
  }
});

function openTrigger(dag, params) {
  const dialog = document.getElementById("trigger-dialog");
  if (!dialog) return;
  document.getElementById("trigger-dag").textContent = dag;
  document.getElementById("trigger-conf").value = params;
  document.getElementById("trigger-error").hidden = true;
  dialog.dataset.dag = dag;
  dialog.showModal();
}

document.addEventListener("DOMContentLoaded", () => {
  startLive();
  startLogTail();
  const form = document.getElementById("trigger-form");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      if (ev.submitter && ev.submitter.value === "cancel") return;
      ev.preventDefault();
      const dialog = document.getElementById("trigger-dialog");
      const error = document.getElementById("trigger-error");
      const dag = dialog.dataset.dag;
      let conf;
      try {
        conf = JSON.parse(document.getElementById("trigger-conf").value || "{}");
      } catch (e) {
        error.textContent = "The configuration is not JSON: " + e.message;
        error.hidden = false;
        return;
      }
      try {
        const run = await api("POST", "/api/v2/dags/" + encodeURIComponent(dag) + "/dagRuns", { conf, logical_date: null });
        dialog.close();
        flash("Triggered " + run.dag_run_id);
        if (!location.pathname.startsWith("/dags/" + encodeURIComponent(dag))) {
          location.href = "/dags/" + encodeURIComponent(dag);
        }
      } catch (e) {
        error.textContent = e.message;
        error.hidden = false;
      }
    });
  }
});

// A try's log, followed while the try runs (the API's continuation token says where
// to go on, and whether the log has ended). The live block names the try to follow
// (`#log-src`): when a try starts, or a retry begins, the tail switches to it.
let logTail = null;

function startLogTail() {
  const pre = document.getElementById("log");
  const src = document.getElementById("log-src");
  if (!pre || !src) return;
  const url = src.dataset.url;
  if (!url || (logTail && logTail.url === url)) return;
  if (logTail) logTail.stopped = true;
  const tail = { url, stopped: false, token: null };
  logTail = tail;
  pre.textContent = "";
  pre.hidden = false;
  const none = document.getElementById("log-none");
  if (none) none.hidden = true;
  const tick = async () => {
    if (tail.stopped) return;
    const sep = url.includes("?") ? "&" : "?";
    const next = url + (tail.token ? sep + "token=" + encodeURIComponent(tail.token) : "");
    let ended = false;
    try {
      const resp = await fetch(next, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!resp.ok) throw new Error(await apiError(resp));
      const body = await resp.json();
      if (tail.stopped) return;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      for (const line of body.content) {
        const text = line.timestamp ? "[" + line.timestamp + "] " + (line.level || "").toUpperCase() + " " + line.event : line.event;
        pre.appendChild(document.createTextNode(text + "\n"));
      }
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      tail.token = body.continuation_token;
      ended = tokenEnded(tail.token);
    } catch (e) {
      flash("Cannot read the log: " + e.message, true);
    }
    if (!ended) setTimeout(tick, 1000);
    else pre.dataset.ended = "true";
  };
  tick();
}

document.addEventListener("sluice:live", startLogTail);

function tokenEnded(token) {
  if (!token) return false;
  try {
    const b64 = token.replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4))).end_of_log === true;
  } catch (_) {
    return false;
  }
}
