// Workflows: each with its schedule, its number of steps and how its latest run went; its recent runs on "Show
// runs"; one run drawn as a graph of its steps (workflowgraph.js), followed live while it runs. "Run now" and
// "Cancel run" only when the token may write.

import { NOBODY } from "./access.js";
import { api } from "./api.js";
import { $, badge, h, latestOnly, ms, toast, tookMs, when } from "./dom.js";
import { scheduleText } from "./tasks.js";
import { drawGraph } from "./workflowgraph.js";

// A step takes seconds, not minutes: at the page's 15 s most of a run would only show once it had ended.
const RUN_POLL_MS = 1000;
// Step statuses that still change on their own once the workflow run has ended: a cancel leaves running steps to
// finish, and a step waiting for the children it spawned ends with them.
const STILL_MOVING = new Set(["running", "waiting"]);

const path = (name) => `/workflows/${encodeURIComponent(name)}`;
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function moving(run) {
  return run.status === "running" || run.runs.some((step) => STILL_MOVING.has(step.status));
}

/** "4 steps: 2 succeeded, 1 running, 1 blocked", statuses in the order the steps first have them. */
function tally(steps) {
  const counts = new Map();
  for (const step of steps) counts.set(step.status, (counts.get(step.status) || 0) + 1);
  const parts = [...counts].map(([status, n]) => `${n} ${status}`);
  return `${plural(steps.length, "step")}${parts.length ? `: ${parts.join(", ")}` : ""}`;
}

/** Marks the row whose `key` data attribute is `value` as the one shown below the table. */
function markCurrent(body, key, value) {
  for (const tr of body.rows) {
    const current = value !== null && tr.dataset[key] === String(value);
    tr.classList.toggle("current", current);
    if (current) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
  }
}

/** Replaces the rows of `body`; a button that had the focus in a row hands it to its counterpart in the new rows
 *  (a poll redrawing the table must not drop a keyboard user at the top of the page). */
function redraw(body, rows, key) {
  const focused = document.activeElement;
  const row = body.contains(focused) ? focused.closest("tr") : null;
  body.replaceChildren(...rows);
  if (!row || !focused.dataset.action) return;
  const again = body.querySelector(
    `tr[data-${key}="${CSS.escape(row.dataset[key])}"] [data-action="${CSS.escape(focused.dataset.action)}"]`);
  again?.focus();
}

