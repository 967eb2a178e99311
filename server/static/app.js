// The dashboard: plain DOM, no framework. Data only ever reaches the page
// through textContent, never as HTML.
/* global openEventStream */
"use strict";

const TOKEN_KEY = "ayon.adminToken";
const MAINTENANCE = "server.maintenance";
const $ = (selector, root) => (root || document).querySelector(selector);

const state = { token: localStorage.getItem(TOKEN_KEY), stream: null, eventsCursor: null, config: null, run: null };

class ApiError extends Error {
  constructor(status, title, description) {
    super(description || title || `HTTP ${status}`);
    this.status = status;
    this.title = title;
  }
}

async function api(path, options) {
  const init = Object.assign({ headers: {} }, options || {});
  init.headers = Object.assign({ Accept: "application/json", Authorization: `Bearer ${state.token}` }, init.headers);
  if (init.json !== undefined) {
    init.body = JSON.stringify(init.json);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "Unreachable", `the server did not answer (${err.message})`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (body && body.error) || {};
    if (response.status === 401) signedOut(`The token was refused: ${error.description || error.title || "401"}`);
    throw new ApiError(response.status, error.title, error.description);
  }
  return body;
}

// --- small helpers ---

function when(value) {
  if (!value) return "";
  const date = new Date(value);
  return isNaN(date) ? String(value) : date.toLocaleString();
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function badge(td, status) {
  td.textContent = "";
  const span = document.createElement("span");
  span.className = "badge";
  span.dataset.status = status;
  span.textContent = status;
  td.appendChild(span);
}

function showError(message) {
  const line = $("#error");
  line.textContent = message || "";
  line.hidden = !message;
}

function guarded(fn) {
  return (...args) => Promise.resolve().then(() => fn(...args)).catch(reportError);
}

// --- the token ---

// `keep` leaves a stored token in place when the server, not the token, failed.
function signedOut(message, keep) {
  if (state.stream) state.stream.close();
  state.stream = null;
  state.token = null;
  if (!keep) localStorage.removeItem(TOKEN_KEY);
  $("#dashboard").hidden = true;
  $("#sign-out").hidden = true;
  $("#login").hidden = false;
  const line = $("#login-error");
  line.textContent = message || "";
  line.hidden = !message;
  setLive("off", "offline");
  $("#token").focus();
}

async function signIn(token) {
  state.token = token;
  // Any authenticated read tells whether the token is good; the configuration is needed anyway.
  await loadConfig();
  localStorage.setItem(TOKEN_KEY, token);
  $("#login").hidden = true;
  $("#login-error").hidden = true;
  $("#dashboard").hidden = false;
  $("#sign-out").hidden = false;
  showError("");
  startStream();
  await Promise.all([loadMaintenance(), loadInstances(), loadEvents(), loadLogs()].map((p) => p.catch(reportError)));
}

function reportError(err) {
  if (err.status !== 401) showError(`${err.title || "Error"}: ${err.message}`);
}

// --- maintenance ---

const ENDED = ["finished", "failed", "aborted"];

function parseStep(description) {
  // The maintenance runner describes each step as "task i/n: name — what it does".
  const match = /\btask\s+(\d+)\s*(?:\/|of)\s*(\d+)/i.exec(description || "");
  return match ? { index: Number(match[1]), total: Number(match[2]) } : null;
}

function showRun(event) {
  state.run = event;
  const status = event ? event.status : "none";
  const label = $("#run-status");
  label.dataset.status = status;
  label.textContent = event ? status : "none yet";
  $("#run-when").textContent = event ? `started ${when(event.created_at)}` : "";
  const bar = $("#run-bar");
  const step = $("#run-step");
  if (!event) {
    bar.value = 0;
    step.textContent = "No maintenance run recorded.";
    $("#run-summary").textContent = "";
    return;
  }
  const progress = parseStep(event.description);
  if (status === "finished") {
    bar.max = 1;
    bar.value = 1;
  } else if (progress) {
    bar.max = progress.total;
    // While task i runs, i - 1 tasks are done.
    bar.value = Math.max(0, progress.index - (status === "in_progress" ? 1 : 0));
  } else if (!ENDED.includes(status)) {
    bar.removeAttribute("value");
  }
  const text = event.description || "";
  step.textContent = progress ? `Task ${progress.index} of ${progress.total}: ${text.replace(/^task\s+\d+\s*\/\s*\d+:\s*/i, "")}` : text;
  $("#run-summary").textContent = summarize(event.summary);
}

function summarize(summary) {
  if (!summary || !Array.isArray(summary.tasks)) return "";
  const parts = summary.tasks.map((t) => `${t.name} ${t.status}${t.rows != null ? ` (${t.rows} rows)` : ""}`);
  const total = summary.duration_s != null ? ` in ${Number(summary.duration_s).toFixed(1)} s` : "";
  return parts.join(", ") + total;
}

async function loadLatestRun() {
  const body = await api(`/api/events?topic=${MAINTENANCE}&limit=1`);
  const latest = body.events[0];
  if (latest) newerRun(latest);
  else if (!state.run) showRun(null);
}

async function loadMaintenance() {
  await loadLatestRun();
  const body = await api("/api/maintenance");
  const next = body && body.next_run;
  $("#run-next").textContent = next ? `Next scheduled run: ${when(next)}` : "No run scheduled (maintenance is off).";
  const rows = $("#runs tbody");
  rows.textContent = "";
  for (const run of body.last_runs) {
    const row = rows.insertRow();
    cell(row, when(run.created_at));
    badge(row.insertCell(), run.status);
    cell(row, run.description);
  }
}

async function runNow() {
  const button = $("#run-now");
  button.disabled = true;
  try {
    const body = await api("/api/maintenance/run", { method: "POST" });
    $("#run-step").textContent = `Run requested (${(body && body.id) || "queued"}); waiting for the maintenance daemon…`;
  } finally {
    button.disabled = false;
  }
}

// --- instances ---

function flattenInstances(body) {
  const rows = [];
  for (const instance of body.instances) {
    for (const p of instance.programs) rows.push(Object.assign({ instance_id: instance.instance_id }, p));
  }
  return rows;
}

async function loadInstances() {
  const rows = $("#instances tbody");
  const found = flattenInstances(await api("/api/instances"));
  rows.textContent = "";
  for (const p of found) {
    const row = rows.insertRow();
    cell(row, p.instance_id);
    cell(row, p.program);
    cell(row, p.pid);
    cell(row, when(p.last_seen));
    badge(row.insertCell(), p.stale ? "stale" : "alive");
    const info = p.info && Object.keys(p.info).length ? JSON.stringify(p.info) : "";
    cell(row, info, "mono");
  }
  if (!found.length) cell(rows.insertRow(), "No instance has sent a heartbeat yet.").colSpan = 6;
}

// --- configuration ---

async function loadConfig() {
  const body = await api("/api/config");
  state.config = body;
  const m = (state.config && state.config.maintenance) || {};
  $("#cfg-enabled").checked = !!m.enabled;
  $("#cfg-time").value = m.time || "";
  $("#cfg-timezone").value = m.timezone || "";
  const box = $("#cfg-tasks");
  for (const old of box.querySelectorAll("label")) old.remove();
  for (const [name, task] of Object.entries(m.tasks || {})) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = name;
    input.checked = !!(task && task.enabled);
    label.append(input, ` ${name}`);
    box.appendChild(label);
  }
  $("#config-doc").textContent = JSON.stringify(state.config, null, 2);
}

