// The dashboard: asks for a token once (kept in localStorage), asks the API what it may do (GET /me) and shows only
// the controls it can use, then loads the task grid, the workflows, the runs, the metrics, the queue pressure and
// the three-hour forecast beside the last three hours' forecast and use, which it polls every 15 s (a workflow run's
// graph follows its run every second, see workflows.js).

import { NOBODY, showIdentity, whoAmI } from "./access.js";
import { onUnauthorized, setToken, token, api } from "./api.js";
import { drawChart } from "./chart.js";
import { $, clockTime, h, ms, toast } from "./dom.js";
import { percentText, refreshPressure, signedMs } from "./pressure.js";
import { RecentRuns } from "./runs.js";
import { TaskForm } from "./taskform.js";
import { TaskGrid } from "./tasks.js";
import { Workflows } from "./workflows.js";

// `?poll=SECONDS` overrides the period (at least 1 s): the browser test watches a refresh without waiting 15 s.
const POLL_MS = Math.max(1, Number(new URLSearchParams(window.location.search).get("poll")) || 15) * 1000;
// Polls between two reads of the year-long averages: they move slowly, and reading them scans a year of results
// (the API's forecast re-reads them every 300 s too).
const METRICS_EVERY = Math.ceil(300_000 / POLL_MS);

// Running a task now, retrying or cancelling a run changes the runs, the grid's next and last runs, and the pressure.
const runs = new RecentRuns({ onChanged: () => Promise.allSettled([grid.refresh(), refreshPressure()]) });
const form = new TaskForm({
  onSaved: (task, { created }) => {
    // A new task has the highest id: newest first shows it on top, whatever page the grid was on.
    if (created) grid.showNewest(task.id);
    else grid.load(task.id);
    runs.refresh();
    refreshCapacity();
  },
});
const grid = new TaskGrid({
  onEdit: (id) => form.openEdit(id),
  onShowRuns: (task) => runs.forTask(task),
  onRan: () => Promise.allSettled([runs.refresh(), grid.refresh(), refreshPressure()]),
});
const workflows = new Workflows({ onOpenStepRun: (runId, step) => runs.open(runId, step) });

/** Shows what the token may do: its subject and scopes beside the token control, and only the controls it can use. */
function showAccess(access) {
  showIdentity($("#whoami"), access);
  $("#new-task").hidden = !access.may_write;
  grid.setAccess(access);
  runs.setAccess(access);
  workflows.setAccess(access);
  form.setAccess(access);
}

function askToken(reason) {
  const dialog = $("#token-dialog");
  $("#token-reason").textContent = reason || "";
  $("#token-reason").hidden = !reason;
  $("#api-state").textContent = "No valid token";
  if (!dialog.open) {
    $("#token-input").value = "";
    dialog.showModal();
  }
  $("#token-input").focus();
}

onUnauthorized((reason) => {
  $("#whoami").hidden = true; // whoever that was, the API no longer takes the token
  askToken(reason);
});

$("#token-form").addEventListener("submit", (event) => {
  const value = $("#token-input").value.trim();
  if (!value) {
    event.preventDefault();
    askToken("The token is empty.");
    return;
  }
  setToken(value);
  start();
});
$("#change-token").addEventListener("click", () => askToken(""));
$("#new-task").addEventListener("click", () => form.openNew());

