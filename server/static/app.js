// The dashboard: plain DOM, no framework. Data only ever reaches the page
// through textContent, never as HTML.
/* global openEventStream */
"use strict";

const TOKEN_KEY = "ayon.adminToken";
const MAINTENANCE = "server.maintenance";
const $ = (selector, root) => (root || document).querySelector(selector);

const state = {
  token: localStorage.getItem(TOKEN_KEY), stream: null, eventsCursor: null, config: null, run: null,
  history: [], selected: null, pinned: false, drawnWidth: 0, logsCursor: null, logsShown: 0, clock: null,
};

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

const DASH = "—";
const NUMBER = new Intl.NumberFormat();
const COMPACT = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 2 });
const DECIMALS = [0, 1, 2].map((digits) => new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }));
const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
// Figures and times in the API: RFC 3339, or a maintenance slot ("2026-11-30T03:00Z").
const TIME_TEXT = /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)$/;

function known(value) {
  return typeof value === "number" && isFinite(value);
}

function pad(n) {
  return String(n).padStart(2, "0");
}

// The browser's abbreviation where it has a lettered one (UTC, CET, EST), else the offset (UTC+01:00).
function zoneOf(date) {
  let name = "";
  try {
    const part = new Intl.DateTimeFormat("en-US", { timeZoneName: "short" })
      .formatToParts(date).find((p) => p.type === "timeZoneName");
    name = part ? part.value : "";
  } catch (err) {
    name = "";
  }
  if (/^[A-Z]{2,5}$/.test(name)) return name;
  const minutes = -date.getTimezoneOffset();
  const abs = Math.abs(minutes);
  return `UTC${minutes < 0 ? "-" : "+"}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

function day(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

// Every time on the page: the browser's local time, always with its zone ("2026-11-30 03:00:12 UTC").
function when(value) {
  if (!value) return "";
  const date = new Date(value);
  if (isNaN(date)) return String(value);
  return `${day(date)} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())} ${zoneOf(date)}`;
}

function count(value) {
  return known(value) ? NUMBER.format(value) : DASH;
}

function bytes(value) {
  if (!known(value)) return DASH;
  let size = Math.abs(value);
  let unit = 0;
  // At most three digits before the point: 1,000 KiB reads better as 0.98 MiB.
  while (size >= 1000 && unit < BYTE_UNITS.length - 1) {
    size /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || size >= 100 ? 0 : size < 1 ? 2 : 1;
  return `${value < 0 ? "-" : ""}${DECIMALS[digits].format(size)} ${BYTE_UNITS[unit]}`;
}

function seconds(value) {
  if (!known(value)) return DASH;
  if (value > 0 && value < 0.01) return "< 0.01 s";
  if (value < 60) return `${DECIMALS[value < 0.1 ? 2 : 1].format(value)} s`;
  const whole = Math.round(value);
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  return `${Math.floor(whole / 3600)} h ${Math.floor((whole % 3600) / 60)} min`;
}

function beforeAfter(before, after) {
  return known(before) || known(after) ? `${bytes(before)} → ${bytes(after)}` : DASH;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

// A time cell: local time with its zone, the API's UTC text on hover.
function timeCell(row, value) {
  const td = row.insertCell();
  td.className = "nowrap";
  const time = document.createElement("time");
  time.dateTime = value || "";
  time.title = value || "";
  time.textContent = when(value);
  td.appendChild(time);
  return td;
}

function badge(td, status, text) {
  td.textContent = "";
  const span = document.createElement("span");
  span.className = "badge";
  span.dataset.status = status;
  span.textContent = text || status;
  td.appendChild(span);
  return span;
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
  await Promise.all([loadMaintenance(), loadInstances(), loadEvents(), loadLogs(false)].map((p) => p.catch(reportError)));
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
  // One word for a run's state wherever it shows: the card's, the chart's, the details' (running, not in_progress).
  const kind = event ? outcome(event) : "none";
  label.dataset.status = kind === "interrupted" || kind === "running" ? kind : status;
  label.textContent = event ? OUTCOME_TEXT[kind] : "none yet";
  $("#run-when").textContent = event ? `started ${when(event.created_at)}` : "";
  const bar = $("#run-bar");
  const step = $("#run-step");
  if (!event) {
    bar.value = 0;
    step.textContent = "No maintenance run recorded.";
    $("#run-summary").textContent = "";
    tickRun();
    return;
  }
  refreshHistoryRun(event);
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
  $("#run-summary").textContent = ENDED.includes(status) ? summarize(event.summary) : "";
  tickRun();
}

function elapsedOf(run) {
  const started = Date.parse(run && run.created_at);
  return isNaN(started) ? null : Math.max(0, Math.round((Date.now() - started) / 1000));
}

// While a run is on: its elapsed time (ticking every second) and the rows its ended tasks removed.
function tickRun() {
  const run = state.run;
  const running = !!run && outcome(run) === "running";
  $("#run-progress").hidden = !running;
  if (!running) {
    clearInterval(state.clock);
    state.clock = null;
    return;
  }
  const ended = tasksOf(run) || [];
  const progress = parseStep(run.description);
  const done = ended.filter((t) => t.status !== "skipped").length;
  $("#run-elapsed").textContent = `running for ${seconds(elapsedOf(run))}`;
  $("#run-rows").textContent = `${count(runRows(run) || 0)} rows removed so far` +
    (progress ? ` (${done} of ${progress.total} tasks ended)` : "");
  if (!state.clock) state.clock = setInterval(tickRun, 1000);
  const detail = $("#run-detail");
  if (!detail.hidden && state.selected === run.id) {
    const fact = $('#detail-facts [data-fact="Duration"] dd');
    if (fact) fact.textContent = `${seconds(elapsedOf(run))} so far`;
  }
}

// A newer state of a run the chart shows replaces it there, and in the details when it is the chosen one.
function refreshHistoryRun(event) {
  const index = state.history.findIndex((run) => run.id === event.id);
  const drawn = index < 0 ? null : state.history[index];
  if (!drawn || drawn.updated_at > event.updated_at) return;
  if (drawn.updated_at === event.updated_at && JSON.stringify(drawn) === JSON.stringify(event)) return;
  state.history[index] = event;
  drawHistory();
  if (state.selected === event.id) showRunDetail(event);
}

function summarize(summary) {
  if (!summary || !Array.isArray(summary.tasks)) return "";
  const parts = summary.tasks.map((t) => `${t.name} ${t.status}${t.rows != null ? ` (${count(t.rows)} rows)` : ""}`);
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
  const body = await api(`/api/maintenance?last=${HISTORY_RUNS}`);
  const next = body && body.next_run;
  $("#run-next").textContent = next
    ? `Next scheduled run: ${when(next)} (daily at ${body.time} ${body.timezone})`
    : "No run scheduled (maintenance is off).";
  state.history = body.last_runs || [];
  // The newest run until one is chosen; a chosen one while it is still drawn.
  if (!state.pinned || !state.history.some((run) => run.id === state.selected)) {
    state.selected = state.history.length ? state.history[0].id : null;
    state.pinned = false;
  }
  drawHistory();
  showRunDetail(state.history.find((run) => run.id === state.selected));
}

// --- maintenance history: the last runs as a chart, and one run's tasks ---

const HISTORY_RUNS = 30;
const SVG_NS = "http://www.w3.org/2000/svg";
const OUTCOME_TEXT = { finished: "finished", failed: "failed", interrupted: "interrupted", running: "running",
  queued: "queued" };

// A run that was aborted by a shutdown, or found dead and failed later, was interrupted.
function outcome(run) {
  if (run.status === "finished") return "finished";
  if (run.status === "aborted") return "interrupted";
  if (run.status === "failed") return /^interrupted: /.test(run.description || "") ? "interrupted" : "failed";
  return run.status === "pending" ? "queued" : "running";
}

function summaryOf(run) {
  return run && run.summary && typeof run.summary === "object" ? run.summary : {};
}

function tasksOf(run) {
  const tasks = summaryOf(run).tasks;
  return Array.isArray(tasks) ? tasks.filter((t) => t && typeof t === "object") : null;
}

function runDuration(run) {
  const value = summaryOf(run).duration_s;
  return known(value) ? value : null;
}

function runRows(run) {
  const tasks = tasksOf(run);
  if (!tasks) return null;
  const rows = tasks.map((t) => t.rows).filter(known);
  return rows.length ? rows.reduce((a, b) => a + b, 0) : null;
}

function runLabel(run) {
  return `${when(run.created_at)} · ${OUTCOME_TEXT[outcome(run)]} · ${seconds(runDuration(run))} · ${count(runRows(run))} rows`;
}

function svgNode(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

function svgText(parent, x, y, text, className, anchor) {
  const node = svgNode("text", { x, y, class: className || "", "text-anchor": anchor || "start" }, parent);
  node.textContent = text;
  return node;
}

// The smallest of 1, 2, 2.5, 5 × 10^n at or above `value`; durations over two minutes in whole minutes.
function niceMax(value, minutes) {
  if (minutes && value > 120) return niceMax(value / 60) * 60;
  if (!(value > 0)) return 1;
  const scale = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * scale >= value) return step * scale;
  return 10 * scale;
}

// The marks that say failed and interrupted without colour: a cross, a triangle; a ring while running.
function drawMarker(parent, kind, x, y) {
  if (kind === "failed") {
    svgNode("path", { d: `M${x - 5} ${y - 5}L${x + 5} ${y + 5}M${x + 5} ${y - 5}L${x - 5} ${y + 5}`, class: "marker" }, parent);
  } else if (kind === "interrupted") {
    svgNode("path", { d: `M${x} ${y - 6}L${x + 6} ${y + 5}L${x - 6} ${y + 5}Z`, class: "marker" }, parent);
  } else if (kind === "running") {
    svgNode("circle", { cx: x, cy: y, r: 4.5, class: "marker" }, parent);
  }
}

// Axis labels exact enough for the steps niceMax makes (1.25 s, 2.5 s); rows only as whole numbers.
function secondsTick(value) {
  return value < 10 && value > 0 ? `${DECIMALS[2].format(value)} s` : seconds(value);
}

function rowsTick(value) {
  return Number.isInteger(value) ? COMPACT.format(value) : "";
}

const PANELS = [
  { title: "Duration", top: 42, height: 84, value: runDuration, minutes: true, tick: secondsTick,
    empty: "no run has ended yet" },
  { title: "Rows removed", top: 160, height: 64, value: runRows, minutes: false, tick: rowsTick,
    empty: "nothing removed" },
];
// Each run's label is two lines, its date and its time, so runs of one day are told apart.
const CHART = { height: 266, left: 64, right: 8, markerY: 14, labelY: 244, lineHeight: 13 };
// The widest a bar gets when only a few runs are drawn.
const MAX_BAR = 40;

function drawHistory() {
  const box = $("#history-chart");
  const runs = state.history.slice().reverse(); // oldest on the left
  const which = runs.length === 1 ? "the only run so far"
    : runs.length < HISTORY_RUNS ? `all ${runs.length} runs so far` : `the last ${runs.length} runs`;
  $("#history-note").textContent = `${which}, oldest on the left; dates in ${zoneOf(new Date())}`;
  box.textContent = "";
  state.drawnWidth = box.clientWidth;
  if (!runs.length) {
    const line = document.createElement("p");
    line.className = "muted";
    line.textContent = "No maintenance run recorded yet.";
    box.appendChild(line);
    return;
  }
  const width = Math.max(320, box.clientWidth || 800);
  // As many slots as runs: a new install's few runs spread over the chart, not slivers in a corner.
  const slots = runs.length;
  const step = (width - CHART.left - CHART.right) / slots;
  const barWidth = Math.max(2, Math.min(MAX_BAR, step * 0.6));
  const chart = svgNode("svg", {
    width, height: CHART.height, viewBox: `0 0 ${width} ${CHART.height}`, class: "history",
    role: "group", "aria-label": `The last ${runs.length} maintenance runs: duration and rows removed`,
  });
  for (const panel of PANELS) {
    const values = runs.map(panel.value).filter(known);
    panel.max = niceMax(Math.max(0, ...values), panel.minutes);
    svgText(chart, 0, panel.top - 12, panel.title, "panel-title");
    // No scale to read when every value is zero or missing: the panel says so instead of a 0–1 axis.
    panel.isEmpty = !values.some((value) => value > 0);
    if (panel.isEmpty) {
      const y = panel.top + panel.height;
      svgNode("line", { x1: CHART.left, x2: width - CHART.right, y1: y, y2: y, class: "axis" }, chart);
      svgText(chart, (CHART.left + width - CHART.right) / 2, panel.top + panel.height / 2 + 4, panel.empty,
              "empty", "middle").dataset.panel = panel.title;
      continue;
    }
    for (const fraction of [0, 0.5, 1]) {
      const y = panel.top + panel.height * (1 - fraction);
      svgNode("line", { x1: CHART.left, x2: width - CHART.right, y1: y, y2: y, class: fraction ? "grid" : "axis" }, chart);
      svgText(chart, CHART.left - 6, y + 4, panel.tick(panel.max * fraction), "tick", "end");
    }
  }
  // Dates under the runs, at least 56 px apart, counted from the newest.
  const every = Math.max(1, Math.ceil(56 / step));
  runs.forEach((run, index) => {
    const x = CHART.left + step * (slots - runs.length + index + 0.5);
    const kind = outcome(run);
    const label = runLabel(run);
    const group = svgNode("g", {
      class: `run outcome-${kind}`, "data-status": run.status, "data-outcome": kind, "data-event-id": run.id,
      tabindex: 0, role: "button", "aria-label": label, "aria-pressed": run.id === state.selected,
    }, chart);
    if (run.id === state.selected) group.classList.add("selected");
    svgNode("title", {}, group).textContent = label;
    svgNode("rect", { x: x - step / 2, y: 0, width: step, height: CHART.labelY - 12, class: "hit" }, group);
    for (const panel of PANELS) {
      const value = panel.value(run);
      if (value === null || panel.isEmpty) continue;
      const height = Math.max(1, (value / panel.max) * panel.height);
      svgNode("rect", {
        x: x - barWidth / 2, y: panel.top + panel.height - height, width: barWidth, height, class: "bar",
      }, group);
    }
    drawMarker(group, kind, x, CHART.markerY);
    if ((runs.length - 1 - index) % every === 0) {
      const date = new Date(run.created_at);
      if (!isNaN(date)) {
        const label = svgText(group, x, CHART.labelY, `${pad(date.getMonth() + 1)}-${pad(date.getDate())}`, "date",
                              "middle");
        const time = svgNode("tspan", { x, dy: CHART.lineHeight }, label);
        time.textContent = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
      }
    }
  });
  box.appendChild(chart);
}

function selectRun(id, focus) {
  const run = state.history.find((r) => r.id === id);
  if (!run) return;
  state.selected = id;
  state.pinned = true;
  for (const mark of document.querySelectorAll("#history-chart .run")) {
    const chosen = mark.dataset.eventId === id;
    mark.classList.toggle("selected", chosen);
    mark.setAttribute("aria-pressed", String(chosen));
    if (chosen && focus) mark.focus();
  }
  showRunDetail(run);
}

function onHistoryClick(event) {
  const mark = event.target.closest(".run");
  if (mark) selectRun(mark.dataset.eventId);
}

function onHistoryKey(event) {
  const mark = event.target.closest(".run");
  if (!mark) return;
  const marks = [...document.querySelectorAll("#history-chart .run")];
  const index = marks.indexOf(mark);
  let target = null;
  if (event.key === "Enter" || event.key === " ") target = mark;
  else if (event.key === "ArrowLeft") target = marks[index - 1];
  else if (event.key === "ArrowRight") target = marks[index + 1];
  else return;
  event.preventDefault();
  if (target) selectRun(target.dataset.eventId, true);
}

function fact(list, name, value) {
  const pair = document.createElement("div");
  pair.dataset.fact = name;
  const term = document.createElement("dt");
  term.textContent = name;
  const text = document.createElement("dd");
  text.textContent = value;
  pair.append(term, text);
  list.appendChild(pair);
}

function showRunDetail(run) {
  const box = $("#run-detail");
  box.hidden = !run;
  if (!run) return;
  const summary = summaryOf(run);
  const payload = run.payload && typeof run.payload === "object" ? run.payload : {};
  const kind = outcome(run);
  const started = $("#detail-when");
  started.dateTime = run.created_at || "";
  started.title = run.created_at || "";
  started.textContent = when(run.created_at);
  const running = kind === "running" || kind === "queued";
  badge($("#detail-status"), ["interrupted", "running", "queued"].includes(kind) ? kind : run.status, OUTCOME_TEXT[kind]);
  $("#detail-description").textContent = run.description || "";
  const facts = $("#detail-facts");
  facts.textContent = "";
  fact(facts, "Trigger", payload.trigger || DASH);
  fact(facts, "Duration", running ? `${seconds(elapsedOf(run))} so far` : seconds(runDuration(run)));
  fact(facts, "Rows removed", running ? `${count(runRows(run) || 0)} so far` : count(runRows(run)));
  fact(facts, "Database", beforeAfter(summary.db_bytes_before, summary.db_bytes_after));
  const windowMinutes = summary.window_minutes;
  fact(facts, "Window", known(windowMinutes) ? (windowMinutes ? `${windowMinutes} min` : "none") : DASH);
  if (ENDED.includes(run.status)) fact(facts, "Ended", when(run.updated_at));

  const rows = $("#run-tasks tbody");
  rows.textContent = "";
  const tasks = tasksOf(run) || [];
  let kept = false; // a size that did not shrink: the note under the table says why
  for (const task of tasks) {
    const row = rows.insertRow();
    row.dataset.task = task.name || "";
    row.dataset.status = task.status || "";
    cell(row, task.name || DASH, "mono nowrap");
    const status = row.insertCell();
    badge(status, task.status || "unknown");
    const why = task.status === "failed" ? task.error : task.reason || task.error;
    if (why) {
      const text = document.createElement("span");
      text.className = task.status === "failed" ? "why error-text" : "why muted";
      text.textContent = why;
      status.appendChild(text);
    }
    cell(row, count(task.rows), "num");
    const size = cell(row, beforeAfter(task.bytes_before, task.bytes_after), "num");
    if (Array.isArray(task.tables) && task.tables.length) size.title = `tables: ${task.tables.join(", ")}`;
    if (known(task.bytes_before) && known(task.bytes_after) && task.bytes_after >= task.bytes_before) {
      kept = true;
      const why = document.createElement("span");
      why.className = "why muted";
      why.textContent = task.name === "vacuum" ? "plain VACUUM: space reusable, files keep their size"
        : "space freed inside the files, for new rows";
      size.appendChild(why);
    }
    const took = cell(row, seconds(task.duration_s), "num");
    if (known(task.time_limit_s)) took.title = `time limit ${seconds(task.time_limit_s)}${task.timed_out ? ", reached" : ""}`;
  }
  if (running) {
    // The task on now, from the run's description ("task 2/6: name — …"), after those that ended.
    const progress = parseStep(run.description);
    const name = /^task\s+\d+\s*\/\s*\d+:\s*(\S+)/i.exec(run.description || "");
    const row = rows.insertRow();
    row.dataset.status = "running";
    row.dataset.task = name ? name[1] : "";
    cell(row, name ? name[1] : "starting", "mono nowrap");
    badge(row.insertCell(), "running", progress ? `running, task ${progress.index} of ${progress.total}` : "starting");
    for (let i = 0; i < 3; i += 1) cell(row, DASH, "num");
  } else if (!tasks.length) {
    cell(rows.insertRow(), "This run recorded no tasks.", "muted").colSpan = 5;
  }
  $("#size-note").hidden = !kept;
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

// Heartbeat figures as words: the known ones named and in their units, any other as "key value".
const FIGURES = {
  workers_alive: (v, info) => `workers ${count(v)}${known(info.workers_configured) ? ` of ${count(info.workers_configured)}` : ""}`,
  workers_configured: (v, info) => (known(info.workers_alive) ? null : `workers configured ${count(v)}`),
  requests_total: (v) => `requests ${count(v)}`,
  lag_seconds: (v) => `lag ${seconds(v)}`,
  spool_bytes: (v) => `spool ${bytes(v)}`,
  dropped_total: (v) => `dropped ${count(v)}`,
  ingested_total: (v) => `ingested ${count(v)}`,
  queue_depth: (v) => `queue ${count(v)}`,
  next_run: (v) => `next run ${v ? figureValue(v) : "none"}`,
  running: (v) => (v ? `running ${figureValue(v)}` : "idle"),
};

const TEXT_FIGURES = new Set(["next_run", "running"]);

function figureValue(value) {
  if (value === null || value === undefined) return DASH;
  if (typeof value === "number") return NUMBER.format(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "string") return TIME_TEXT.test(value) ? when(value) : value;
  return JSON.stringify(value);
}

// Known figures in the order declared above, then any other by name (jsonb keeps no order of its own).
function figures(info) {
  if (!info || typeof info !== "object") return [];
  const keys = Object.keys(FIGURES).filter((key) => key in info)
    .concat(Object.keys(info).filter((key) => !Object.prototype.hasOwnProperty.call(FIGURES, key)).sort());
  const found = [];
  for (const key of keys) {
    const value = info[key];
    const named = Object.prototype.hasOwnProperty.call(FIGURES, key);
    const fits = value === null || typeof value === "number" || (TEXT_FIGURES.has(key) && typeof value === "string");
    const text = named && fits ? FIGURES[key](value, info) : `${key} ${figureValue(value)}`;
    if (text) found.push(text);
  }
  return found;
}

function figuresCell(row, info) {
  const td = row.insertCell();
  td.className = "figures";
  figures(info).forEach((text, index) => {
    if (index) td.append(" · ");
    const span = document.createElement("span");
    span.className = "figure";
    span.textContent = text;
    td.appendChild(span);
  });
  return td;
}

async function loadInstances() {
  const rows = $("#instances tbody");
  const found = flattenInstances(await api("/api/instances"));
  rows.textContent = "";
  for (const p of found) {
    const row = rows.insertRow();
    row.dataset.program = p.program;
    cell(row, p.instance_id, "mono");
    cell(row, p.program, "nowrap");
    cell(row, p.pid, "num");
    timeCell(row, p.last_seen);
    badge(row.insertCell(), p.stale ? "stale" : "alive");
    figuresCell(row, p.info);
  }
  if (!found.length) cell(rows.insertRow(), "No instance has sent a heartbeat yet.").colSpan = 6;
  suggest("#log-programs", found.map((p) => p.program));
  suggest("#log-instances", found.map((p) => p.instance_id));
}

// --- configuration ---

async function loadConfig() {
  // The tasks' options (their names and current values) are the maintenance overview's.
  const [body, overview] = await Promise.all([api("/api/config"), api("/api/maintenance?last=1")]);
  state.config = body;
  const m = (state.config && state.config.maintenance) || {};
  $("#cfg-enabled").checked = !!m.enabled;
  $("#cfg-time").value = m.time || "";
  await fillZones(m.timezone || "UTC");
  const box = $("#cfg-tasks");
  for (const old of box.querySelectorAll(".task")) old.remove();
  for (const task of (overview && overview.tasks) || []) {
    const row = document.createElement("div");
    row.className = "task";
    row.dataset.task = task.name;
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = task.name;
    input.dataset.option = "enabled";
    input.checked = !!task.enabled;
    label.append(input, ` ${task.name}`);
    row.appendChild(label);
    for (const [option, value] of Object.entries(task.options || {})) {
      const optionLabel = document.createElement("label");
      const number = document.createElement("input");
      number.type = "number";
      number.step = "1";
      number.name = `${task.name}.${option}`;
      number.dataset.option = option;
      number.value = value;
      optionLabel.append(`${option.replace(/_/g, " ")} `, number);
      row.appendChild(optionLabel);
    }
    box.appendChild(row);
  }
  $("#config-doc").textContent = JSON.stringify(state.config, null, 2);
  schedulePreview(0);
}

let zoneNames = null;

// The picker offers only the names the configuration accepts (the server's list), the saved one selected.
async function fillZones(current) {
  if (!zoneNames) {
    zoneNames = await fetch("/static/timezones.json").then((r) => r.json()).catch(() => null);
  }
  const names = Array.isArray(zoneNames) && zoneNames.length ? zoneNames.slice() : [current];
  if (!names.includes(current)) names.unshift(current);
  const select = $("#cfg-timezone");
  if (select.options.length !== names.length) {
    select.textContent = "";
    for (const name of names) select.appendChild(new Option(name, name));
  }
  select.value = current;
}

// The form's task switches and options as {task: {option: value}}; a number field's text as typed
// when it is no whole number, so the server names what is wrong with it.
function formTasks() {
  const tasks = {};
  for (const input of $("#cfg-tasks").querySelectorAll("input[data-option]")) {
    const task = input.closest(".task").dataset.task;
    const text = input.value.trim();
    const value = input.type === "checkbox" ? input.checked : /^-?\d+$/.test(text) ? Number(text) : text;
    (tasks[task] = tasks[task] || {})[input.dataset.option] = value;
  }
  return tasks;
}

function formDiffers(tasks) {
  const saved = (state.config && state.config.maintenance && state.config.maintenance.tasks) || {};
  return Object.entries(tasks).some(([task, options]) =>
    Object.entries(options).some(([option, value]) => (saved[task] || {})[option] !== value));
}

let previewTimer = null;
let previewSerial = 0;

function schedulePreview(delay) {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(refreshPreview, delay);
}

// What a run would remove under the form's values, before they are saved; with "now" (the saved
// configuration's count) beside it while the form differs. Only the latest answer is shown.
async function refreshPreview() {
  const serial = ++previewSerial;
  const tasks = formTasks();
  const params = new URLSearchParams();
  for (const [task, options] of Object.entries(tasks)) {
    for (const [option, value] of Object.entries(options)) params.set(`${task}.${option}`, String(value));
  }
  const differs = formDiffers(tasks);
  const line = $("#cfg-preview-line");
  const problem = $("#cfg-preview-error");
  line.dataset.state = "loading";
  try {
    const [candidate, now] = await Promise.all([
      api(`/api/maintenance/preview?${params}`),
      differs ? api("/api/maintenance/preview") : null,
    ]);
    if (serial !== previewSerial) return;
    line.textContent = `With these settings a run would remove ${count(candidate.rows_total)} rows ` +
      `(about ${bytes(candidate.bytes_estimate_total)})${now ? `; now: ${count(now.rows_total)} rows` : ""}`;
    line.dataset.state = "ok";
    problem.textContent = "";
  } catch (err) {
    if (serial !== previewSerial) return;
    // A value the server refuses: named beside the line, which keeps the last figures it could count.
    line.dataset.state = "stale";
    problem.textContent = err.status === 400 ? err.message : `Preview failed: ${err.message}`;
  }
}

async function saveConfig(event) {
  event.preventDefault();
  const result = $("#config-result");
  const patch = {
    maintenance: {
      enabled: $("#cfg-enabled").checked,
      time: $("#cfg-time").value.trim(),
      timezone: $("#cfg-timezone").value,
      tasks: formTasks(),
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
    timeCell(row, e.created_at);
    cell(row, e.topic, "mono");
    badge(row.insertCell(), e.status);
    cell(row, e.description, "text");
    cell(row, e.sender);
  }
  if (!rows.rows.length) cell(rows.insertRow(), "No event matches.").colSpan = 5;
  state.eventsCursor = body.next_cursor || null;
  $("#events-more").hidden = !state.eventsCursor;
}

const LOGS_PAGE = 100;

function logQuery() {
  const form = $("#logs-filter");
  const params = new URLSearchParams({ limit: String(LOGS_PAGE) });
  for (const name of ["program", "instance", "level", "text"]) {
    const value = form[name].value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

// "instance/program" on one line; an extreme instance id is cut short (whole on hover), never the program.
function sourceCell(row, instance, program) {
  const td = row.insertCell();
  td.className = "mono source";
  td.title = `instance ${instance}, program ${program}`;
  const id = document.createElement("span");
  id.className = "instance";
  id.textContent = instance;
  const name = document.createElement("span");
  name.className = "program";
  name.textContent = program;
  td.append(id, "/", name);
  return td;
}

// One page of records, newest first; `more` appends the next older page (the API's cursor).
async function loadLogs(more) {
  const params = logQuery();
  if (more && state.logsCursor) params.set("cursor", state.logsCursor);
  const body = await api(`/api/logs?${params}`);
  const rows = $("#logs tbody");
  if (!more) {
    rows.textContent = "";
    state.logsShown = 0;
  }
  for (const r of body.logs) {
    const row = rows.insertRow();
    row.dataset.level = r.level;
    timeCell(row, r.ts);
    cell(row, r.level, `level level-${String(r.level).toLowerCase()}`);
    sourceCell(row, r.instance, r.program);
    cell(row, r.exc ? `${r.message}\n${r.exc.split("\n").pop()}` : r.message, "text");
  }
  state.logsShown += body.logs.length;
  if (!rows.rows.length) cell(rows.insertRow(), "No log record matches.").colSpan = 4;
  state.logsCursor = body.next_cursor || null;
  $("#logs-more").hidden = !state.logsCursor;
  $("#logs-count").textContent = state.logsShown
    ? `${count(state.logsShown)} records, newest first${state.logsCursor ? "; older ones on request" : "; no older one"}`
    : "";
}

// The filters' suggestions: the programs and instances that sent a heartbeat.
function suggest(list, values) {
  const box = $(list);
  box.textContent = "";
  for (const value of [...new Set(values)].sort()) {
    const option = document.createElement("option");
    option.value = value;
    box.appendChild(option);
  }
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

let historyRefresh = null;

function onMaintenanceChange(change) {
  const current = state.run;
  // A run the chart does not show yet, or the end of one: the chart is read again (bursts coalesced).
  if (ENDED.includes(change.status) || !state.history.some((run) => run.id === change.id)) {
    clearTimeout(historyRefresh);
    historyRefresh = setTimeout(() => loadMaintenance().catch(reportError), 300);
  }
  if (current && current.id === change.id && !ENDED.includes(change.status)) {
    // The notification has no created_at or summary: keep those of the known run until the whole event is read.
    newerRun(Object.assign({}, current, change));
  }
  // The whole event: a new run, a step of one (its tasks ended so far), its end (its summary).
  api(`/api/events/${change.id}`).then(newerRun, reportError);
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
  // Any change of a task's switch or option counts again what a run would remove (typing coalesced).
  $("#cfg-tasks").addEventListener("input", () => schedulePreview(300));
  $("#events-filter").addEventListener("submit", guarded(async (e) => { e.preventDefault(); await loadEvents(false); }));
  $("#events-more").addEventListener("click", guarded(() => loadEvents(true)));
  $("#logs-filter").addEventListener("submit", guarded(async (e) => { e.preventDefault(); await loadLogs(false); }));
  $("#logs-more").addEventListener("click", guarded(() => loadLogs(true)));
  $("#history-chart").addEventListener("click", onHistoryClick);
  $("#history-chart").addEventListener("keydown", onHistoryKey);
  // The chart is drawn to its box's width: drawn again when that changes.
  new ResizeObserver(() => {
    const width = $("#history-chart").clientWidth;
    if (width && width !== state.drawnWidth && state.history.length) drawHistory();
  }).observe($("#history-chart"));
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