async function saveConfig(event) {
  event.preventDefault();
  const result = $("#config-result");
  const tasks = {};
  for (const input of $("#cfg-tasks").querySelectorAll("input")) tasks[input.name] = { enabled: input.checked };
  const patch = {
    maintenance: {
      enabled: $("#cfg-enabled").checked,
      time: $("#cfg-time").value,
      timezone: $("#cfg-timezone").value.trim(),
      tasks,
    },
  };
  result.className = "";
  result.textContent = "Saving…";
  try {
    await api("/api/config", { method: "PATCH", json: patch });
    await loadConfig();
    await loadMaintenance();
    result.textContent = "Saved.";
  } catch (err) {
    result.className = "error";
    result.textContent = `Not saved: ${err.message}`;
  }
}

// --- events and logs ---

function eventQuery() {
  const form = $("#events-filter");
  const params = new URLSearchParams({ limit: "50" });
  if (form.topic.value.trim()) params.set("topic", form.topic.value.trim());
  if (form.status.value) params.set("status", form.status.value);
  return params;
}

async function loadEvents(more) {
  const params = eventQuery();
  if (more && state.eventsCursor) params.set("cursor", state.eventsCursor);
  const body = await api(`/api/events?${params}`);
  const rows = $("#events tbody");
  if (!more) rows.textContent = "";
  for (const e of body.events) {
    const row = rows.insertRow();
    row.dataset.id = e.id;
    cell(row, when(e.created_at));
    cell(row, e.topic, "mono");
    badge(row.insertCell(), e.status);
    cell(row, e.description);
    cell(row, e.sender);
  }
  if (!rows.rows.length) cell(rows.insertRow(), "No event matches.").colSpan = 5;
  state.eventsCursor = body.next_cursor || null;
  $("#events-more").hidden = !state.eventsCursor;
}