async function refreshCapacity() {
  const error = $("#capacity-error");
  let summary;
  try {
    summary = await api("GET", "/scheduled-tasks-summary", { query: { hours: 3, bucket: 60 } });
  } catch (err) {
    error.textContent = `The forecast could not be loaded: ${err.message}`;
    error.hidden = false;
    return;
  }
  error.hidden = true;
  const times = summary.buckets.map((b) => new Date(b.start));
  const compute = summary.buckets.map((b) => b.required_ms);
  const instances = summary.buckets.map((b) => b.required_instances);
  // Left of now: what the capacity role forecast for each bucket before it began, beside the compute it used.
  const past = summary.past;
  const pastTimes = past.buckets.map((b) => new Date(b.start));
  const chart = $("#capacity-chart");
  drawChart(chart, {
    times,
    series: [
      { key: "forecast", label: "Forecast made before (ms)", values: past.buckets.map((b) => b.forecast_ms), axis: "left", times: pastTimes },
      { key: "used", label: "Compute used (ms)", values: past.buckets.map((b) => b.used_ms), axis: "left", times: pastTimes },
      { key: "compute", label: "Required compute (ms)", values: compute, axis: "left" },
      { key: "instances", label: "Required instances", values: instances, axis: "right", integer: true },
    ],
    axes: { left: `Compute (ms per ${summary.bucket_seconds} s)`, right: "Instances" },
    formatTime: (d) => d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }),
    now: new Date(summary.generated_at),
    notes: pastTimes.length ? [{ key: "past-error", at: pastTimes[0], text: pastError(past) }] : [],
  });
  showPast(past);
  chart.classList.toggle("empty", summary.total_runs === 0);
  chart.dataset.generatedAt = summary.generated_at; // which forecast is drawn (the browser test reads it)
  const peakMs = Math.max(0, ...compute);
  $("#capacity-chart-desc").textContent = summary.total_runs
    ? `${summary.total_runs} runs; compute peaks at ${ms(peakMs)} per bucket; at most ${summary.peak_instances} instances.`
    : "No runs are scheduled in the next 3 hours.";
  $("#capacity-summary").textContent = summary.total_runs
    ? `${summary.total_runs} runs scheduled · peak ${summary.peak_instances} instance${summary.peak_instances === 1 ? "" : "s"} · updated ${clockTime(new Date())}`
    : `Nothing scheduled in the next 3 hours · updated ${clockTime(new Date())}`;
  const busy = summary.buckets.filter((b) => b.runs || b.projected_runs);
  $("#capacity-table").replaceChildren(busy.length
    ? h("table", { class: "grid compact" },
      h("thead", {}, h("tr", {}, ["From", "Runs", "Projected", "Compute", "Instances"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, busy.map((b) => h("tr", {},
        h("td", {}, clockTime(new Date(b.start))), h("td", { class: "num" }, b.runs), h("td", { class: "num" }, b.projected_runs),
        h("td", { class: "num" }, ms(b.required_ms)), h("td", { class: "num" }, b.required_instances)))))
    : h("p", { class: "muted" }, "No runs in the next 3 hours."));
}

/** The forecast's error over the past hours, in a few words (beside the past part of the graph). */
function pastError(past) {
  if (!past.forecast_buckets) return "No forecast was recorded for these hours";
  return `Forecast error ${signedMs(past.error_ms)} (${percentText(past.error_percent)})`;
}

/** The past hours in numbers: the forecast beside the compute used, the error, and a table of the buckets. */
function showPast(past) {
  const known = past.forecast_buckets;
  const over = known && known < past.buckets.length ? ` over the ${known} buckets with a forecast` : "";
  $("#capacity-past").textContent = known
    ? `Last 3 hours${over}: forecast ${ms(past.forecast_ms)}, used ${ms(past.forecast_ms - past.error_ms)} · error `
      + `${signedMs(past.error_ms)} (${percentText(past.error_percent)}) · mean absolute error `
      + `${ms(past.mean_absolute_error_ms)} per bucket`
    : `Last 3 hours: ${ms(past.used_ms)} of compute used; no forecast was recorded for them (the capacity role records one).`;
  const busy = past.buckets.filter((b) => b.forecast_ms || b.used_ms);
  $("#capacity-past-table").replaceChildren(busy.length
    ? h("table", { class: "grid compact", id: "capacity-past-grid" },
      h("caption", {}, "Last 3 hours: forecast beside use"),
      h("thead", {}, h("tr", {}, ["From", "Forecast", "Used", "Attempts", "Error", "Error %"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, busy.map((b) => h("tr", {},
        h("td", {}, clockTime(new Date(b.start))), h("td", { class: "num" }, ms(b.forecast_ms)),
        h("td", { class: "num" }, ms(b.used_ms)), h("td", { class: "num" }, b.attempts),
        h("td", { class: "num" }, b.error_ms === null ? "—" : signedMs(b.error_ms)),
        h("td", { class: "num" }, percentText(b.error_percent))))))
    : h("p", { class: "muted" }, "Nothing was forecast or used in the last 3 hours."));
}

async function refreshMetrics() {
  const box = $("#metrics");
  let summary;
  try {
    summary = await api("GET", "/task-summary");
  } catch (err) {
    box.replaceChildren(h("p", { class: "error" }, `Metrics could not be loaded: ${err.message}`));
    return;
  }
  $("#metrics-since").textContent = `Finished runs since ${new Date(summary.since).toLocaleDateString()}`;
  if (!summary.types.length) {
    box.replaceChildren(h("p", { class: "muted" }, "No run has finished yet: averages show once some have."));
    return;
  }
  box.replaceChildren(h("table", { class: "grid", id: "metrics-table" },
    h("thead", {}, h("tr", {},
      ["Type", "Mean", "p50", "p95", "Runs", "Failures"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, summary.types.map((t) => h("tr", {},
      h("th", { scope: "row" }, t.type),
      h("td", { class: "num" }, ms(t.mean_ms)), h("td", { class: "num" }, ms(t.p50_ms)), h("td", { class: "num" }, ms(t.p95_ms)),
      h("td", { class: "num" }, t.runs.toLocaleString()),
      h("td", { class: `num${t.failures ? " bad" : ""}` }, t.failures.toLocaleString()))))));
}

let polls = 0;
let timer = null;
let retry = null;

/** Types whose due runs no live processor serves (GET /health): named at the top until a processor takes them. */
async function refreshHealth() {
  let health;
  try {
    health = await api("GET", "/health");
  } catch (err) {
    health = err.problem; // a 503 still says what it knows
  }
  const waiting = health?.unserved_types || [];
  $("#unserved-list").replaceChildren(...waiting.map((t) => h("li", {},
    `${t.type}: ${t.due_runs.toLocaleString()} due run${t.due_runs === 1 ? "" : "s"} (${t.reason})`)));
  $("#unserved").hidden = !waiting.length;
}

async function poll() {
  if (document.hidden) return;
  polls += 1;
  await Promise.allSettled([refreshCapacity(), runs.refresh(), grid.refresh(), workflows.refresh(), refreshHealth(),
    refreshPressure(), polls % METRICS_EVERY === 0 ? refreshMetrics() : null]);
}

async function start() {
  if (!token()) {
    askToken("");
    return;
  }
  showAccess(NOBODY); // a new token may do less than the last one: nothing is offered until the API says
  try {
    const access = await whoAmI();
    if (!access.may_read) {
      showIdentity($("#whoami"), access);
      askToken(`The token of ${access.subject} lacks the scope 'tasks:read', which the dashboard needs.`);
      return;
    }
    const types = await api("GET", "/task-types");
    showAccess(access);
    grid.setTypes(types);
    form.setTypes(types);
    $("#api-state").textContent = "Connected";
  } catch (err) {
    if (err.status !== 401) {
      // Not reachable yet (the API restarting, a network blip): try again rather than stay "Not connected".
      toast(`The API answered: ${err.message}`, "error");
      clearTimeout(retry);
      retry = setTimeout(start, POLL_MS);
    }
    return;
  }
  await Promise.allSettled([grid.load(), workflows.load(), runs.load(), refreshCapacity(), refreshMetrics(),
    refreshHealth(), refreshPressure()]);
  clearInterval(timer);
  timer = setInterval(poll, POLL_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
start();