export class Workflows {
  constructor({ onOpenStepRun }) {
    this.onOpenStepRun = onOpenStepRun; // a step run's logs, in the run dialog (runs.js)
    this.access = NOBODY; // no Run now or Cancel run until GET /me says so
    this.cursors = [null];
    this.next = null;
    this.items = []; // [{workflow, latest}] of the page shown; latest undefined when it could not be read
    this.shown = null; // what the list shows: left alone (and focus with it) while a poll brings nothing new
    this.selected = null; // the name of the workflow whose runs are shown
    this.runsShown = null;
    this.runId = null; // the workflow run drawn, and what the API last said of it
    this.run = null;
    this.runShown = null;
    this.timer = null;
    this.request = latestOnly();
    this.runsRequest = latestOnly();
    this.runRequest = latestOnly(); // a reply about a run no longer shown is dropped
    this.body = $("#workflow-grid tbody");
    this.status = $("#workflows-status");
    this.runsBody = $("#workflow-run-grid tbody");
    $("#workflows-next").addEventListener("click", () => { this.cursors.push(this.next); this.load(); });
    $("#workflows-prev").addEventListener("click", () => { this.cursors.pop(); this.load(); });
    $("#workflow-hide").addEventListener("click", () => {
      // The button goes with what it hides: the focus goes back to where the runs were asked for.
      const name = this.selected;
      this.select(null);
      this.body.querySelector(`tr[data-workflow="${CSS.escape(name)}"] [data-action="runs"]`)?.focus();
    });
    $("#workflow-cancel").addEventListener("click", () => this.cancel());
    // A hidden page skips its polls; the run may have moved on meanwhile.
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.run && moving(this.run)) this.follow(this.runId);
    });
  }

  setAccess(access) {
    this.access = access;
    this.draw();
    this.showCancel();
    this.loadRuns(); // its hint names Run now only to a token that may use it
  }

  /** Polled with the rest of the page: the list's latest runs and the runs of the workflow shown. */
  refresh() {
    return Promise.allSettled([this.load(), this.loadRuns()]);
  }

  async load() {
    const current = this.request();
    let page;
    let latest;
    try {
      page = await api("GET", "/workflows", { query: { limit: 20, cursor: this.cursors[this.cursors.length - 1] } });
      // A workflow whose runs cannot be read still shows, its latest run unknown.
      latest = await Promise.all(page.items.map((wf) => api("GET", `${path(wf.name)}/runs`, { query: { limit: 1 } })
        .then((runs) => runs[0] || null, () => undefined)));
    } catch (error) {
      if (!current()) return;
      this.status.textContent = `Workflows could not be loaded: ${error.message}`;
      this.status.classList.add("error");
      return;
    }
    if (!current()) return;
    this.status.classList.remove("error");
    this.next = page.next_cursor;
    this.items = page.items.map((workflow, i) => ({ workflow, latest: latest[i] }));
    const shown = JSON.stringify(this.items);
    if (shown !== this.shown) this.draw();
    this.shown = shown;
    this.status.textContent = page.items.length
      ? `${plural(page.items.length, "workflow")} on this page`
      : "No workflows yet: define one with taskmill apply -f FILE, or POST /workflows.";
    $("#workflows-page").textContent = `Page ${this.cursors.length}`;
    $("#workflows-prev").disabled = this.cursors.length < 2;
    $("#workflows-next").disabled = !this.next;
  }

  draw() {
    redraw(this.body, this.items.map((item) => this.row(item)), "workflow");
    markCurrent(this.body, "workflow", this.selected);
  }

  row({ workflow: wf, latest }) {
    const schedule = wf.schedule ? scheduleText(wf.schedule) : "when invoked";
    return h("tr", { "data-workflow": wf.name },
      h("th", { scope: "row", class: "name" }, wf.name),
      h("td", { class: "schedule" }, schedule, wf.schedule && !wf.active ? " (inactive)" : null),
      h("td", { class: "num" }, wf.tasks.length),
      h("td", { class: "latest" }, latest === undefined ? "—"
        : latest ? [badge(latest.status), " ", h("span", { class: "muted" }, when(latest.created_at))]
          : h("span", { class: "muted" }, "No runs yet")),
      h("td", { class: "actions" },
        this.access.may_write ? h("button", {
          type: "button", class: "small", "data-action": "invoke", "aria-label": `Run now: ${wf.name}`,
          on: { click: (event) => this.invoke(wf, event.currentTarget) },
        }, "Run now") : null,
        h("button", {
          type: "button", class: "secondary small", "data-action": "runs", "aria-label": `Show runs of ${wf.name}`,
          on: { click: () => this.select(wf.name, { focus: true }) },
        }, "Show runs")));
  }

  /** Shows the runs of workflow `name` below the list (null hides them); nothing runs is followed any more. */
  select(name, { focus = false } = {}) {
    this.stopFollowing();
    this.selected = name;
    this.runId = null;
    this.run = null;
    this.runsShown = null;
    markCurrent(this.body, "workflow", name);
    $("#workflow-run").hidden = true;
    $("#workflow-detail").hidden = !name;
    this.runsBody.replaceChildren();
    if (!name) return;
    $("#workflow-runs-title").textContent = `Runs of ${name}`;
    $("#workflow-runs-status").textContent = "Loading runs…";
    if (focus) $("#workflow-runs-title").focus();
    this.loadRuns();
  }

  async loadRuns() {
    const name = this.selected;
    if (!name) return;
    const current = this.runsRequest();
    let runs;
    try {
      runs = await api("GET", `${path(name)}/runs`, { query: { limit: 10 } });
    } catch (error) {
      if (!current()) return;
      $("#workflow-runs-status").textContent = `Runs of ${name} could not be loaded: ${error.message}`;
      return;
    }
    if (!current() || name !== this.selected) return;
    const shown = JSON.stringify(runs);
    if (shown !== this.runsShown) redraw(this.runsBody, runs.map((run) => h("tr", { "data-run": run.id },
      h("td", {}, h("button", {
        type: "button", class: "link", "data-action": "graph", "aria-label": `Graph of workflow run ${run.id}`,
        on: { click: () => this.openRun(run.id, { focus: true }) },
      }, `#${run.id}`)),
      h("td", {}, when(run.scheduled_time)),
      h("td", {}, badge(run.status)),
      h("td", {}, when(run.finished_at)),
      h("td", { class: "num" }, run.open),
      h("td", { class: `num${run.failed ? " bad" : ""}` }, run.failed))), "run");
    this.runsShown = shown;
    markCurrent(this.runsBody, "run", this.runId);
    $("#workflow-runs-status").textContent = runs.length ? ""
      : this.access.may_write ? "No runs yet: start one with Run now." : "No runs yet.";
  }

  async invoke(wf, button) {
    button.disabled = true;
    let started;
    try {
      started = await api("POST", `${path(wf.name)}/invoke`);
    } catch (error) {
      toast(`Could not run ${wf.name}: ${error.message}`, "error");
      return;
    } finally {
      button.disabled = false;
    }
    toast(`Run #${started.id} of ${wf.name} started.`);
    // The focus stays on Run now (a second run is one key away); the graph shows below and says how it goes.
    this.select(wf.name);
    this.openRun(started.id);
    this.load();
  }

  /** Draws workflow run `id` below the runs, and follows it while it moves. */
  openRun(id, { focus = false } = {}) {
    this.stopFollowing();
    this.runId = id;
    this.run = null;
    this.runShown = null;
    markCurrent(this.runsBody, "run", id);
    drawGraph($("#workflow-graph"), []); // not the last run's steps under this run's title
    $("#workflow-run-title").textContent = `Run #${id}`;
    $("#workflow-run-summary").textContent = "Loading…";
    $("#workflow-graph-desc").textContent = "Loading.";
    $("#workflow-steps").replaceChildren();
    $("#workflow-run-error").hidden = true;
    $("#workflow-cancel").hidden = true;
    $("#workflow-run").hidden = false;
    if (focus) $("#workflow-run-title").focus();
    else $("#workflow-run").scrollIntoView({ behavior: "smooth", block: "nearest" });
    this.follow(id);
  }

  stopFollowing() {
    clearTimeout(this.timer);
    this.timer = null;
    this.runRequest(); // a reply on its way is for a run no longer followed
  }

  async follow(id) {
    clearTimeout(this.timer);
    const current = this.runRequest();
    let run;
    try {
      run = await api("GET", `/workflow-runs/${id}`);
    } catch (error) {
      if (!current()) return;
      const box = $("#workflow-run-error");
      box.textContent = `Run #${id} could not be loaded: ${error.message}`;
      box.hidden = false;
      // A blip (the API restarting) is tried again; a run that is gone or a token refused is not.
      if (error.status === 0 || error.status >= 500) this.timer = setTimeout(() => this.follow(id), RUN_POLL_MS * 5);
      return;
    }
    if (!current() || id !== this.runId) return;
    $("#workflow-run-error").hidden = true;
    const was = this.run;
    this.drawRun(run);
    if (moving(run)) {
      this.timer = setTimeout(() => (document.hidden ? null : this.follow(id)), RUN_POLL_MS);
    } else if (was && moving(was)) {
      this.refresh(); // its end shows in the runs table and as the workflow's latest run
    }
  }

  drawRun(run) {
    this.run = run;
    this.showCancel();
    const shown = JSON.stringify(run);
    if (shown === this.runShown) return;
    this.runShown = shown;
    $("#workflow-run-title").replaceChildren(`Run #${run.id} of ${run.workflow} `, badge(run.status));
    const level = drawGraph($("#workflow-graph"), run.runs);
    const summary = tally(run.runs);
    const columns = run.runs.length ? Math.max(...level.values()) + 1 : 0;
    $("#workflow-graph-title").textContent = `Steps of workflow run #${run.id} of ${run.workflow} by dependency level`;
    $("#workflow-graph-desc").textContent = `${summary}, in ${plural(columns, "level")}: each step stands one column `
      + "right of its last dependency, with an arrow from each dependency to it.";
    // Said again only when a step changes status, not every poll.
    const summaryEl = $("#workflow-run-summary");
    const text = `${summary}. Scheduled ${new Date(run.scheduled_time).toLocaleString()}`
      + `${run.created_by ? ` by ${run.created_by}` : ""}.`;
    if (summaryEl.textContent !== text) summaryEl.textContent = text;
    $("#workflow-steps").replaceChildren(h("table", { class: "grid compact", id: "workflow-step-table" },
      h("caption", { class: "visually-hidden" }, `Steps of workflow run #${run.id}`),
      h("thead", {}, h("tr", {},
        ["Step", "Level", "Depends on", "Status", "Attempt", "Took", "Run", "Error"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, run.runs.map((step) => h("tr", { "data-step": step.task },
        h("th", { scope: "row", class: "name" }, step.task),
        h("td", { class: "num" }, level.get(step.task)),
        h("td", {}, step.depends_on.length ? step.depends_on.join(", ") : "—"),
        h("td", {}, badge(step.status)),
        h("td", { class: "num" }, step.attempt),
        h("td", { class: "num" }, ms(tookMs(step.started_at, step.finished_at))),
        h("td", {}, h("button", {
          type: "button", class: "link", "aria-label": `Logs of step ${step.task} (run ${step.run_id})`,
          on: { click: () => this.onOpenStepRun(step.run_id, step.task) },
        }, `#${step.run_id}`)),
        h("td", { class: "name" }, step.error || "—"))))));
  }

  showCancel() {
    $("#workflow-cancel").hidden = !(this.access.may_write && this.run?.status === "running");
  }

  async cancel() {
    const run = this.run;
    if (!run) return;
    const button = $("#workflow-cancel");
    button.disabled = true;
    try {
      await api("POST", `/workflow-runs/${run.id}/cancel`);
      toast(`Run #${run.id} of ${run.workflow} is cancelled: steps already running finish, the rest will not run.`);
    } catch (error) {
      toast(`Could not cancel run #${run.id}: ${error.message}`, "error"); // a 409: it ended meanwhile
    } finally {
      button.disabled = false;
    }
    if (this.runId === run.id) await this.follow(run.id);
    this.refresh();
  }
}
