// Recent runs across all tasks (GET /runs), and one run's logs on click: its attempts with result, output and
// error, and its status changes (GET /runs/{id}). A token that may write gets Retry on a failed or dead run (its next
// attempt) and Cancel on one that has not ended.

import { NOBODY } from "./access.js";
import { api } from "./api.js";
import { $, badge, h, latestOnly, ms, toast, tookMs, when } from "./dom.js";

const RETRIABLE = new Set(["failed", "dead"]);
// Those the cancel button is offered for: every state a run has not ended in. A running one is stopped by its
// processor; what a run spawned and has not ended goes with it.
const CANCELLABLE = new Set(["scheduled", "queued", "blocked", "running", "retrying", "waiting"]);

function block(title, text) {
  return h("div", { class: "log" }, h("h4", {}, title), h("pre", { tabindex: "0" }, text));
}

function attemptView(attempt) {
  const result = attempt.result;
  const blocks = [];
  if (attempt.error) blocks.push(block("Error", attempt.error));
  if (result && typeof result === "object" && !Array.isArray(result)) {
    if (typeof result.stdout === "string") blocks.push(block("stdout", result.stdout || "(empty)"));
    if (typeof result.stderr === "string") blocks.push(block("stderr", result.stderr || "(empty)"));
  }
  if (result !== null && result !== undefined) blocks.push(block("Result", JSON.stringify(result, null, 2)));
  return h("section", { class: "attempt" },
    h("h3", {}, `Attempt ${attempt.attempt} `, badge(attempt.status)),
    h("dl", { class: "facts" },
      h("dt", {}, "Started"), h("dd", {}, when(attempt.started_at)),
      h("dt", {}, "Finished"), h("dd", {}, when(attempt.finished_at)),
      h("dt", {}, "Took"), h("dd", {}, ms(attempt.duration_ms)),
      h("dt", {}, "Worker"), h("dd", {}, attempt.worker || "—")),
    blocks.length ? blocks : h("p", { class: "muted" }, "No output."));
}

export class RecentRuns {
  constructor({ onChanged = () => {} } = {}) {
    this.onChanged = onChanged; // a run retried or cancelled here
    this.access = NOBODY;
    this.items = [];
    this.body = $("#run-grid tbody");
    this.status = $("#runs-status");
    this.task = null; // {id, name} when showing one task's runs
    this.before = null;
    this.next = null;
    this.request = latestOnly(); // a poll's reply must not overwrite a newer filter's
    this.shown = null; // what the table shows: left alone (and focus with it) while a poll brings nothing new
    $("#filter-status").addEventListener("change", () => this.first());
    $("#runs-older").addEventListener("click", () => { this.before = this.next; this.load(); });
    $("#runs-newest").addEventListener("click", () => this.first());
    $("#run-task-filter button").addEventListener("click", () => this.forTask(null));
  }

  setAccess(access) {
    this.access = access;
    this.draw(this.items);
  }