async function loadLogs() {
  const form = $("#logs-filter");
  const params = new URLSearchParams({ limit: "100" });
  if (form.level.value) params.set("level", form.level.value);
  if (form.text.value.trim()) params.set("text", form.text.value.trim());
  const body = await api(`/api/logs?${params}`);
  const rows = $("#logs tbody");
  rows.textContent = "";
  for (const r of body.logs) {
    const row = rows.insertRow();
    cell(row, when(r.ts));
    cell(row, r.level, `level-${r.level}`);
    cell(row, `${r.instance}/${r.program}`, "mono");
    cell(row, r.message);
  }
  if (!body.logs.length) cell(rows.insertRow(), "No log record matches.").colSpan = 4;
}

// --- live updates ---

function setLive(stateName, text) {
  $("#live").dataset.state = stateName;
  $("#live").textContent = text;
}

let eventsRefresh = null;

// A newer state of the maintenance run wins; an older answer arriving late is ignored.
function newerRun(event) {
  const current = state.run;
  if (current && current.id !== event.id && event.created_at < current.created_at) return;
  if (current && current.id === event.id && event.updated_at < current.updated_at) return;
  showRun(event);
}

function onMaintenanceChange(change) {
  const current = state.run;
  if (current && current.id === change.id && !ENDED.includes(change.status)) {
    // The notification has no created_at or summary: keep those of the known run.
    newerRun(Object.assign({}, current, change));
    return;
  }
  // A new run, or the end of one (its summary is only in the table): read the whole event.
  api(`/api/events/${change.id}`).then(newerRun, reportError);
  if (ENDED.includes(change.status)) loadMaintenance().catch(reportError);
}

function onStreamEvent(type, data) {
  let change;
  try {
    change = JSON.parse(data);
  } catch (err) {
    return;
  }
  if (!change || !change.topic) return;
  if (change.topic === MAINTENANCE) onMaintenanceChange(change);
  // Coalesce bursts of changes into one reload of the events table.
  clearTimeout(eventsRefresh);
  eventsRefresh = setTimeout(() => loadEvents(false).catch(reportError), 500);
}

function startStream() {
  if (state.stream) state.stream.close();
  state.stream = openEventStream("/api/events/stream", {
    headers: { Authorization: `Bearer ${state.token}` },
    onEvent: onStreamEvent,
    onState(name, status) {
      if (name === "live") {
        setLive("on", "live");
        // Whatever changed while disconnected is read once again.
        loadLatestRun().catch(reportError);
      } else if (name === "error" && status === 401) {
        signedOut("The token was refused by the event stream.");
      } else {
        setLive("off", name === "error" ? `stream error ${status}` : name);
      }
    },
  });
}

// --- wiring ---

async function loadInfo() {
  try {
    const info = await fetch("/api/info").then((r) => r.json());
    $("#server-info").textContent = `${info.version || ""} · instance ${info.instance_id || "?"}`;
  } catch (err) {
    $("#server-info").textContent = "";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    if (!token) return;
    try {
      await signIn(token);
      $("#token").value = "";
    } catch (err) {
      if (err.status !== 401) signedOut(`Could not sign in: ${err.message}`);
    }
  });
  $("#sign-out").addEventListener("click", () => signedOut(""));
  $("#run-now").addEventListener("click", guarded(runNow));
  $("#config-form").addEventListener("submit", saveConfig);
  $("#events-filter").addEventListener("submit", guarded(async (e) => { e.preventDefault(); await loadEvents(false); }));
  $("#events-more").addEventListener("click", guarded(() => loadEvents(true)));
  $("#logs-filter").addEventListener("submit", guarded(async (e) => { e.preventDefault(); await loadLogs(); }));
  for (const button of document.querySelectorAll("[data-refresh=instances]")) {
    button.addEventListener("click", guarded(loadInstances));
  }
  loadInfo();
  if (state.token) {
    signIn(state.token).catch((err) => {
      if (err.status !== 401) signedOut(`Could not reach the server: ${err.message}`, true);
    });
  } else {
    signedOut("");
  }
});