  forTask(task) {
    this.task = task ? { id: task.id, name: task.name } : null;
    const chip = $("#run-task-filter");
    chip.hidden = !task;
    chip.querySelector("span").textContent = task ? `Task: ${task.name}` : "";
    this.first();
    if (task) $("#runs-title").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  first() {
    this.before = null;
    this.load();
  }

  /** Polled: only the first page follows new runs; an older page stays put while the user reads it. */
  refresh() {
    return this.before ? null : this.load();
  }

  async load() {
    const current = this.request();
    let page;
    try {
      page = await api("GET", "/runs", {
        query: { limit: 25, status: $("#filter-status").value, task_id: this.task?.id, before: this.before },
      });
    } catch (error) {
      if (!current()) return;
      this.status.textContent = `Runs could not be loaded: ${error.message}`;
      this.status.classList.add("error");
      return;
    }
    if (!current()) return;
    this.status.classList.remove("error");
    this.next = page.next_cursor;
    const shown = JSON.stringify(page.items);
    if (shown !== this.shown) this.draw(page.items);
    this.status.textContent = page.items.length ? ""
      : this.before ? "No older runs." : "No runs yet: runs show here once they are due.";
    $("#runs-older").disabled = !this.next;
    $("#runs-newest").disabled = !this.before;
  }

  draw(items) {
    this.items = items;
    this.shown = JSON.stringify(items);
    this.body.replaceChildren(...items.map((run) => h("tr", { "data-run-id": run.id },
      h("td", {}, h("button", { type: "button", class: "link", "aria-label": `Logs of run ${run.id}`,
        on: { click: () => this.open(run.id, run.task_name) } }, `#${run.id}`)),
      h("td", { class: "name" }, run.task_name),
      h("td", {}, when(run.scheduled_time)),
      h("td", { class: "status" }, badge(run.status)),
      h("td", { class: "num attempt" }, run.attempt),
      h("td", { class: "num" }, ms(tookMs(run.started_at, run.finished_at))),
      h("td", {}, run.worker || "—"),
      h("td", { class: "actions" }, this.actions(run)))));
  }

  actions(run) {
    if (!this.access.may_write) return null;
    if (RETRIABLE.has(run.status)) {
      return h("button", { type: "button", class: "secondary small", "aria-label": `Retry run ${run.id}`,
        title: `Run it again as attempt ${run.attempt + 1}, its earlier attempts kept`,
        on: { click: (e) => this.act(run, "retry", e.currentTarget) } }, "Retry");
    }
    if (CANCELLABLE.has(run.status)) {
      return h("button", { type: "button", class: "secondary small", "aria-label": `Cancel run ${run.id}`,
        on: { click: (e) => this.act(run, "cancel", e.currentTarget) } }, "Cancel");
    }
    return null;
  }

  /** Retries or cancels a run; the API's reason when it refuses (a run that moved on meanwhile, a workflow's step). */
  async act(run, action, button) {
    button.disabled = true;
    let done;
    try {
      done = await api("POST", `/runs/${run.id}/${action}`);
    } catch (error) {
      button.disabled = false;
      toast(`Run #${run.id} was not ${action === "retry" ? "retried" : "cancelled"}: ${error.message}`, "error");
      return;
    }
    toast(action === "retry"
      ? `Run #${done.id} of ${run.task_name} goes again as attempt ${done.attempt + 1}.`
      : `Run #${done.id} of ${run.task_name} is cancelled.`);
    await Promise.allSettled([this.load(), this.onChanged(done)]);
  }

  async open(runId, taskName) {
    let run;
    try {
      run = await api("GET", `/runs/${runId}`);
    } catch (error) {
      toast(`Run ${runId} could not be loaded: ${error.message}`, "error");
      return;
    }
    $("#run-title").replaceChildren(`Run #${run.id} `, badge(run.status));
    $("#run-body").replaceChildren(h("div", {},
      h("dl", { class: "facts" },
        h("dt", {}, "Task"), h("dd", {}, taskName ? `${taskName} (#${run.task_id})` : `#${run.task_id}`),
        h("dt", {}, "Scheduled"), h("dd", {}, when(run.scheduled_time)),
        h("dt", {}, "Attempts"), h("dd", {}, run.attempt),
        h("dt", {}, "Created by"), h("dd", {}, run.created_by || "—")),
      run.error ? block("Error", run.error) : null,
      h("h3", {}, "Attempts"),
      h("div", { class: "attempts" },
        run.attempts.length ? run.attempts.map(attemptView) : h("p", { class: "muted" }, "No attempt has finished yet.")),
      h("h3", {}, "Status changes"),
      h("table", { class: "grid compact" },
        h("thead", {}, h("tr", {}, ["When", "From", "To", "Attempt", "Worker"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, run.transitions.map((t) => h("tr", {},
          h("td", {}, when(t.at)), h("td", {}, t.from_status ? badge(t.from_status) : "—"), h("td", {}, badge(t.to_status)),
          h("td", { class: "num" }, t.attempt), h("td", {}, t.worker || "—")))))));
    $("#run-dialog").showModal();
  }
}
